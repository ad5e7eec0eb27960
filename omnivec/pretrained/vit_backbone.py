"""The shared backbone from a pretrained ViT (Meta-Transformer's route to a useful multimodal model):
`backbone.pretrained: "timm:NAME"` (timm ViTs: supervised, `*.mae`, `*dinov2*`, `*_clip_*`) or
`"hf:ID_OR_DIR"` (transformers ViT, ViTMAE, DINOv2). The checkpoint's blocks, final norm and prefix
tokens (CLS, registers; with their positions) become `SharedBackbone`'s, its patch embedding and
grid positions (interpolated to the configured size) the image modality's; the other modalities
keep their own tokenizers, projected to the backbone's width.

Every checkpoint is read into timm's ViT names first (`blocks.0.attn.qkv.weight`, ...), so one
mapping fills the backbone. The image tokens of such a model equal the library's own patch tokens
(`forward_features` without the prefix): the CLS token attends in every block and is dropped after
the final norm (tests/test_vit_backbone.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from ..config import BackboneConfig, ModalityConfig
from ..errors import ConfigError
from ..registry import BACKBONES
from .hf import hf_from_pretrained
from .hf_names import hf_to_timm, timm_name
from .loading import LoadReport, read_weights

IMAGE = "image"  # the modality a ViT's patch embedding feeds
MAE_DECODER = {"num_heads": 16, "norm_eps": 1e-6}  # every MAE repo decoder's; its checkpoints do not store them


@dataclass
class ViTCheckpoint:
    """A ViT checkpoint in timm's names: `arch` (the backbone settings it decides, see
    config.BACKBONE_KEYS), its patch embedding, and (when read with weights) the tensors."""

    arch: dict[str, Any]
    patch_size: int
    in_chans: int
    grid: tuple[int, int]  # patches of the checkpoint's input
    pos_prefix: int  # prefix tokens that have a slot in pos_embed
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    decoder: dict[str, Any] = field(default_factory=lambda: dict(MAE_DECODER))  # an MAE decoder's unstored settings
    missing: list[str] = field(default_factory=list)  # the architecture's tensors the checkpoint lacks
    mismatched: list[str] = field(default_factory=list)  # "name [checkpoint shape] -> [model shape]"

    def check_modalities(self, modalities: dict[str, ModalityConfig], source: str) -> None:
        """The image modality must cut the checkpoint's patches and not bring a ViT of its own."""
        image = modalities.get(IMAGE)
        if image is None:
            return
        if image.pretrained:
            raise ConfigError(
                f"modalities.{IMAGE}.pretrained: expected '' with backbone.pretrained set (the image "
                f"modality then uses {source}'s patch embedding; no second ViT), got {image.pretrained!r}"
            )
        for key, value in (("patch_size", self.patch_size), ("in_chans", self.in_chans)):
            if getattr(image, key) != value:
                raise ConfigError(
                    f"modalities.{IMAGE}.{key}: expected {value} (as in {source}), got {getattr(image, key)}"
                )
        if image.width not in (None, self.arch["dim"]):
            raise ConfigError(
                f"modalities.{IMAGE}.width: expected the backbone's width {self.arch['dim']} (or none), "
                f"got {image.width}"
            )


def source_name(cfg: BackboneConfig) -> str:
    return cfg.pretrained.partition(":")[2]


