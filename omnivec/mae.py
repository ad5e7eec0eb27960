"""Masked pretraining's model: an `OmniVecModel` plus one light `MaskedDecoder` per modality
(MAE). Each modality hides most of its tokens (its own `sample_mask`), the encoder and backbone see
only the kept ones, and the decoder predicts the hidden tokens' targets (normalised pixels /
tubelets / spectrogram patches, point groups with a Chamfer loss, token ids)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from timm.layers import trunc_normal_
from torch import nn

from .backbone import run_blocks, transformer_blocks
from .config import ModalityConfig
from .errors import ConfigError
from .latent import LatentConfig, LatentTargets
from .masking import Masking, decoder_masking, gather_tokens
from .modalities.base import ModalityEncoder, Tokens
from .model import OmniVecModel, init_weights
from .packing import packed_backbone
from .parsing import require_divisor, require_positive
from .pretrained.vit_backbone import IMAGE, load_mae_decoder

logger = logging.getLogger(__name__)
MIN_VISIBLE = 8  # fewer visible tokens per sample than this: masked pretraining has too little to go on


@dataclass
class DecoderConfig:
    """The light decoder of each modality (narrow and shallow: the MAE decoder can cost more than
    a small encoder)."""

    dim: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5
    from_backbone: bool = True  # the image decoder starts from the backbone checkpoint's MAE decoder, if it has one

    def validate(self, prefix: str) -> None:
        require_positive(self, prefix, "dim", "depth", "num_heads", "mlp_ratio", "norm_eps")
        require_divisor(self, prefix, "num_heads", "dim")


class MaskedDecoder(nn.Module):
    """Visible backbone tokens + a mask token at every hidden position -> a prediction per token.

    With `num_prefix` the backbone's prefix tokens (a pretrained ViT's CLS) lead the sequence with
    positions of their own, as in MAE's decoder, and are dropped before the prediction."""

    def __init__(
        self,
        cfg: DecoderConfig,
        in_dim: int,
        num_tokens: int,
        target_dim: int,
        position_dim: int = 0,
        num_prefix: int = 0,
    ):
        super().__init__()
        self.num_prefix = num_prefix
        self.embed = nn.Linear(in_dim, cfg.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.prefix_pos = nn.Parameter(torch.zeros(1, num_prefix, cfg.dim)) if num_prefix else None
        if position_dim:  # tokens placed by coordinates, e.g. point groups by their centres (Point-MAE)
            self.pos_mlp = nn.Sequential(nn.Linear(position_dim, 128), nn.GELU(), nn.Linear(128, cfg.dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, cfg.dim))
            trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = transformer_blocks(cfg.dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, norm_eps=cfg.norm_eps)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.pred = nn.Linear(cfg.dim, target_dim)
        trunc_normal_(self.mask_token, std=0.02)
        if num_prefix:
            trunc_normal_(self.prefix_pos, std=0.02)
        self.apply(init_weights)

    def forward(
        self,
        visible: torch.Tensor,
        masking: Masking,
        padding_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """visible: [B, n + K, D] backbone tokens: the n prefix tokens, then those at `masking.ids_keep`;
        padding_mask: [B, L] of the full sequence; positions: [B, L, c] token coordinates (point groups)
        -> predictions [N, P] for the N hidden tokens (`masking.mask`), the only ones any loss looks at, or with
        decoder masking for those at `masking.ids_decode` (`masking.decoded` order)."""
        n = self.num_prefix
        prefix, x = self.embed(visible).split([n, visible.shape[1] - n], dim=1)  # [B, n, d], [B, K, d]
        B, L = masking.mask.shape
        if masking.keep_valid is not None:
            x = torch.where(masking.keep_valid[..., None], x, self.mask_token.to(x.dtype))
        index = masking.ids_keep[..., None].expand(-1, -1, x.shape[-1])
        x = self.mask_token.to(x.dtype).expand(B, L, -1).scatter(1, index, x)  # [B, L, d]
        x = x + (self.pos_mlp(positions) if positions is not None else self.pos_embed[:, :L])
        if masking.ids_decode is not None:  # decoder masking: run the kept tokens and the hidden ones to decode
            x, padding_mask = decoder_tokens(x, masking, padding_mask)  # [B, K + J, d], [B, K + J]
        if n:
            x = torch.cat([prefix + self.prefix_pos, x], dim=1)  # [B, n + L, d]
            padding_mask = None if padding_mask is None else nn.functional.pad(padding_mask, (n, 0), value=True)
        x = run_blocks(self.blocks, x, padding_mask)[:, n:]  # [B, L, d] (or [B, K + J, d])
        if masking.ids_decode is not None:
            return self.pred(self.norm(masking.decoded(x[:, masking.ids_keep.shape[1] :])))  # [N, P]
        return self.pred(self.norm(masking.hidden(x)))  # [N, P]


def decoder_tokens(
    x: torch.Tensor, masking: Masking, padding_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [B, L, d] the decoder's full sequence -> the tokens at `ids_keep` then `ids_decode`
    [B, K + J, d], and which of them are real [B, K + J] (keys for attention)."""
    assert masking.ids_decode is not None  # (`decoder_masking` set it)
    ids = torch.cat([masking.ids_keep, masking.ids_decode], dim=1)  # [B, K + J]
    real = torch.ones_like(ids, dtype=torch.bool) if padding_mask is None else torch.gather(padding_mask, 1, ids)
    for valid, start in ((masking.keep_valid, 0), (masking.decode_valid, masking.ids_keep.shape[1])):
        if valid is not None:
            real[:, start : start + valid.shape[1]] &= valid
    return gather_tokens(x, ids), real


class MaskedPretrainer(nn.Module):
    """An `OmniVecModel` plus one `MaskedDecoder` per modality; `forward` returns the loss per modality.

    pack: one backbone pass over the kept tokens of every modality of a batch (omnivec/packing.py)
    instead of one per modality; the same losses. A model whose backbone was just read from a checkpoint
    with an MAE decoder (`decoder.from_backbone`) starts its image decoder from that one, at its size;
    `decoder_configs` records each modality's decoder settings (pass them to build the same shapes).

    objectives: {modality: "latent"} makes those modalities' decoders predict the targets of `latent`'s
    EMA teacher (`LatentTargets`, omnivec/latent.py) from `latent.num_masks` masks per sample; the
    others (default) predict their own reconstruction targets (MAE)."""

    def __init__(
        self,
        model: OmniVecModel,
        decoder: DecoderConfig,
        seed: int = 0,
        pack: bool = False,
        decoder_configs: Mapping[str, DecoderConfig] | None = None,
        objectives: Mapping[str, str] | None = None,
        latent: LatentConfig | None = None,
    ):
        super().__init__()
        if pack and model.config.backbone.drop_path > 0:
            raise ConfigError(
                "pack: needs backbone.drop_path = 0 (stochastic depth would drop a packed row, several samples at once)"
            )
        self.model, self.seed, self.pack = model, seed, pack
        dim, num_prefix = model.config.backbone.dim, model.backbone.num_prefix_tokens
        latent_modalities = [m for m, objective in (objectives or {}).items() if objective == "latent"]
        mae = None  # the backbone checkpoint's MAE decoder, when the backbone was just read from one
        if decoder_configs is None and decoder.from_backbone and "backbone" in model.load_reports:
            mae = None if IMAGE in latent_modalities else load_mae_decoder(model)  # (it predicts pixels)
        self.decoder_configs = dict(decoder_configs or {m: decoder for m in model.encoders})
        if mae is not None:
            self.decoder_configs[IMAGE] = dataclasses.replace(decoder, **mae.settings)
        self.decoders = nn.ModuleDict(
            {
                m: MaskedDecoder(
                    self.decoder_configs[m],
                    dim,
                    enc.num_tokens,
                    dim if m in latent_modalities else enc.target_dim,
                    enc.decoder_position_dim,
                    num_prefix,
                )
                for m, enc in cast(Mapping[str, ModalityEncoder], model.encoders).items()
            }
        )
        self.latent = LatentTargets(model, latent_modalities, latent or LatentConfig()) if latent_modalities else None
        if mae is not None:
            self.decoders[IMAGE].load_state_dict(mae.tensors)
            mae.report.source = f"{model.config.backbone.pretrained}'s MAE decoder ({mae.settings})"
            logger.info("image decoder: %s", mae.report.summary())
        for m, enc in model.encoders.items():
            visible = enc.visible_tokens() if enc.masked_pretraining else MIN_VISIBLE
            if visible < MIN_VISIBLE:
                logger.warning(
                    "%s: masked pretraining leaves %d visible tokens per full-length sample (%d tokens, mask_ratio %s; "
                    "fewer for shorter samples): too few to reconstruct from; use smaller patches, longer inputs or "
                    "a lower modalities.%s.mask_ratio",
                    m,
                    visible,
                    enc.num_tokens,
                    enc.cfg.mask_ratio,
                    m,
                )

    def is_latent(self, modality: str) -> bool:
        return self.latent is not None and modality in self.latent.modalities

    def after_step(self, step: int) -> None:
        """After each optimizer step: update the EMA teacher (latent objective)."""
        if self.latent is not None:
            self.latent.update(self.model, step)

    def monitor(
        self, reduce: Callable[[torch.Tensor], torch.Tensor], clear: bool = True
    ) -> tuple[dict[str, float], str | None]:
        """For the `Trainer`'s logs: the latent targets' spread, and a collapse (`LatentTargets.monitor`)."""
        return self.latent.monitor(reduce, clear) if self.latent is not None else ({}, None)

    def mask_generator(self, device: torch.device, step: int) -> torch.Generator:
        """Masks are a function of (seed, step, process): a resumed run hides the same tokens."""
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return torch.Generator(device).manual_seed((self.seed * 1_000_003 + step) * 1009 + rank)

    def reconstruct(
        self, modality: str, x: Any, generator: torch.Generator | None = None, masking: Masking | None = None
    ) -> dict[str, Any]:
        """Mask (or take `masking`), encode the kept tokens, decode all -> loss, prediction, target,
        mask (and positions)."""
        masking, out = self.encode(modality, x, generator, masking)
        hidden = self.model.backbone(out.tokens, modality, out.padding_mask, keep_prefix=True)  # [B, n + K, D]
        return self.decode(modality, x, masking, out, hidden)

    def encode(
        self, modality: str, x: Any, generator: torch.Generator | None = None, masking: Masking | None = None
    ) -> tuple[Masking, Tokens]:
        """Sample the mask (unless given) and encode the kept tokens -> the masking and the encoder's
        `Tokens` (tokens [B, K, D] for the backbone, target and positions [B, L, ...]). A latent
        modality's target is the teacher's, from one pass over `x`, and its B samples become
        B * num_masks, each copy with its own mask."""
        enc = self.model.encoders[modality]
        target = None
        if self.is_latent(modality):
            target, x = self.latent.repeat(self.latent.targets(modality, x)), self.latent.repeat(x)  # [B * M, L, D]
        masking = enc.sample_mask(x, generator) if masking is None else masking
        ratio = cast(ModalityConfig, enc.cfg).decoder_mask_ratio
        if self.training and ratio and masking.ids_decode is None:  # (validation decodes every hidden token)
            masking = decoder_masking(masking, ratio, generator)
        out = enc(x, masking.ids_keep, masking.keep_valid, with_target=True)
        return masking, out if target is None else dataclasses.replace(out, target=target)

    def decode(self, modality: str, x: Any, masking: Masking, out: Tokens, hidden: torch.Tensor) -> dict[str, Any]:
        """Backbone tokens [B, n + K, D] (prefix first) -> the `reconstruct` result (loss on the hidden
        tokens; `hidden_target` [N, P] their targets)."""
        enc, latent = self.model.encoders[modality], self.is_latent(modality)
        padding_mask = self.latent.repeat(enc.padding_mask(x)) if latent else enc.padding_mask(x)  # [B, L]
        pred = self.decoders[modality](hidden, masking, padding_mask, out.positions)  # [N, P]
        assert out.target is not None  # `encode` asks the encoder for it
        target = masking.loss_tokens(out.target)  # [N, P]
        loss = self.latent.loss(pred, target) if latent else enc.reconstruction_loss(pred, target)
        return {
            "loss": loss,
            "pred": pred,
            "target": out.target,
            "mask": masking.loss_mask,
            "positions": out.positions,
            "hidden_target": target,
        }

    def forward(
        self, batch: Mapping[str, Any], step: int = 0, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """{modality: {"input": batch, ...}} -> {modality: reconstruction loss on its hidden tokens};
        the masks are the step's (`mask_generator`) unless `generator` is given. In training, the
        latent modalities' target and prediction spread is recorded (`monitor`)."""
        if generator is None:
            generator = self.mask_generator(next(self.parameters()).device, step)
        if not self.pack:
            results = {m: self.reconstruct(m, b["input"], generator) for m, b in batch.items()}
        else:
            encoded = {m: self.encode(m, b["input"], generator) for m, b in batch.items()}
            hidden = packed_backbone(
                self.model.backbone,
                {m: out.tokens for m, (_, out) in encoded.items()},
                {m: out.padding_mask for m, (_, out) in encoded.items()},
                keep_prefix=True,
            )  # {m: [B, n + K, D]}
            results = {
                m: self.decode(m, batch[m]["input"], masking, out, hidden[m]) for m, (masking, out) in encoded.items()
            }
        if self.training:
            for m in filter(self.is_latent, results):
                self.latent.record(step + 1, m, results[m]["pred"], results[m]["hidden_target"])
        return {m: r["loss"] for m, r in results.items()}
