"""Text modality: a Hugging Face tokenizer's word pieces, token embeddings and learned positions."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.layers import trunc_normal_
from torch import nn

from ..config import AugmentConfig, ModalityConfig
from ..errors import ConfigError, DataError
from ..masking import Masking, random_masking
from ..parsing import require, require_positive
from .base import ModalityEncoder, Tokens, register_modality

BYTES = "bytes"  # the built-in tokenizer: one token per UTF-8 byte, needs no files
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARS_PER_TOKEN = 16  # characters tokenized per token kept, at first (a word piece is rarely longer)
MIN_CHARS = 256  # at least: a word cut inside stays over WordPiece's 100 characters, [UNK] as when whole


@dataclass
class TextConfig(ModalityConfig):
    tokenizer: str = BYTES  # "bytes", a Hugging Face hub id, or a local tokenizer directory
    vocab_size: int = 261  # at least the tokenizer's size (261 for "bytes")
    max_length: int = 128
    mask_ratio: float = 0.15  # BERT
    # BERT's embedding LayerNorm over token + position: without it a text token enters the shared backbone at
    # about 1/30 of an image patch's norm (std-0.02 embeddings) and the blocks' outputs drown which word it was.
    # False (no norm) only for models saved before it existed; the registered variants switch it on.
    embed_norm: bool = False

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        require_positive(self, prefix, "vocab_size", "max_length")
        require(bool(self.tokenizer), f"{prefix}.tokenizer", "a tokenizer name or path", self.tokenizer)
        if self.pretrained.startswith("hf:") and self.tokenizer == BYTES:  # the checkpoint's own tokenizer
            self.tokenizer = self.pretrained[3:]


def byte_tokenizer():
    """A byte-level tokenizer ([CLS] bytes [SEP]) built with `tokenizers`: offline, any language."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return wordpiece_tokenizer(tok)


def wordpiece_tokenizer(tok: Any) -> Any:
    """A `tokenizers.Tokenizer` -> a transformers `PreTrainedTokenizerFast` with BERT's special tokens."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str):
    """ "bytes", a hub id or a local directory -> a Hugging Face tokenizer (cached per name)."""
    if name == BYTES:
        return byte_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def read_text(path: Path) -> str:
    """A UTF-8 text file -> its text."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    if not text.strip():
        raise DataError(f"{path}: empty text")
    return text


def text_head(text: str, size: int) -> str:
    """The first `size` characters of `text`, cut back to its last space, newline or tab if it has one."""
    if size >= len(text):
        return text
    cut = max(text.rfind(c, 0, size) for c in " \n\t")
    return text[:cut] if cut > 0 else text[:size]


class TextTransform:
    """str -> {"input_ids": [L], "attention_mask": [L]} (truncated to max_length; collate pads)."""

    def __init__(self, cfg: TextConfig, train: bool = False):
        self.cfg = cfg
        size = len(self.tokenizer)
        if size > cfg.vocab_size:
            raise ConfigError(
                f"modalities.text.vocab_size: expected at least {size} (the size of tokenizer "
                f"{cfg.tokenizer!r}), got {cfg.vocab_size}"
            )

    @property
    def tokenizer(self):
        return load_tokenizer(self.cfg.tokenizer)

    def __getstate__(self) -> dict:  # DataLoader workers reload the tokenizer from its name
        return {"cfg": self.cfg}

    def __call__(self, text: str) -> dict[str, torch.Tensor]:
        """Tokenize the start of `text` only: CHARS_PER_TOKEN * max_length characters (MIN_CHARS at
        least) cut at a space (a 20 MB file is never tokenized whole), more while that fills fewer
        than max_length tokens, so the ids are those of the whole text."""
        size = max(self.cfg.max_length * CHARS_PER_TOKEN, MIN_CHARS)
        while True:
            head = text_head(text, size)
            enc = self.tokenizer(head, truncation=True, max_length=self.cfg.max_length, return_tensors="pt")
            if head is text or enc["input_ids"].shape[1] == self.cfg.max_length:
                return {"input_ids": enc["input_ids"][0], "attention_mask": enc["attention_mask"][0]}
            size *= 4