@BACKBONES.register("timm")
def read_timm_vit(cfg: BackboneConfig, with_weights: bool = True) -> ViTCheckpoint:
    """A timm VisionTransformer: its architecture (built offline, `library_config` as create_model
    kwargs) and, `with_weights`, the hub's or `checkpoint:`'s tensors."""
    import timm
    from timm.layers import LayerScale, QuickGELU
    from timm.models.vision_transformer import VisionTransformer

    name = source_name(cfg)
    if not timm.is_model(name):
        raise ConfigError(f"backbone.pretrained: {name!r} is not a timm model name (see timm.list_models())")
    download = with_weights and not cfg.checkpoint
    try:
        model = timm.create_model(name, pretrained=download, num_classes=0, **cfg.library_config)
    except (OSError, RuntimeError) as e:
        raise ConfigError(
            f"backbone.pretrained: cannot download the weights of {name!r} ({e}); set "
            "backbone.checkpoint to a local file"
        ) from e
    if not isinstance(model, VisionTransformer):
        raise ConfigError(
            f"backbone.pretrained: expected a timm VisionTransformer, {name!r} is a {type(model).__name__}"
        )
    block = model.blocks[0]
    arch = {
        "dim": model.embed_dim,
        "depth": len(model.blocks),
        "num_heads": block.attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / model.embed_dim,
        "qkv_bias": block.attn.qkv.bias is not None,
        "init_values": 1e-5 if isinstance(block.ls1, LayerScale) else None,
        "norm_eps": block.norm1.eps,
        "pre_norm": not isinstance(model.norm_pre, nn.Identity),
        "act": "quick_gelu" if isinstance(block.mlp.act, QuickGELU) else "gelu",
        "num_prefix_tokens": model.num_prefix_tokens,
    }
    state: dict[str, torch.Tensor] = {}
    if with_weights:
        state = read_weights(cfg.checkpoint) if cfg.checkpoint else model.state_dict()
    return ViTCheckpoint(
        arch,
        model.patch_embed.patch_size[0],
        model.patch_embed.proj.in_channels,
        tuple(model.patch_embed.grid_size),
        0 if model.no_embed_class else model.num_prefix_tokens,
        state,
        missing=sorted(set(model.state_dict()) - set(state)) if with_weights else [],
    )


HF_TYPES = ("vit", "vit_mae", "dinov2")


@BACKBONES.register("hf")
def read_hf_vit(cfg: BackboneConfig, with_weights: bool = True) -> ViTCheckpoint:
    """A transformers ViT, ViTMAE (its encoder; `ViTMAEForPreTraining` checkpoints too) or DINOv2:
    its config (kept in `library_config` for offline reloads) and, `with_weights`, its tensors."""
    from transformers import CONFIG_MAPPING, AutoConfig

    source = source_name(cfg)
    try:
        if cfg.library_config:
            config = CONFIG_MAPPING[cfg.library_config["model_type"]].from_dict(dict(cfg.library_config))
        else:
            config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"backbone.pretrained: cannot read {source!r} ({e})") from e
    if config.model_type not in HF_TYPES:
        raise ConfigError(
            f"backbone.pretrained: expected a checkpoint of type {' or '.join(HF_TYPES)}, "
            f"{source} is {config.model_type!r}"
        )
    if config.hidden_act != "gelu":
        raise ConfigError(f"backbone.pretrained: {source} uses activation {config.hidden_act!r}; the backbone has gelu")
    cfg.library_config = config.to_dict()
    dinov2 = config.model_type == "dinov2"
    arch = {
        "dim": config.hidden_size,
        "depth": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "mlp_ratio": float(config.mlp_ratio) if dinov2 else config.intermediate_size / config.hidden_size,
        "qkv_bias": config.qkv_bias,
        "init_values": float(config.layerscale_value) if dinov2 else None,
        "norm_eps": config.layer_norm_eps,
        "pre_norm": False,
        "act": "gelu",
        "num_prefix_tokens": 1,
    }
    decoder = (
        {"num_heads": config.decoder_num_attention_heads, "norm_eps": config.layer_norm_eps}
        if config.model_type == "vit_mae"
        else {}
    )
    grid = config.image_size // config.patch_size
    vit = ViTCheckpoint(arch, config.patch_size, config.num_channels, (grid, grid), 1, decoder=decoder)
    if with_weights:
        vit.state, vit.missing, vit.mismatched = hf_state(source, with_decoder=bool(decoder))
    return vit


