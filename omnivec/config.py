"""`OmniVecConfig`: one dataclass tree (backbone, modalities, heads), saved as `config.json`.

Every config is built through `from_dict`, which rejects unknown keys, wrong types and impossible
values with a `ConfigError` naming the full key (e.g. `modalities.image.patch_size`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .registry import ENCODERS, HEADS, MODALITIES, TRUNKS

BOOL_WORDS = {"yes": True, "on": True, "y": True, "no": False, "off": False, "n": False}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` (int, float, str, bool, X | None, tuple[X, ...])."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r} ({type(value).__name__})")
        if origin is dict:
            key_tp, value_tp = typing.get_args(tp)
            return {_coerce(key_tp, k, key): _coerce(value_tp, v, f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        items = value if isinstance(value, (list, tuple)) else [value]  # a single item is a one-item list
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(items)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        (item_tp, *_) = typing.get_args(tp)
        return tuple(_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and isinstance(value, str) and value.lower() in BOOL_WORDS:
        return BOOL_WORDS[value.lower()]
    if tp in (int, float, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def from_dict(cls: type, data: Mapping[str, Any] | None, prefix: str) -> Any:
    """Build the dataclass `cls` from `data`, checking keys, types and then `validate()`."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{join_key(prefix, key)}: unknown key{hint}; expected one of {names}")
    kwargs = {}
    for k, v in data.items():
        sub_cls = hints[k] if dataclasses.is_dataclass(hints[k]) else None
        kwargs[k] = from_dict(sub_cls, v, join_key(prefix, k)) if sub_cls else _coerce(hints[k], v, join_key(prefix, k))
    obj = cls(**kwargs)
    obj.validate(prefix)
    return obj


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def require(ok: bool, key: str, expected: str, value: Any) -> None:
    """Raise a `ConfigError` naming `key` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def require_positive(obj: Any, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        require(value is None or value > 0, join_key(prefix, name), "a positive number", value)


@dataclass
class ModalityConfig:
    """Settings shared by every modality; each modality file subclasses it with its own."""

    width: int | None = None  # token width inside the modality (None: the backbone width)
    depth: int = 0  # modality-specific transformer blocks before projecting to the backbone
    num_heads: int | None = None  # attention heads of those blocks (None: width // 64, at least 1)
    mask_ratio: float = 0.75  # fraction of tokens hidden in masked pretraining
    # Start from another library's checkpoint (omnivec/encoders): "timm:MODEL_NAME" or "hf:HUB_ID_OR_DIR";
    # "" builds omnivec's own encoder.
    pretrained: str = ""
    checkpoint: str = ""  # timm only: a local weights file (.safetensors, .pth) instead of the hub's
    library_config: dict = field(default_factory=dict)  # the library's architecture, filled when built

    def validate(self, prefix: str) -> None:
        require_positive(self, prefix, "width", "num_heads")
        family, sep, source = self.pretrained.partition(":")
        require(
            not self.pretrained or (sep and family and source),
            f"{prefix}.pretrained",
            "'' or FAMILY:SOURCE such as 'timm:vit_base_patch16_224' or 'hf:google/vit-base-patch16-224'",
            self.pretrained,
        )
        require(
            not self.checkpoint or family == "timm",
            f"{prefix}.checkpoint",
            "'' unless pretrained names a timm model (transformers checkpoints are directories: hf:DIR)",
            self.checkpoint,
        )
        require(self.depth >= 0, f"{prefix}.depth", "an int >= 0", self.depth)
        require(0.0 <= self.mask_ratio < 1.0, f"{prefix}.mask_ratio", "a float in [0, 1)", self.mask_ratio)


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
    for name, sub in _mapping(data, prefix).items():
        if sub is None:
            continue
        if name not in MODALITIES:
            raise ConfigError(f"{prefix}.{name}: unknown modality; registered: {MODALITIES.names()}")
        cls = MODALITIES.get(name).augment_class
        out[name] = sub if isinstance(sub, cls) else from_dict(cls, sub, f"{prefix}.{name}")
    return out


@dataclass
class BackboneConfig:
    """The shared pre-LN transformer trunk, random or a pretrained ViT's (`pretrained:`)."""

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
    # Start the trunk from a ViT (omnivec/encoders/trunk.py): "timm:MODEL_NAME" or "hf:HUB_ID_OR_DIR" (ViT,
    # ViTMAE, DINOv2). Its blocks, final norm and CLS token become the trunk, the image modality takes its
    # patch embedding and positions; the settings above then come from the checkpoint.
    pretrained: str = ""
    checkpoint: str = ""  # timm only: a local weights file (.safetensors, .pth) instead of the hub's
    library_config: dict = field(default_factory=dict)  # timm: create_model kwargs; hf: its config, filled when built

    def validate(self, prefix: str) -> None:
        require_positive(self, prefix, "dim", "depth", "num_heads", "mlp_ratio", "norm_eps", "init_values")
        require(
            self.pretrained or self.dim % self.num_heads == 0,
            f"{prefix}.num_heads",
            f"a divisor of dim={self.dim}",
            self.num_heads,
        )  # (a pretrained trunk's sizes come from its checkpoint)
        require(0.0 <= self.drop_path < 1.0, f"{prefix}.drop_path", "a float in [0, 1)", self.drop_path)
        require(self.act in ("gelu", "quick_gelu"), f"{prefix}.act", "gelu or quick_gelu", self.act)
        require(self.num_prefix_tokens >= 0, f"{prefix}.num_prefix_tokens", "an int >= 0", self.num_prefix_tokens)
        family, sep, source = self.pretrained.partition(":")
        require(
            not self.pretrained or (family in ("timm", "hf") and source),
            f"{prefix}.pretrained",
            "'' or timm:MODEL_NAME or hf:HUB_ID_OR_DIR",
            self.pretrained,
        )
        require(
            not self.checkpoint or family == "timm",
            f"{prefix}.checkpoint",
            "'' unless pretrained names a timm model (transformers checkpoints are directories: hf:DIR)",
            self.checkpoint,
        )


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
        variant = _coerce(str | None, data.get("variant"), "variant")
        backbone = from_dict(BackboneConfig, data.get("backbone"), "backbone")
        trunk = (
            take_trunk_architecture(backbone, _mapping(data.get("backbone"), "backbone"))
            if backbone.pretrained
            else None
        )
        modalities = {}
        for name, sub in _mapping(data.get("modalities"), "modalities").items():
            if name not in MODALITIES:
                raise ConfigError(f"modalities.{name}: unknown modality; registered: {MODALITIES.names()}")
            modalities[name] = from_dict(MODALITIES.get(name).config_class, sub, f"modalities.{name}")
            check_pretrained(name, modalities[name])
        if not modalities:
            raise ConfigError(f"modalities: expected at least one of {MODALITIES.names()}")
        if trunk is not None:
            trunk.check_modalities(modalities, backbone.pretrained)
        heads = {}
        for name, sub in _mapping(data.get("heads"), "heads").items():
            sub = _mapping(sub, f"heads.{name}")
            kind = sub.get("type")
            if kind not in HEADS:
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
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(data)