@register_modality("text")
class TextEncoder(ModalityEncoder):
    """{"input_ids": [B, L], "attention_mask": [B, L]} (or input_ids alone) -> [B, L, D] token features."""

    config_class = TextConfig
    suffixes = (".txt",)
    inline_column = "text"
    asset_dir = "tokenizer"  # the tokenizer, saved beside the weights unless built in

    def __init__(self, cfg: TextConfig, dim: int):
        super().__init__(cfg, dim)
        self.token_embed = nn.Embedding(cfg.vocab_size, self.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.max_length, self.width))
        self.embed_norm = nn.LayerNorm(self.width) if cfg.embed_norm else nn.Identity()
        trunc_normal_(self.token_embed.weight, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)

    @property
    def num_tokens(self) -> int:
        return self.cfg.max_length

    @staticmethod
    def _unpack(x: Any) -> tuple[Any, Any]:
        if isinstance(x, Mapping):
            return x.get("input_ids"), x.get("attention_mask")
        return x, None

    @property
    def target_dim(self) -> int:
        return self.cfg.vocab_size  # logits over the vocabulary

    def padding_mask(self, x: Any) -> torch.Tensor | None:
        attention_mask = self._unpack(x)[1]
        return None if attention_mask is None else attention_mask.bool()

    def tokenize(self, x: Any, with_target: bool = False) -> Tokens:
        ids = self._unpack(x)[0]  # [B, L]
        tokens = self.embed_norm(self.token_embed(ids) + self.pos_embed[:, : ids.shape[1]])  # [B, L, width]
        return Tokens(tokens, self.padding_mask(x), target=ids.unsqueeze(-1) if with_target else None)

    def sample_mask(self, x: Any, generator: torch.Generator | None = None) -> Masking:
        """Hide `mask_ratio` of each text's real tokens (its own length, never padding)."""
        ids = self._unpack(x)[0]
        device = generator.device if generator is not None else None
        return random_masking(
            ids.shape[0], ids.shape[1], self.cfg.mask_ratio, self.padding_mask(x), generator=generator, device=device
        )

    def reconstruction_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred: [N, vocab] logits, target: [N, 1] ids of the N hidden tokens -> cross-entropy."""
        return nn.functional.cross_entropy(pred.float(), target[:, 0])

    def check_input(self, x: Any) -> None:
        ids, attention_mask = self._unpack(x)
        expected = f"input_ids [B, L <= {self.cfg.max_length}] of int token ids"
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            self._fail(expected, f"shape {list(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__)
        if ids.is_floating_point() or ids.dtype == torch.bool:
            self._fail(expected, f"dtype {ids.dtype}")
        if ids.shape[0] == 0:
            self._fail(f"a batch of at least one text, {expected}", "an empty batch")
        if ids.shape[1] > self.cfg.max_length:
            self._fail(expected + " (modalities.text.max_length)", f"length {ids.shape[1]}")
        if attention_mask is not None and attention_mask.shape != ids.shape:
            self._fail(f"attention_mask of the input_ids' shape {list(ids.shape)}", f"{list(attention_mask.shape)}")
        if not ids.numel():
            return
        out_of_range = (ids.min() < 0) | (ids.max() >= self.cfg.vocab_size)
        empty_row = (
            torch.zeros((), dtype=torch.bool, device=ids.device)
            if attention_mask is None
            else (attention_mask.sum(1) == 0).any()
        )
        if not bool(out_of_range | empty_row):  # one host sync for both value checks
            return
        if out_of_range:
            self._fail(f"token ids in [0, {self.cfg.vocab_size})", f"ids in [{int(ids.min())}, {int(ids.max())}]")
        row = int((attention_mask.sum(1) == 0).nonzero()[0])
        self._fail("at least one real token per text (attention_mask 1)", f"none in row {row}")

    @classmethod
    def read(cls, path: Path) -> str:
        return read_text(path)

    @classmethod
    def parse_inline(cls, value: Any, where: str) -> str:
        return str(value)

    @classmethod
    def read_inline(cls, value: str, where: str) -> str:
        if not value.strip():
            raise DataError(f"{where}: empty text")
        return value

    @classmethod
    def inline_member(cls, value: str) -> tuple[str, bytes]:
        return ".txt", value.encode("utf-8")

    @classmethod
    def collate(cls, inputs: list[dict[str, torch.Tensor]], cfg: TextConfig | None = None) -> dict[str, torch.Tensor]:
        """[{"input_ids": [L_i], "attention_mask": [L_i]}] -> right-padded [B, max L_i] tensors
        (with the tokenizer's pad id)."""
        pad_id = load_tokenizer((cfg or TextConfig()).tokenizer).pad_token_id or 0
        length = max(x["input_ids"].shape[0] for x in inputs)
        ids = torch.full((len(inputs), length), pad_id, dtype=torch.long)
        mask = torch.zeros(len(inputs), length, dtype=torch.long)
        for i, x in enumerate(inputs):
            n = x["input_ids"].shape[0]
            ids[i, :n], mask[i, :n] = x["input_ids"], x["attention_mask"]
        return {"input_ids": ids, "attention_mask": mask}

    @classmethod
    def save_assets(cls, cfg: TextConfig, directory: Path) -> list[str]:
        """The tokenizer (unless built in) into `directory/tokenizer`."""
        if cfg.tokenizer == BYTES:
            return []
        try:
            load_tokenizer(cfg.tokenizer).save_pretrained(directory / cls.asset_dir)
        except OSError as e:  # offline and not cached: the config still names it
            warnings.warn(f"tokenizer {cfg.tokenizer!r} not saved with the model ({e})", stacklevel=2)
            return []
        return [cls.asset_dir]

    @classmethod
    def load_assets(cls, cfg: TextConfig, directory: Path) -> None:
        if (directory / cls.asset_dir).is_dir():
            cfg.tokenizer = str(directory / cls.asset_dir)

    @classmethod
    def build_transform(
        cls, cfg: TextConfig, train: bool = False, augment: AugmentConfig | None = None
    ) -> TextTransform:
        """The tokenizer's transform; text has no augmentation (`augment` has no settings)."""
        return TextTransform(cfg, train)

    @classmethod
    def example_input(cls, cfg: TextConfig, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random token ids of varying lengths, right-padded with 0, and their attention mask."""
        length = min(cfg.max_length, 32)
        lengths = torch.randint(max(1, length // 2), length + 1, (batch_size,), generator=generator)
        lengths[0] = length
        attention_mask = (torch.arange(length)[None] < lengths[:, None]).long()  # [B, L]
        ids = torch.randint(len(SPECIAL_TOKENS), cfg.vocab_size, (batch_size, length), generator=generator)
        return {"input_ids": ids * attention_mask, "attention_mask": attention_mask}


def train_tokenizer(texts, vocab_size: int, output_dir: str, lowercase: bool = True):
    """Train a BERT-style WordPiece tokenizer on `texts` (an iterable of str) with the `tokenizers`
    library, offline, and save it with `save_pretrained` so `TextConfig.tokenizer` can name the folder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = wordpiece_tokenizer(tok)
    fast.save_pretrained(output_dir)
    return fast