def hf_state(source: str, with_decoder: bool) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """A transformers checkpoint's tensors in timm's names, without those it lacks (listed, in timm's
    names) or holds in another shape than its config's (listed: name and both shapes); `with_decoder`
    (ViTMAE) reads it as `ViTMAEForPreTraining` and keeps the decoder when the checkpoint has one
    (an encoder-only checkpoint loads no decoder)."""
    from transformers import AutoModel, ViTMAEForPreTraining

    model, info = hf_from_pretrained(ViTMAEForPreTraining if with_decoder else AutoModel, source, "backbone.pretrained")
    absent = any(k.startswith("decoder.") for k in info["missing_keys"])  # initialised here, not loaded
    state = {k: v for k, v in model.state_dict().items() if not (absent and k.startswith("decoder."))}
    missing = {timm_name(k)[0] for k in info["missing_keys"] if k in state}
    mismatched = {timm_name(k)[0]: f"{k} {list(a)} -> {list(b)}" for k, a, b in info["mismatched_keys"]}
    state = {k: v for k, v in hf_to_timm(state).items() if k not in missing and k not in mismatched}
    return state, sorted(missing), sorted(mismatched.values())


@dataclass
class MAEDecoderCheckpoint:
    """A checkpoint's MAE decoder as omnivec's `MaskedDecoder`: its settings (a `DecoderConfig`'s
    dim, depth, num_heads, mlp_ratio, norm_eps), its tensors in `MaskedDecoder`'s names, the report."""

    settings: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    report: LoadReport


def mae_decoder(vit: ViTCheckpoint, grid: tuple[int, int]) -> MAEDecoderCheckpoint | None:
    """The checkpoint's MAE decoder (the MAE repo's names; `hf_to_timm` brings ViTMAEForPreTraining's
    there) as omnivec's `MaskedDecoder`: its settings (dim, depth, num_heads, mlp_ratio, norm_eps) and
    tensors, positions interpolated to `grid`, predictions reordered from MAE's (p, p, C) pixels per
    patch to omnivec's (C, p, p), and the load report. None when the checkpoint has no decoder."""
    src = vit.state
    if "decoder_embed.weight" not in src:
        return None
    dim = src["decoder_embed.weight"].shape[0]
    depth = 1 + max(int(m[1]) for k in src if (m := re.match(r"decoder_blocks\.(\d+)\.", k)))
    settings = {
        "dim": dim,
        "depth": depth,
        "mlp_ratio": src["decoder_blocks.0.mlp.fc1.weight"].shape[0] / dim,
        **vit.decoder,
    }
    n, p, c = vit.pos_prefix, vit.patch_size, vit.in_chans
    pos = src["decoder_pos_embed"][:, n:]  # [1, h*w, d]
    report = LoadReport("MAE decoder")
    if tuple(grid) != vit.grid:
        pos = resample_abs_pos_embed(pos, list(grid), list(vit.grid), num_prefix_tokens=0)
        report.resized.append(f"pos_embed {list(src['decoder_pos_embed'].shape)} -> {list(pos.shape)}")
    tensors = {
        "embed.weight": src["decoder_embed.weight"],
        "embed.bias": src["decoder_embed.bias"],
        "mask_token": src["mask_token"],
        "prefix_pos": src["decoder_pos_embed"][:, :n],
        "pos_embed": pos,
        "norm.weight": src["decoder_norm.weight"],
        "norm.bias": src["decoder_norm.bias"],
        **{k.removeprefix("decoder_"): v for k, v in src.items() if k.startswith("decoder_blocks.")},
        **{
            f"pred.{k}": src[f"decoder_pred.{k}"].unflatten(0, (p, p, c)).movedim(2, 0).flatten(0, 2)
            for k in ("weight", "bias")
        },
    }  # rows (p, p, C) -> (C, p, p)
    report.loaded = [k for k in tensors if not (k == "pos_embed" and report.resized)]
    return MAEDecoderCheckpoint(settings, tensors, report)