def take_trunk_architecture(cfg: BackboneConfig, given: Mapping[str, Any]) -> Any:
    """Fill the trunk's settings from the checkpoint `cfg.pretrained` names (and return what was
    read of it); a setting the config gives (`given`) that contradicts the checkpoint fails naming
    the key and both values."""
    trunk = TRUNKS.get(cfg.pretrained.partition(":")[0])(cfg, with_weights=False)
    arch = trunk.arch
    for key in TRUNK_KEYS:
        if key in given and getattr(cfg, key) != arch[key]:
            raise ConfigError(
                f"backbone.{key}: expected {arch[key]!r} (as in {cfg.pretrained}), got {getattr(cfg, key)!r}"
            )
        setattr(cfg, key, arch[key])
    cfg.validate("backbone")
    return trunk


TRUNK_KEYS = (
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
)  # what a pretrained trunk's checkpoint decides


def check_pretrained(modality: str, cfg: ModalityConfig) -> None:
    """Fail at config time when `cfg.pretrained` names a family this modality cannot load."""
    family = cfg.pretrained.partition(":")[0]
    if cfg.pretrained and f"{modality}/{family}" not in ENCODERS:
        available = [name.split("/")[1] + ":" for name in ENCODERS.names() if name.startswith(modality + "/")]
        raise ConfigError(
            f"modalities.{modality}.pretrained: expected one of {available or ['(none)']} "
            f"followed by a model name or path, got {cfg.pretrained!r}"
        )


