"""The model's config schema: `OmniVecConfig`, one dataclass tree (backbone, modalities, heads)
saved as `config.json`, and the base classes each modality and head extends. Every config is built
through `parsing.from_dict`, which names the full key of anything wrong; this module reads the
registries but imports no component package."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .parsing import coerce, from_dict, mapping, require, require_divisor, require_positive
from .registry import BACKBONES, ENCODERS, HEADS, MODALITIES


def require_timm_checkpoint(prefix: str, family: str, checkpoint: str) -> None:
    """A local weights file (`checkpoint:`) goes with a timm model only."""
    require(
        not checkpoint or family == "timm",
        f"{prefix}.checkpoint",
        "'' unless pretrained names a timm model (transformers checkpoints are directories: hf:DIR)",
        checkpoint,
    )


@dataclass
class ModalityConfig:
    """Settings shared by every modality; each modality file subclasses it with its own."""

    width: int | None = None  # token width inside the modality (None: the backbone width)
    depth: int = 0  # modality-specific transformer blocks before projecting to the backbone
    num_heads: int | None = None  # attention heads of those blocks (None: width // 64, at least 1)
    mask_ratio: float = 0.75  # fraction of tokens hidden in masked pretraining
    # Fraction of the hidden tokens the MAE decoder skips in training (VideoMAE V2's decoder masking): neither run
    # nor predicted, which cuts the decoder's cost where it runs over many tokens (video); validation decodes all
    decoder_mask_ratio: float = 0.0
    # Start from another library's checkpoint (omnivec/encoders): "timm:MODEL_NAME" or "hf:HUB_ID_OR_DIR";
    # "" builds omnivec's own encoder.
    pretrained: str = ""
    checkpoint: str = ""  # timm only: a local weights file (.safetensors, .pth) instead of the hub's
    library_config: dict = field(default_factory=dict)  # the library's architecture, filled when built
    strict: bool = True  # refuse a checkpoint lacking tensors or holding others' shapes; false: start those afresh

    def validate(self, prefix: str) -> None:
        require_positive(self, prefix, "width", "num_heads")
        family, sep, source = self.pretrained.partition(":")
        require(
            not self.pretrained or bool(sep and family and source),
            f"{prefix}.pretrained",
            "'' or FAMILY:SOURCE such as 'timm:vit_base_patch16_224' or 'hf:google/vit-base-patch16-224'",
            self.pretrained,
        )
        require_timm_checkpoint(prefix, family, self.checkpoint)
        require(self.depth >= 0, f"{prefix}.depth", "an int >= 0", self.depth)
        require(0.0 <= self.mask_ratio < 1.0, f"{prefix}.mask_ratio", "a float in [0, 1)", self.mask_ratio)
        require(
            0.0 <= self.decoder_mask_ratio < 1.0,
            f"{prefix}.decoder_mask_ratio",
            "a float in [0, 1)",
            self.decoder_mask_ratio,
        )


@dataclass
class PatchConfig(ModalityConfig):
    """Settings of a modality cut into patches of raw values (images, video, spectrograms)."""

    # Masked pretraining target: each hidden patch standardised over its own values (MAE's
    # norm_pix_loss); false: the model-ready values themselves (MAE's released visualisation models)
    norm_pix_loss: bool = True


@dataclass
class AugmentConfig:
    """Training augmentation of one modality: `augment.MODALITY` of a recipe config. Each modality
    file subclasses it with its switches (0, "" or an empty range switches one off); a modality
    listed without settings gets its anchors' fine-tuning defaults, one not listed none."""

    def validate(self, prefix: str) -> None:
        pass

    def batch_mix(self) -> dict[str, float]:
        """timm `Mixup` arguments of a batch-level augmentation that mixes samples and their labels
        ({}: none). Fine-tuning applies it to tasks with one label per sample."""
        return {}


def augment_configs(data: Mapping[str, Any], prefix: str) -> dict[str, AugmentConfig]:
    """`{modality: settings}` -> each modality's validated `augment_class` (errors name `PREFIX.MODALITY.KEY`);
    a modality set to none is left out (`augment.image=none` switches its augmentation off)."""
    out = {}
    for name, sub in mapping(data, prefix).items():
        if sub is None:
            continue
        if name not in MODALITIES:
            raise ConfigError(f"{prefix}.{name}: unknown modality; registered: {MODALITIES.names()}")
        cls = MODALITIES.get(name).augment_class
        out[name] = sub if isinstance(sub, cls) else from_dict(cls, sub, f"{prefix}.{name}")
    return out


@dataclass
class BackboneConfig:
    """The shared pre-LN transformer backbone, random or a pretrained ViT's (`pretrained:`)."""

    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.0
    init_values: float | None = None  # LayerScale (DINOv2); None: none
    norm_eps: float = 1e-5
    pre_norm: bool = False  # a LayerNorm before the blocks (CLIP)
    act: str = "gelu"  # gelu | quick_gelu (OpenAI CLIP)
    num_prefix_tokens: int = 0  # learned tokens (CLS, registers) that attend with every sequence, then dropped
    # Start the backbone from a ViT (omnivec/pretrained/vit_backbone.py): "timm:MODEL_NAME" or "hf:HUB_ID_OR_DIR" (ViT,
    # ViTMAE, DINOv2). Its blocks, final norm and CLS token become the backbone, the image modality takes its
    # patch embedding and positions; the settings above then come from the checkpoint.
    pretrained: str = ""
    checkpoint: str = ""  # timm only: a local weights file (.safetensors, .pth) instead of the hub's
    library_config: dict = field(default_factory=dict)  # timm: create_model kwargs; hf: its config, filled when built
    strict: bool = True  # refuse a checkpoint lacking tensors or holding others' shapes; false: start those afresh

    def validate(self, prefix: str) -> None:
        require_positive(self, prefix, "dim", "depth", "num_heads", "mlp_ratio", "norm_eps", "init_values")
        if not self.pretrained:  # a pretrained backbone's sizes come from its checkpoint
            require_divisor(self, prefix, "num_heads", "dim")
        require(0.0 <= self.drop_path < 1.0, f"{prefix}.drop_path", "a float in [0, 1)", self.drop_path)
        require(self.act in ("gelu", "quick_gelu"), f"{prefix}.act", "gelu or quick_gelu", self.act)
        require(self.num_prefix_tokens >= 0, f"{prefix}.num_prefix_tokens", "an int >= 0", self.num_prefix_tokens)
        family, _, source = self.pretrained.partition(":")
        require(
            not self.pretrained or bool(family in ("timm", "hf") and source),
            f"{prefix}.pretrained",
            "'' or timm:MODEL_NAME or hf:HUB_ID_OR_DIR",
            self.pretrained,
        )
        require_timm_checkpoint(prefix, family, self.checkpoint)


