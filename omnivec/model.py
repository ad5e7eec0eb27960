"""`OmniVecModel`: per-modality encoders -> one shared backbone -> task heads / embeddings. Its
saved folder format is omnivec/saved_model.py; its registered variants omnivec/variants.py."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import SharedBackbone, masked_mean
from .config import AugmentConfig, HeadConfig, OmniVecConfig
from .errors import InputError, ModelError
from .pooling import POOLS, AttentivePooler, Layers, check_pool, parse_layers
from .pretrained.loading import LibraryEncoder, build_encoder
from .pretrained.vit_backbone import load_vit_backbone
from .registry import HEADS, MODALITIES
from .saved_model import load_model_folder, save_model_folder

logger = logging.getLogger(__name__)


@dataclass
class OmniVecOutput:
    """What `OmniVecModel.forward` returns, keyed by modality (logits keyed by head)."""

    hidden_states: dict[str, torch.Tensor] = field(default_factory=dict)  # [B, L, D]
    padding_mask: dict[str, torch.Tensor | None] = field(default_factory=dict)  # [B, L] bool | None
    pooled: dict[str, torch.Tensor] = field(default_factory=dict)  # [B, D]
    logits: dict[str, torch.Tensor] = field(default_factory=dict)  # [B, num_classes]


def init_weights(module: nn.Module) -> None:
    """timm ViT init of a Linear (truncated normal, std 0.02; zero bias) or a LayerNorm (1, 0)."""
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
            module.apply(init_weights)
        self.load_reports = {}
        if load_library_weights and config.backbone.pretrained:  # the backbone (and image patches) from a ViT
            self.load_reports["backbone"] = load_vit_backbone(self)
        if load_library_weights:
            for modality, encoder in self.encoders.items():
                if isinstance(encoder, LibraryEncoder):
                    self.load_reports[modality] = encoder.load_pretrained()
        for part, report in self.load_reports.items():  # a warning when weights were missing (strict: false)
            logger.log(
                logging.WARNING if report.missing or report.mismatched else logging.INFO,
                "%s: %s",
                part,
                report.summary(),
            )

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
        """Recompute the activations of the backbone's blocks and of every modality encoder's in the
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
        data = self.config.to_dict()
        data["heads"][name] = dataclasses.asdict(cfg)
        self.config.heads = OmniVecConfig.from_dict(data).heads  # validated, e.g. that its modality exists
        head = build_head(self.config.heads[name], self.config)
        head.apply(init_weights)
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
        return torch.stack([self.backbone.norm(b) for b in blocks]).mean(0), out.padding_mask

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
                largest = max((float(v.abs().max()) for v in float_tensors(x)), default=0.0)
                raise InputError(
                    f"{modality}: expected model-ready values such as its transform gives; the "
                    f"embedding overflowed (inputs up to {largest:.3g})"
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
        (the full tensors gathered from FSDP shards: `Checkpoints.save_model`)."""
        save_model_folder(self, directory, state_dict)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, revision: str | None = None) -> OmniVecModel:
        """Load a model saved by `save_pretrained` from a local directory or a Hugging Face hub id;
        `ModelError` names the folder or file that cannot be used, or the tensor holding NaN or Inf."""
        return load_model_folder(cls, name_or_path, revision)


def build_head(cfg: HeadConfig, config: OmniVecConfig) -> nn.Module:
    """The head of `cfg`, bound to the model (e.g. to its text modality's tokenizer)."""
    cls = HEADS.get(cfg.type)
    return cls(cls.bind(cfg, config), config.backbone.dim)


def float_tensors(x: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a model-ready batch (a tensor, or a dict such as padded clips)."""
    values = x.values() if isinstance(x, Mapping) else [x]
    return [v for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()]


def check_finite(modality: str, x: Any) -> None:
    """Inference inputs must hold no NaN or Inf (training inputs are checked per file by the dataset)."""
    for v in float_tensors(x):
        if torch.isfinite(v.sum()):
            continue  # a sum is finite only if every value is (one reduction instead of a mask)
        bad = (~torch.isfinite(v)).nonzero()
        if len(bad):  # (else the sum overflowed: large but finite values)
            raise InputError(
                f"{modality}: expected finite values, got {v[tuple(bad[0])].item()} at index {bad[0].tolist()}"
            )