def _mapping(value: Any, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return dict(value)


def load_recipe_config(cls: type, path: str | Path, overrides: list[str] = ()) -> Any:
    """Read a recipe's YAML config, apply `key=value` overrides (dotted keys reach nested values;
    values parse as YAML, `none` as null) and validate it: a bad key fails here, before any work.
    A config whose YAML aliases expand to more than `MAX_CONFIG_VALUES` values is refused."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    except RecursionError as e:
        raise ConfigError(f"{path}: nested too deeply to be a config") from e
    check_config_size(data, str(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{item!r}: expected key=value")
        word = value.strip().lower()
        # YAML 1.1 reads yes/no/on/off as booleans: keep them as words (precision=no); bool keys accept them
        parsed = None if word in ("none", "null") else value.strip() if word in BOOL_WORDS else yaml.safe_load(value)
        check_config_size(parsed, key)
        data = merge(data, {key: parsed})
    return from_dict(cls, data, "")


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any], _prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """Deep-merge `overrides` into `base`; dotted keys (`backbone.depth`) reach nested values,
    and a `None` value for a modality or head removes it (`{"modalities": {"video": None}}` or
    `{"modalities.video": None}`)."""
    out = plain_copy(base)  # deep copy of plain data, refusing alias bombs
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        full = (*_prefix, *parents)  # where `leaf` sits in the whole config
        node: Any = out
        for p in parents:
            if isinstance(node, list) and p.isdigit() and int(p) < len(node):  # stages.0.steps
                node = node[int(p)]
            elif isinstance(node, dict):
                node = node.setdefault(p, {})
            else:
                raise ConfigError(f"{key}: {p!r} is not a mapping key or a list index")
        if isinstance(node, list):
            if not (leaf.isdigit() and int(leaf) < len(node)):
                raise ConfigError(f"{key}: {leaf!r} is not an index of a list of {len(node)}")
            node[int(leaf)] = value
        elif isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = merge(node[leaf], value, (*full, leaf))
        elif value is None and full and full[-1] in ("modalities", "heads"):
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


# --- config size: YAML aliases can make a few lines expand to billions of values -----------------

MAX_CONFIG_VALUES = 100_000  # far more values than any real config holds


def check_config_size(data: Any, where: str) -> int:
    """The number of values in `data` once shared objects (YAML aliases) are expanded, counted
    without expanding them; a `ConfigError` naming `where` when it exceeds `MAX_CONFIG_VALUES` or
    when the data contains itself."""
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()

    def count(x: Any) -> int:
        if not isinstance(x, (Mapping, list, tuple)):
            return 1
        if id(x) in sizes:
            return sizes[id(x)]
        if id(x) in open_ids:
            raise ConfigError(f"{where}: a value contains itself (a YAML alias inside its own anchor)")
        open_ids.add(id(x))
        n = 1 + sum(count(v) for v in (x.values() if isinstance(x, Mapping) else x))
        open_ids.discard(id(x))
        sizes[id(x)] = n
        return n

    try:
        total = count(data)
    except RecursionError as e:
        raise ConfigError(f"{where}: nested too deeply to be a config") from e
    if total > MAX_CONFIG_VALUES:
        raise ConfigError(
            f"{where}: expands to {total:,} values, more than the {MAX_CONFIG_VALUES:,} a config may "
            "hold (YAML aliases repeating a block?)"
        )
    return total


def plain_copy(data: Any, limit: int = MAX_CONFIG_VALUES) -> Any:
    """A deep copy of plain config data as JSON would give it (tuples become lists, mapping keys
    strings), refusing to expand shared objects past `limit` values (a `ConfigError`)."""
    budget = [limit]

    def copy(x: Any) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise ConfigError(f"config: expands to more than {limit:,} values (YAML aliases repeating a block?)")
        if isinstance(x, Mapping):
            return {k if isinstance(k, str) else json.dumps(k): copy(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [copy(v) for v in x]
        return x

    try:
        return copy(data)
    except RecursionError as e:
        raise ConfigError("config: nested too deeply (or contains itself)") from e


def non_finite_numbers(data: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted key, value) of every NaN or infinite float in nested config data (dicts, lists,
    dataclasses), in order; list items are named `key[i]`."""
    import math

    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    if isinstance(data, float):
        return [] if math.isfinite(data) else [(prefix, data)]
    if isinstance(data, Mapping):
        return [bad for k, v in data.items() for bad in non_finite_numbers(v, join_key(prefix, str(k)))]
    if isinstance(data, (list, tuple)):
        return [bad for i, v in enumerate(data) for bad in non_finite_numbers(v, f"{prefix}[{i}]")]
    return []