@dataclass
class HeadConfig:
    """Settings shared by every task head; each head file subclasses it with its own."""

    type: str = ""  # registered head name, e.g. "classification"
    modality: str = ""  # the modality whose backbone tokens feed the head

    def validate(self, prefix: str) -> None:
        pass


@dataclass
class OmniVecConfig:
    """The whole model: backbone, per-modality encoders (by modality name) and task heads (by task)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    modalities: dict[str, ModalityConfig] = field(default_factory=dict)
    heads: dict[str, HeadConfig] = field(default_factory=dict)
    variant: str | None = None  # registered variant this config came from, for information

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OmniVecConfig:
        """Build and validate a config; every error names its key."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"config: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        unknown = set(data) - {"backbone", "modalities", "heads", "variant"}
        if unknown:
            raise ConfigError(f"{sorted(unknown)[0]}: unknown key; expected backbone, modalities, heads, variant")
        variant = coerce(str | None, data.get("variant"), "variant")
        backbone = from_dict(BackboneConfig, data.get("backbone"), "backbone")
        vit = (
            take_backbone_architecture(backbone, mapping(data.get("backbone"), "backbone"))
            if backbone.pretrained
            else None
        )
        modalities = {}
        for name, sub in mapping(data.get("modalities"), "modalities").items():
            if name not in MODALITIES:
                raise ConfigError(f"modalities.{name}: unknown modality; registered: {MODALITIES.names()}")
            modalities[name] = from_dict(MODALITIES.get(name).config_class, sub, f"modalities.{name}")
            check_pretrained(name, modalities[name])
        if not modalities:
            raise ConfigError(f"modalities: expected at least one of {MODALITIES.names()}")
        if vit is not None:
            vit.check_modalities(modalities, backbone.pretrained)
        heads = {}
        for name, sub in mapping(data.get("heads"), "heads").items():
            sub = mapping(sub, f"heads.{name}")
            kind = sub.get("type")
            if not isinstance(kind, str) or kind not in HEADS:
                raise ConfigError(f"heads.{name}.type: expected one of {HEADS.names()}, got {kind!r}")
            heads[name] = from_dict(HEADS.get(kind).config_class, sub, f"heads.{name}")
            if heads[name].modality not in modalities:
                raise ConfigError(
                    f"heads.{name}.modality: expected one of the model's modalities {sorted(modalities)}, "
                    f"got {heads[name].modality!r}"
                )
        return cls(backbone=backbone, modalities=modalities, heads=heads, variant=variant)

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "backbone": dataclasses.asdict(self.backbone),
            "modalities": {k: dataclasses.asdict(v) for k, v in self.modalities.items()},
            "heads": {k: dataclasses.asdict(v) for k, v in self.heads.items()},
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> OmniVecConfig:
        return cls.from_dict(read_json(path))


def read_json(path: str | Path) -> Any:
    """The data of a JSON file; a `ConfigError` naming it when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e


def take_backbone_architecture(cfg: BackboneConfig, given: Mapping[str, Any]) -> Any:
    """Fill the backbone's settings from the checkpoint `cfg.pretrained` names (and return what was
    read of it); a setting the config gives (`given`) that contradicts the checkpoint fails naming
    the key and both values."""
    vit = BACKBONES.get(cfg.pretrained.partition(":")[0])(cfg, with_weights=False)
    arch = vit.arch
    for key in BACKBONE_KEYS:
        if key in given and getattr(cfg, key) != arch[key]:
            raise ConfigError(
                f"backbone.{key}: expected {arch[key]!r} (as in {cfg.pretrained}), got {getattr(cfg, key)!r}"
            )
        setattr(cfg, key, arch[key])
    cfg.validate("backbone")
    return vit


BACKBONE_KEYS = (
    "dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "init_values",
    "norm_eps",
    "pre_norm",
    "act",
    "num_prefix_tokens",
)  # what a pretrained backbone's checkpoint decides


def check_pretrained(modality: str, cfg: ModalityConfig) -> None:
    """Fail at config time when `cfg.pretrained` names a family this modality cannot load."""
    family = cfg.pretrained.partition(":")[0]
    if cfg.pretrained and f"{modality}/{family}" not in ENCODERS:
        available = [name.split("/")[1] + ":" for name in ENCODERS.names() if name.startswith(modality + "/")]
        raise ConfigError(
            f"modalities.{modality}.pretrained: expected one of {available or ['(none)']} "
            f"followed by a model name or path, got {cfg.pretrained!r}"
        )


# --- config size: YAML aliases can make a few lines expand to billions of values -----------------
