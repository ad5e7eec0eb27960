"""`OmniVecModel`: per-modality encoders -> one shared backbone -> task heads / embeddings,
plus the registered variants (`omnivec_tiny`, `omnivec_small`, `omnivec_base`)."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .backbone import SharedBackbone
from .config import AugmentConfig, HeadConfig, OmniVecConfig, merge
from .encoders import build_encoder
from .encoders.loading import LibraryEncoder
from .errors import InputError, ModelError, ModelFileMissing
from .heads import masked_mean
from .pooling import POOLS, AttentivePooler, Layers, check_pool, parse_layers
from .registry import HEADS, MODALITIES, MODELS

logger = logging.getLogger(__name__)
CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"


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
        self.heads = nn.ModuleDict({n: build_head(h, config) for n, h in config.heads.items()})
        for module in (self.encoders, self.backbone.blocks, self.backbone.norm, self.heads):
            module.apply(_init_weights)
        self.load_reports = {}
        if load_library_weights and config.backbone.pretrained:  # the trunk (and image patches) from a ViT
            from .encoders.trunk import load_trunk

            self.load_reports["backbone"] = load_trunk(self)
            logger.info("backbone: %s", self.load_reports["backbone"].summary())
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

    def forward_features(
        self, modality: str, x: Any, ids_keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One modality's batch -> backbone tokens [B, L, D] and padding mask [B, L] (or None).

        `ids_keep` [B, K] keeps only those token positions: the dropped tokens never enter the
        modality blocks or the backbone (masked pretraining)."""
        self._check_modality(modality)
        out = self.encoders[modality](x, ids_keep)  # tokens [B, L, D]
        return self.backbone(out.tokens, modality, out.padding_mask), out.padding_mask

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the activations of the trunk's blocks and of every modality encoder's in the
        backward pass instead of keeping them (torch.utils.checkpoint, non-reentrant; timm's
        convention): less memory for about one more forward pass of compute."""
        self.backbone.grad_checkpointing = enable
        for encoder in self.encoders.values():
            encoder.set_grad_checkpointing(enable)

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
            if cfg.modality in out.hidden_states and self.heads[name].output == "logits":
                out.logits[name] = self.forward_head(
                    name, out.hidden_states[cfg.modality], out.padding_mask[cfg.modality]
                )
        return out

    def add_head(self, name: str, cfg: HeadConfig) -> nn.Module:
        """Add (or replace) task head `name`; its config joins `config.heads` and is saved with the model."""
        from .config import OmniVecConfig

        data = self.config.to_dict()
        data["heads"][name] = dataclasses.asdict(cfg)
        self.config.heads = OmniVecConfig.from_dict(data).heads  # validated, e.g. that its modality exists
        head = build_head(self.config.heads[name], self.config)
        head.apply(_init_weights)
        device = next(self.backbone.parameters()).device
        self.heads[name] = head.to(device)
        return self.heads[name]

    def predict(self, head: str, x: Any) -> Any:
        """Run task head `head` on a batch of its modality: logits, or generated text (summarization)."""
        check_finite(self.config.heads[head].modality, x)
        hidden, mask = self.forward_features(self.config.heads[head].modality, x)
        return self.heads[head].predict(hidden, mask)

    def layer_tokens(self, modality: str, x: Any, layers: Layers = "last") -> tuple[torch.Tensor, torch.Tensor | None]:
        """One modality's batch -> the backbone tokens of `layers` [B, n + L, D] (the n prefix tokens
        first; several blocks averaged: `parse_layers`) and the padding mask [B, L] (or None)."""
        self._check_modality(modality)
        out = self.encoders[modality](x)  # tokens [B, L, D]
        if isinstance(layers, str) and layers == "last":
            return self.backbone(out.tokens, modality, out.padding_mask, keep_prefix=True), out.padding_mask
        indices = parse_layers(layers, len(self.backbone.blocks))
        blocks = self.backbone.block_outputs(out.tokens, modality, out.padding_mask, indices)  # [B, n + L, D] each
        return torch.stack(blocks).mean(0), out.padding_mask

    def embed(
        self,
        inputs: Mapping[str, Any],
        pool: str = "mean",
        layers: Layers = "last",
        pooler: AttentivePooler | None = None,
    ) -> dict[str, torch.Tensor]:
        """{modality: batch} -> {modality: [B, D]} L2-normalised embeddings: `pool` ("mean" of the
        real tokens, "cls" the first prefix token, "attentive" a trained `pooler`) of the tokens of
        `layers` ("last", "meanK" the last K blocks, or block indices; several are averaged, so the
        width is always D). See omnivec/pooling.py."""
        check_pool(
            pool, layers, pooler, self.config.backbone.dim, len(self.backbone.blocks), self.backbone.num_prefix_tokens
        )
        out = {}
        for modality, x in inputs.items():
            check_finite(modality, x)
            tokens, mask = self.layer_tokens(modality, x, layers)  # [B, n + L, D]
            out[modality] = F.normalize(POOLS[pool](tokens, mask, self.backbone.num_prefix_tokens, pooler), dim=-1)
            if not torch.isfinite(out[modality]).all():
                broken = [n for n, p in self.named_parameters() if not torch.isfinite(p).all()]
                if broken:
                    raise ModelError(
                        f"the model's weights hold NaN or Inf ({', '.join(broken[:4])}"
                        f"{' ...' if len(broken) > 4 else ''}): its embeddings are not finite"
                    )
                raise InputError(
                    f"{modality}: expected model-ready values such as its transform gives; the "
                    f"embedding overflowed (inputs up to {float(x.abs().max()):.3g})"
                )
        return out

    def transforms(
        self, train: bool = False, augment: Mapping[str, AugmentConfig] | None = None
    ) -> dict[str, Callable[..., Any]]:
        """The per-sample transform of every modality (decoded file -> model-ready tensor), with the
        training augmentation `augment` gives a modality (only when `train`)."""
        out = {}
        for m, cfg in self.config.modalities.items():
            build = MODALITIES.get(m).build_transform
            out[m] = build(cfg, train, augment[m]) if train and augment and m in augment else build(cfg, train)
        return out

    def save_pretrained(
        self, directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Write `config.json`, `model.safetensors`, each modality's assets (a tokenizer, unless
        built in) and a model card `README.md` to `directory`; each is written aside and renamed into
        place, so a crash never leaves half a file. `state_dict` replaces the model's own weights
        (the full tensors gathered from FSDP shards: `Trainer.save_model`)."""
        from .card import model_card

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".tmp-") as tmp:
            tmp = Path(tmp)
            self.config.save(tmp / CONFIG_NAME)
            weights = self.state_dict() if state_dict is None else state_dict
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS_NAME))
            for modality, cfg in self.config.modalities.items():
                for name in MODALITIES.get(modality).save_assets(cfg, tmp):
                    if (directory / name).is_dir():
                        shutil.rmtree(directory / name)
                    os.replace(tmp / name, directory / name)
            (tmp / CARD_NAME).write_text(model_card(self.config, directory, sum(p.numel() for p in self.parameters())))
            os.replace(tmp / WEIGHTS_NAME, directory / WEIGHTS_NAME)
            os.replace(tmp / CARD_NAME, directory / CARD_NAME)
            os.replace(tmp / CONFIG_NAME, directory / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, revision: str | None = None) -> OmniVecModel:
        """Load a model saved by `save_pretrained` from a local directory or a Hugging Face hub id;
        `ModelError` names the folder or file that cannot be used, or the tensor holding NaN or Inf."""
        directory = resolve_model_dir(name_or_path, revision)
        for required in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / required).is_file():
                raise ModelFileMissing(f"{directory / required}: missing (save_pretrained writes it)")
        config = OmniVecConfig.load(directory / CONFIG_NAME)
        for modality, cfg in config.modalities.items():
            MODALITIES.get(modality).load_assets(cfg, directory)
        model = cls(config, load_library_weights=False)
        try:
            state = load_file(directory / WEIGHTS_NAME)
        except Exception as e:  # safetensors: truncated, empty, or another format under that name
            raise ModelError(
                f"{directory / WEIGHTS_NAME}: not a readable safetensors file ({e}); save_pretrained "
                "writes one (pickled PyTorch files are never loaded)"
            ) from e
        problems = state_dict_mismatch(model.state_dict(), state)
        if problems:
            raise ModelError(f"{directory / WEIGHTS_NAME} does not match {directory / CONFIG_NAME}: {problems}")
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise ModelError(
                f"{directory / WEIGHTS_NAME}: tensor {bad[0]}{more} holds NaN or Inf values "
                "(saved from a diverged run?); refusing to load it"
            )
        model.load_state_dict(state)
        return model


