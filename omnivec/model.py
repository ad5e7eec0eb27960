"""`OmniVecModel`: per-modality encoders -> one shared backbone -> task heads / embeddings,
plus the registered variants (`omnivec_tiny`, `omnivec_small`, `omnivec_base`)."""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_model
from torch import nn

from .backbone import SharedBackbone
from .config import HeadConfig, OmniVecConfig, merge
from .encoders import build_encoder
from .encoders.loading import LibraryEncoder
from .errors import InputError
from .heads import masked_mean
from .registry import HEADS, MODALITIES, MODELS

logger = logging.getLogger(__name__)
CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_DIR = "config.json", "model.safetensors", "tokenizer"


@dataclass
class OmniVecOutput:
    """What `OmniVecModel.forward` returns, keyed by modality (logits keyed by head)."""

    hidden_states: dict[str, torch.Tensor] = field(default_factory=dict)  # [B, L, D]
    padding_mask: dict[str, torch.Tensor | None] = field(default_factory=dict)  # [B, L] bool | None
    pooled: dict[str, torch.Tensor] = field(default_factory=dict)  # [B, D]
    logits: dict[str, torch.Tensor] = field(default_factory=dict)  # [B, num_classes]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class OmniVecModel(nn.Module):
    """Encoders (one per modality), the shared backbone and the task heads, all from one config."""

    def __init__(self, config: OmniVecConfig, load_library_weights: bool = True):
        """Build every part of `config`. Encoders configured with `pretrained:` (timm, transformers)
        then load that checkpoint's weights, unless `load_library_weights` is False (as
        `from_pretrained` does: the saved weights replace them); `load_reports` says what was loaded."""
        super().__init__()
        self.config = config
        dim = config.backbone.dim
        self.encoders = nn.ModuleDict({m: build_encoder(m, cfg, dim) for m, cfg in config.modalities.items()})
        self.backbone = SharedBackbone(config.backbone, list(config.modalities))
        self.heads = nn.ModuleDict({n: HEADS.get(h.type)(h, dim) for n, h in config.heads.items()})
        for module in (self.encoders, self.backbone.blocks, self.backbone.norm, self.heads):
            module.apply(_init_weights)
        self.load_reports = {}
        if load_library_weights:
            for modality, encoder in self.encoders.items():
                if isinstance(encoder, LibraryEncoder):
                    self.load_reports[modality] = encoder.load_pretrained()
                    logger.info("%s encoder: %s", modality, self.load_reports[modality].summary())

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def _check_modality(self, modality: str) -> None:
        if modality not in self.encoders:
            raise InputError(f"unknown modality {modality!r}: this model has {self.modalities}")

    def forward_features(self, modality: str, x: Any, ids_keep: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One modality's batch -> backbone tokens [B, L, D] and padding mask [B, L] (or None).

        `ids_keep` [B, K] keeps only those token positions: the dropped tokens never enter the
        modality blocks or the backbone (masked pretraining)."""
        self._check_modality(modality)
        out = self.encoders[modality](x, ids_keep)  # tokens [B, L, D]
        return self.backbone(out.tokens, modality, out.padding_mask), out.padding_mask

    def forward_head(self, head: str, hidden: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        return self.heads[head](hidden, padding_mask)

    def forward(self, inputs: Mapping[str, Any]) -> OmniVecOutput:
        """inputs: {modality: model-ready batch} -> hidden states, pooled features and the logits of
        every head whose modality is in `inputs`."""
        out = OmniVecOutput()
        for modality, x in inputs.items():
            hidden, mask = self.forward_features(modality, x)
            out.hidden_states[modality], out.padding_mask[modality] = hidden, mask
            out.pooled[modality] = masked_mean(hidden, mask)
        for name, cfg in self.config.heads.items():
            if cfg.modality in out.hidden_states and getattr(self.heads[name], "returns_logits", True):
                out.logits[name] = self.forward_head(name, out.hidden_states[cfg.modality], out.padding_mask[cfg.modality])
        return out

    def add_head(self, name: str, cfg: "HeadConfig") -> nn.Module:
        """Add (or replace) task head `name`; its config joins `config.heads` and is saved with the model."""
        from .config import OmniVecConfig

        data = self.config.to_dict()
        data["heads"][name] = dataclasses.asdict(cfg)
        self.config.heads = OmniVecConfig.from_dict(data).heads  # validated, e.g. that its modality exists
        head = HEADS.get(cfg.type)(self.config.heads[name], self.config.backbone.dim)
        head.apply(_init_weights)
        device = next(self.backbone.parameters()).device
        self.heads[name] = head.to(device)
        return self.heads[name]

    def predict(self, head: str, x: Any) -> Any:
        """Run task head `head` on a batch of its modality: logits, or generated text (summarization)."""
        check_finite(self.config.heads[head].modality, x)
        hidden, mask = self.forward_features(self.config.heads[head].modality, x)
        return self.heads[head].predict(hidden, mask)

    def embed(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """{modality: batch} -> {modality: [B, D]} mean-pooled, L2-normalised embeddings."""
        out = {}
        for modality, x in inputs.items():
            check_finite(modality, x)
            hidden, mask = self.forward_features(modality, x)
            out[modality] = F.normalize(masked_mean(hidden, mask), dim=-1)
        return out

    def transforms(self, train: bool = False) -> dict[str, Callable[..., Any]]:
        """The per-sample transform of every modality (decoded file -> model-ready tensor)."""
        return {m: MODALITIES.get(m).build_transform(cfg, train) for m, cfg in self.config.modalities.items()}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `config.json`, `model.safetensors` (and the text tokenizer, unless built in) to
        `directory`; each file is written aside and renamed into place, so a crash never leaves half a file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".tmp-") as tmp:
            tmp = Path(tmp)
            self.config.save(tmp / CONFIG_NAME)
            save_model(self, str(tmp / WEIGHTS_NAME))
            text = self.config.modalities.get("text")
            if text is not None and text.tokenizer != "bytes":
                from .modalities.text import load_tokenizer

                try:
                    load_tokenizer(text.tokenizer).save_pretrained(tmp / TOKENIZER_DIR)
                except OSError as e:  # offline and not cached: the config still names it
                    warnings.warn(f"tokenizer {text.tokenizer!r} not saved with the model ({e})")
                else:
                    if (directory / TOKENIZER_DIR).exists():
                        shutil.rmtree(directory / TOKENIZER_DIR)
                    os.replace(tmp / TOKENIZER_DIR, directory / TOKENIZER_DIR)
            os.replace(tmp / WEIGHTS_NAME, directory / WEIGHTS_NAME)
            os.replace(tmp / CONFIG_NAME, directory / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, revision: str | None = None) -> "OmniVecModel":
        """Load a model saved by `save_pretrained` from a local directory or a Hugging Face hub id;
        weights holding NaN or Inf are refused (`DataError` naming the file and the tensor)."""
        directory = Path(name_or_path)
        if not directory.is_dir():
            from huggingface_hub import snapshot_download

            directory = Path(snapshot_download(
                str(name_or_path), revision=revision,
                allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, f"{TOKENIZER_DIR}/*"],
            ))
        for required in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / required).is_file():
                raise FileNotFoundError(f"{directory / required}: missing (save_pretrained writes it)")
        config = OmniVecConfig.load(directory / CONFIG_NAME)
        if (directory / TOKENIZER_DIR).is_dir() and "text" in config.modalities:
            config.modalities["text"].tokenizer = str(directory / TOKENIZER_DIR)
        model = cls(config, load_library_weights=False)
        state = load_file(directory / WEIGHTS_NAME)
        problems = state_dict_mismatch(model.state_dict(), state)
        if problems:
            raise ValueError(f"{directory / WEIGHTS_NAME} does not match {directory / CONFIG_NAME}: {problems}")
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            from .errors import DataError

            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise DataError(f"{directory / WEIGHTS_NAME}: tensor {bad[0]}{more} holds NaN or Inf values "
                            "(saved from a diverged run?); refusing to load it")
        model.load_state_dict(state)
        return model


def check_finite(modality: str, x: Any) -> None:
    """Inference inputs must hold no NaN or Inf (training inputs are checked per file by the dataset)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or torch.isfinite(x.sum()):
        return  # a sum is finite only if every value is (one reduction instead of a mask)
    bad = (~torch.isfinite(x)).nonzero()
    if len(bad):  # (else the sum overflowed: large but finite values)
        raise InputError(f"{modality}: expected finite values, got {x[tuple(bad[0])].item()} at index {bad[0].tolist()}")


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """Describe missing, unexpected and wrongly shaped tensors ("" when `found` fits `expected`)."""

    def listing(names: list[str]) -> str:
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(
        f"{k} (expected {list(expected[k].shape)}, found {list(found[k].shape)})"
        for k in set(expected) & set(found) if expected[k].shape != found[k].shape
    )
    parts = [f"{what}: {listing(names)}" for what, names in
             (("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", shapes)) if names]
    return "; ".join(parts)


def register_model(fn: Callable[[], dict]) -> Callable[[], dict]:
    """Register a variant: a function returning its config as a plain dict (timm's `@register_model`)."""
    return MODELS.register(fn.__name__)(fn)


@register_model
def omnivec_tiny() -> dict:
    """128-wide, 4-layer backbone on small inputs: trains in minutes on a laptop CPU."""
    return {
        "backbone": {"dim": 128, "depth": 4, "num_heads": 4},
        "modalities": {
            "image": {"image_size": 32, "patch_size": 4},
            "video": {"num_frames": 8, "image_size": 32, "patch_size": 8, "tubelet_size": 2},
            "audio": {"num_mel_bins": 64, "target_frames": 128},
            "text": {"tokenizer": "bytes", "vocab_size": 261, "max_length": 256},
            "point_cloud": {"num_points": 512, "num_groups": 32, "group_size": 16, "pointnet_dims": [64, 128, 256]},
        },
    }


def _full_size(dim: int, depth: int, num_heads: int) -> dict:
    return {
        "backbone": {"dim": dim, "depth": depth, "num_heads": num_heads},
        "modalities": {
            "image": {"image_size": 224, "patch_size": 16},
            "video": {"num_frames": 16, "image_size": 224, "patch_size": 16, "tubelet_size": 2},
            "audio": {"num_mel_bins": 128, "target_frames": 1024},
            "text": {"tokenizer": "bert-base-uncased", "vocab_size": 30522, "max_length": 512},
            "point_cloud": {"num_points": 1024, "num_groups": 64, "group_size": 32},
        },
    }


@register_model
def omnivec_small() -> dict:
    """ViT-S sized backbone (384 wide, 12 layers) on full-size inputs."""
    return _full_size(384, 12, 6)


@register_model
def omnivec_base() -> dict:
    """ViT-B sized backbone (768 wide, 12 layers, about 85M parameters) on full-size inputs."""
    return _full_size(768, 12, 12)


def list_models() -> list[str]:
    """Names of the registered variants."""
    return MODELS.names()


def model_config(name: str, **overrides: Any) -> OmniVecConfig:
    """The validated config of variant `name` with `overrides` merged in (nested dicts or dotted keys)."""
    data = merge(MODELS.get(name)(), overrides)
    data["variant"] = name
    return OmniVecConfig.from_dict(data)


def build_model(name: str, **overrides: Any) -> OmniVecModel:
    """Build a registered variant, e.g. `build_model("omnivec_tiny", backbone={"depth": 2})`;
    `modalities={"video": None}` drops a modality."""
    return OmniVecModel(model_config(name, **overrides))


def example_inputs(config: OmniVecConfig, batch_size: int = 2, seed: int = 0) -> dict[str, Any]:
    """A random model-ready batch for every modality of `config` (docs, tests, benchmarks)."""
    generator = torch.Generator().manual_seed(seed)
    return {m: MODALITIES.get(m).example_input(cfg, batch_size, generator) for m, cfg in config.modalities.items()}