def load_mae_decoder(model: nn.Module) -> MAEDecoderCheckpoint | None:
    """The MAE decoder of the checkpoint `model`'s backbone came from (`mae_decoder`), fitted to its
    image modality; None when the checkpoint has none or the model has no image modality."""
    if IMAGE not in model.encoders:
        return None
    cfg = model.config.backbone
    vit = BACKBONES.get(cfg.pretrained.partition(":")[0])(cfg, with_weights=True)
    image = model.encoders[IMAGE].cfg
    return mae_decoder(vit, (image.image_size // image.patch_size,) * 2)


def backbone_tensors(vit: ViTCheckpoint, grid: tuple[int, int] | None) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The checkpoint's tensors under omnivec's names (`backbone.*`, and `encoders.image.*` for an
    image `grid`, positions interpolated to it) and the checkpoint names they came from."""
    src, out, used = vit.state, {}, set()
    for key, value in src.items():
        if key.startswith(("blocks.", "norm.", "norm_pre.")):
            out[f"backbone.{key}"] = value
            used.add(key)
    prefix_tokens = [src[k] for k in ("cls_token", "reg_token") if k in src]
    used.update(k for k in ("cls_token", "reg_token") if k in src)
    if prefix_tokens:
        prefix = torch.cat(prefix_tokens, dim=1)  # [1, n, D]
        positions = vit.pos_prefix and "pos_embed" in src  # (a checkpoint lacking them loads only with strict: false)
        out["backbone.prefix"] = prefix + src["pos_embed"][:, : vit.pos_prefix] if positions else prefix
    if grid is not None:
        for key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
            if key in src:
                out[f"encoders.{IMAGE}.{key}"] = src[key]
                used.add(key)
        pos = src["pos_embed"][:, vit.pos_prefix :] if "pos_embed" in src else None  # [1, h*w, D]
        if pos is not None:
            out[f"encoders.{IMAGE}.pos_embed"] = (
                pos
                if tuple(grid) == vit.grid
                else resample_abs_pos_embed(pos, list(grid), list(vit.grid), num_prefix_tokens=0)
            )
    used.add("pos_embed")
    return out, used


def load_vit_backbone(model: nn.Module) -> LoadReport:
    """Copy the backbone checkpoint of `model.config.backbone` into the model (backbone, and the image
    modality's patch embedding and positions) and report what was loaded, resized, new, unused, and
    what the checkpoint lacks or cannot fit (refused unless `backbone.strict: false`)."""
    cfg = cast(BackboneConfig, model.config.backbone)  # `model` is an OmniVecModel (model.py imports this module)
    vit = BACKBONES.get(cfg.pretrained.partition(":")[0])(cfg, with_weights=True)
    image = model.encoders[IMAGE] if IMAGE in model.encoders else None
    grid = None if image is None else (image.cfg.image_size // image.cfg.patch_size,) * 2  # (h, w) patches
    tensors, used = backbone_tensors(vit, grid)
    report = LoadReport(cfg.pretrained)
    taken = ("blocks.", "norm.", "norm_pre.", "cls_token", "reg_token", "pos_embed") + (
        ("patch_embed.",) if image else ()
    )
    report.missing, report.mismatched = [k for k in vit.missing if k.startswith(taken)], list(vit.mismatched)
    target = model.state_dict()
    for key, value in list(tensors.items()):
        if key not in target:
            raise ConfigError(f"{cfg.pretrained}: tensor {key!r} has no place in the model (architecture mismatch)")
        if value.shape != target[key].shape:
            report.mismatched.append(f"{key} {list(value.shape)} -> {list(target[key].shape)}")
            del tensors[key]
            continue
        if key.endswith("pos_embed") and grid != vit.grid:
            report.resized.append(f"{key} {list(vit.state['pos_embed'].shape)} -> {list(value.shape)}")
        else:
            report.loaded.append(key)
    report.check_complete(cfg.strict, "backbone")
    model.load_state_dict(tensors, strict=False)
    fed = [
        k
        for k in target
        if k.startswith("backbone.")
        or (image is not None and k.startswith((f"encoders.{IMAGE}.patch_embed.", f"encoders.{IMAGE}.pos_embed")))
    ]
    report.new = sorted(k for k in fed if k not in tensors)
    if image is not None and "patch_embed.proj.bias" not in vit.state:  # e.g. CLIP: no bias, so start at zero
        nn.init.zeros_(image.patch_embed.proj.bias)
    report.unused = sorted(set(vit.state) - used)
    return report