def build_head(cfg: HeadConfig, config: OmniVecConfig) -> nn.Module:
    """The head of `cfg`, bound to the model (e.g. to its text modality's tokenizer)."""
    cls = HEADS.get(cfg.type)
    return cls(cls.bind(cfg, config), config.backbone.dim)


def resolve_model_dir(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local model folder, or a hub id's files downloaded (config, weights, assets); a path that
    is neither an existing folder nor a valid hub id fails naming it."""
    directory = Path(name_or_path)
    if directory.is_dir():
        return directory
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(name_or_path))
    except HFValidationError:
        raise ModelFileMissing(f"{name_or_path}: no such model folder (and not a hub id)") from None
    try:
        return Path(
            snapshot_download(str(name_or_path), revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "*/*"])
        )  # + assets
    except Exception as e:  # offline, unknown repository, no access
        raise ModelFileMissing(
            f"{name_or_path}: not a local folder, and the hub has no such model ({type(e).__name__}: {e})"
        ) from e


def check_finite(modality: str, x: Any) -> None:
    """Inference inputs must hold no NaN or Inf (training inputs are checked per file by the dataset)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or torch.isfinite(x.sum()):
        return  # a sum is finite only if every value is (one reduction instead of a mask)
    bad = (~torch.isfinite(x)).nonzero()
    if len(bad):  # (else the sum overflowed: large but finite values)
        raise InputError(
            f"{modality}: expected finite values, got {x[tuple(bad[0])].item()} at index {bad[0].tolist()}"
        )


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """Describe missing, unexpected and wrongly shaped tensors ("" when `found` fits `expected`)."""

    def listing(names: list[str]) -> str:
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(
        f"{k} (expected {list(expected[k].shape)}, found {list(found[k].shape)})"
        for k in set(expected) & set(found)
        if expected[k].shape != found[k].shape
    )
    parts = [
        f"{what}: {listing(names)}"
        for what, names in (("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", shapes))
        if names
    ]
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
def omnivec_base_vit() -> dict:
    """The trunk is MAE's ViT-B/16 (timm `vit_base_patch16_224.mae`): its blocks, CLS token, patch
    embedding and positions; the other modalities' tokenizers project into its 768-wide tokens.
    Swap in any ViT with `backbone.pretrained` ("timm:vit_base_patch14_dinov2", "hf:facebook/vit-mae-base")."""
    full = _full_size(768, 12, 12)
    return {"backbone": {"pretrained": "timm:vit_base_patch16_224.mae"}, "modalities": full["modalities"]}


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


def load_model(init: str | os.PathLike | None, name: str, overrides: Mapping[str, Any] | None = None) -> OmniVecModel:
    """What a recipe starts from: the saved model folder (or hub id) `init`, else variant `name`
    with `overrides`, newly initialised."""
    return OmniVecModel.from_pretrained(init) if init else OmniVecModel(model_config(name, **(overrides or {})))


def build_model(name: str, **overrides: Any) -> OmniVecModel:
    """Build a registered variant, e.g. `build_model("omnivec_tiny", backbone={"depth": 2})`;
    `modalities={"video": None}` drops a modality."""
    return OmniVecModel(model_config(name, **overrides))


def example_inputs(config: OmniVecConfig, batch_size: int = 2, seed: int = 0) -> dict[str, Any]:
    """A random model-ready batch for every modality of `config` (docs, tests, benchmarks)."""
    generator = torch.Generator().manual_seed(seed)
    return {m: MODALITIES.get(m).example_input(cfg, batch_size, generator) for m, cfg in config.modalities.items()}
