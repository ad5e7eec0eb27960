"""Masked self-supervised pretraining of the shared backbone on every modality (MAE family).

Each modality hides most of its tokens (its own `sample_mask`), the encoder and backbone see only
the kept ones, and a light per-modality decoder predicts the hidden tokens' targets (normalised
pixels / tubelets / spectrogram patches, point groups with a Chamfer loss, token ids), or, with the
`latent` objective, an EMA teacher's features of the whole input (omnivec/latent.py)."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.layers import trunc_normal_
from torch import nn
from tqdm.auto import tqdm

from .backbone import run_blocks, transformer_blocks
from .config import join_key, require, require_positive
from .errors import ConfigError
from .evaluation import eval_batches, evaluating
from .latent import OBJECTIVES, LatentConfig, LatentTargets
from .masking import Masking
from .modalities.base import Tokens
from .model import OmniVecModel, _init_weights, load_model
from .packing import packed_backbone
from .registry import MODELS
from .training import TrainConfig, Trainer, prepare_output_dir

logger = logging.getLogger(__name__)


@dataclass
class DecoderConfig:
    """The light decoder of each modality (narrow and shallow: the MAE decoder can cost more than
    a small encoder)."""

    dim: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5
    from_trunk: bool = True  # the image decoder starts from the trunk checkpoint's MAE decoder, if it has one

    def validate(self, prefix: str) -> None:
        require_positive(self, prefix, "dim", "depth", "num_heads", "mlp_ratio", "norm_eps")
        require(
            self.dim % self.num_heads == 0,
            join_key(prefix, "num_heads"),
            f"a divisor of dim={self.dim}",
            self.num_heads,
        )


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
        self.apply(_init_weights)

    def forward(
        self,
        visible: torch.Tensor,
        masking: Masking,
        padding_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """visible: [B, n + K, D] backbone tokens: the n prefix tokens, then those at `masking.ids_keep`;
        padding_mask: [B, L] of the full sequence; positions: [B, L, c] token coordinates (point groups)
        -> predictions [N, P] for the N hidden tokens (`masking.mask`), the only ones any loss looks at."""
        n = self.num_prefix
        prefix, x = self.embed(visible).split([n, visible.shape[1] - n], dim=1)  # [B, n, d], [B, K, d]
        B, L = masking.mask.shape
        if masking.keep_valid is not None:
            x = torch.where(masking.keep_valid[..., None], x, self.mask_token.to(x.dtype))
        index = masking.ids_keep[..., None].expand(-1, -1, x.shape[-1])
        x = self.mask_token.to(x.dtype).expand(B, L, -1).scatter(1, index, x)  # [B, L, d]
        x = x + (self.pos_mlp(positions) if positions is not None else self.pos_embed[:, :L])
        if n:
            x = torch.cat([prefix + self.prefix_pos, x], dim=1)  # [B, n + L, d]
            padding_mask = None if padding_mask is None else nn.functional.pad(padding_mask, (n, 0), value=True)
        x = run_blocks(self.blocks, x, padding_mask)[:, n:]  # [B, L, d]
        return self.pred(self.norm(masking.hidden(x)))  # [N, P]


class MaskedPretrainer(nn.Module):
    """An `OmniVecModel` plus one `MaskedDecoder` per modality; `forward` returns the loss per modality.

    pack: one backbone pass over the kept tokens of every modality of a batch (omnivec/packing.py)
    instead of one per modality; the same losses. A model whose trunk was just read from a checkpoint
    with an MAE decoder (`decoder.from_trunk`) starts its image decoder from that one, at its size;
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
        trunk = None
        if (
            decoder_configs is None
            and decoder.from_trunk
            and "backbone" in model.load_reports  # read just now
            and "image" not in latent_modalities
        ):  # its MAE decoder predicts pixels
            from .encoders.trunk import IMAGE, load_mae_decoder

            trunk = load_mae_decoder(model)
        self.decoder_configs = dict(decoder_configs or {m: decoder for m in model.encoders})
        if trunk is not None:
            self.decoder_configs[IMAGE] = dataclasses.replace(decoder, **trunk[0])
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
                for m, enc in model.encoders.items()
            }
        )
        self.latent = LatentTargets(model, latent_modalities, latent or LatentConfig()) if latent_modalities else None
        if trunk is not None:
            self.decoders[IMAGE].load_state_dict(trunk[1])
            trunk[2].source = f"{model.config.backbone.pretrained}'s MAE decoder ({trunk[0]})"
            logger.info("image decoder: %s", trunk[2].summary())

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
        out = enc(x, masking.ids_keep, masking.keep_valid, with_target=True)
        return masking, out if target is None else dataclasses.replace(out, target=target)

    def decode(self, modality: str, x: Any, masking: Masking, out: Tokens, hidden: torch.Tensor) -> dict[str, Any]:
        """Backbone tokens [B, n + K, D] (prefix first) -> the `reconstruct` result (loss on the hidden
        tokens; `hidden_target` [N, P] their targets)."""
        enc, latent = self.model.encoders[modality], self.is_latent(modality)
        padding_mask = self.latent.repeat(enc.padding_mask(x)) if latent else enc.padding_mask(x)  # [B, L]
        pred = self.decoders[modality](hidden, masking, padding_mask, out.positions)  # [N, P]
        target = masking.hidden(out.target)  # [N, P]
        loss = self.latent.loss(pred, target) if latent else enc.reconstruction_loss(pred, target)
        return {
            "loss": loss,
            "pred": pred,
            "target": out.target,
            "mask": masking.mask,
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


@dataclass
class PretrainConfig(TrainConfig):
    """`omnivec pretrain CONFIG key=value ...`: what to build, what data, how to mix, how to train."""

    model: str = "omnivec_tiny"  # a registered variant
    model_overrides: dict = field(default_factory=dict)  # merged into the variant's config
    init: str | None = None  # start from a saved model folder (save_pretrained) instead of random weights
    data: dict[str, list[str]] = field(default_factory=dict)  # modality -> dataset paths (train split used)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    schedule: str = "all"  # all | round_robin | weighted (see MultiModalLoader)
    weights: dict[str, float] = field(default_factory=dict)  # loss weights ("all") or sampling weights
    eval_batches: int = 10  # validation batches per modality
    plot_samples: int = 3  # validation samples per modality in reconstructions.png
    pack: bool = False  # one backbone pass over every modality's kept tokens (omnivec/packing.py), same losses
    # What the decoders predict at the hidden tokens: mae (each modality's own target: normalised pixels, point
    # groups, token ids) or latent (an EMA teacher's features of the whole input, data2vec 2.0 / V-JEPA: `latent`).
    objective: str = "mae"
    objectives: dict[str, str] = field(default_factory=dict)  # per-modality override, e.g. {audio: latent}
    latent: LatentConfig = field(default_factory=LatentConfig)  # the teacher, its targets (omnivec/latent.py)

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        require(self.model in MODELS, join_key(prefix, "model"), f"a registered variant {MODELS.names()}", self.model)
        require(bool(self.data), join_key(prefix, "data"), "at least one modality: dataset path", self.data)
        for modality, paths in self.data.items():
            require(bool(paths), join_key(prefix, f"data.{modality}"), "at least one dataset path", paths)
        require(
            self.schedule in ("all", "round_robin", "weighted"),
            join_key(prefix, "schedule"),
            "all, round_robin or weighted",
            self.schedule,
        )
        require_positive(self, prefix, "eval_batches")
        require(
            not self.weights or self.schedule != "round_robin",
            join_key(prefix, "weights"),
            "no weights with schedule=round_robin (it ignores them; use all or weighted)",
            self.weights,
        )
        for modality, weight in self.weights.items():
            key = join_key(prefix, f"weights.{modality}")
            require(
                modality in self.data, key, f"a weight for one of the modalities in data {sorted(self.data)}", modality
            )
            require(weight >= 0, key, "a number >= 0 (the losses of 'all', or sampling odds of 'weighted')", weight)
        require(
            sum(self.weights.get(m, 1.0) for m in self.data) > 0,
            join_key(prefix, "weights"),
            "a positive weight for at least one modality in data",
            self.weights,
        )
        require(
            self.objective in OBJECTIVES, join_key(prefix, "objective"), f"one of {list(OBJECTIVES)}", self.objective
        )
        for modality, objective in self.objectives.items():
            key = join_key(prefix, f"objectives.{modality}")
            require(modality in self.data, key, f"one of the modalities in data {sorted(self.data)}", modality)
            require(objective in OBJECTIVES, key, f"one of {list(OBJECTIVES)}", objective)
        for modality, augment in self.augment.items():  # (none by default: masked pretraining's own recipe)
            key = join_key(prefix, f"augment.{modality}")
            require(modality in self.data, key, f"one of the modalities in data {sorted(self.data)}", modality)
            require(
                not augment.batch_mix(),
                key,
                "no label mixing in pretraining (mixup: 0, cutmix: 0)",
                augment.batch_mix(),
            )


def objectives_of(cfg: PretrainConfig) -> dict[str, str]:
    """{modality in data: its objective} (`objectives`, else `objective`)."""
    return {m: cfg.objectives.get(m, cfg.objective) for m in cfg.data}


def build_model_for(cfg: PretrainConfig) -> OmniVecModel:
    """The model a config names (`init` folder, or a variant with overrides), checked against `data`."""
    model = load_model(cfg.init, cfg.model, cfg.model_overrides)
    for modality in cfg.data:
        if modality not in model.encoders:
            raise ConfigError(f"data.{modality}: the model has no {modality!r} encoder; it has {model.modalities}")
        if not model.encoders[modality].masked_pretraining:
            raise ConfigError(
                f"data.{modality}: the {modality} encoder ({model.config.modalities[modality].pretrained}) "
                "cannot hide tokens for masked pretraining; pretrain the other modalities and "
                "fine-tune this one, or use a ViT"
            )
    return model


def evaluate_reconstruction(
    pretrainer: nn.Module, loaders: Mapping[str, Any], device: torch.device, max_batches: int
) -> dict[str, float]:
    """Mean reconstruction loss per modality on fixed validation batches with fixed masks.
    `pretrainer` is a `MaskedPretrainer`, or one prepared by accelerate: only its forward gathers
    the weights FSDP shards."""
    results = {}
    with evaluating(pretrainer):
        for modality, loader in loaders.items():
            generator = torch.Generator(device).manual_seed(12345)
            losses = [
                pretrainer({modality: {"input": x}}, generator=generator)[modality].item()
                for x, _ in eval_batches(loader, device, max_batches)
            ]
            results[modality] = sum(losses) / max(len(losses), 1)
    return results


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run masked pretraining; writes the model, checkpoints, metrics, plots and a summary to
    `cfg.output_dir` and returns the summary."""
    from .datasets.loaders import build_loaders
    from .datasets.sampler import MultiModalLoader
    from .plots import plot_losses, plot_reconstructions

    started = time.perf_counter()
    prepare_output_dir(cfg, "pretrain")  # writable, and not another run's folder: checked before any work
    torch.manual_seed(cfg.seed)
    model = build_model_for(cfg)
    objectives = objectives_of(cfg)
    pretrainer = MaskedPretrainer(model, cfg.decoder, cfg.seed, cfg.pack, objectives=objectives, latent=cfg.latent)
    trainer = Trainer(cfg, pretrainer)
    if pretrainer.latent is not None and trainer.accelerator.distributed_type == "FSDP":
        raise ConfigError(
            "objective: latent is not supported under FSDP yet (the EMA teacher would be sharded with "
            "the student); use DDP, or objective: mae"
        )
    out = Path(cfg.output_dir)  # prepare_output_dir recorded the config there (run_config.json)
    acc = trainer.accelerator
    train = build_loaders(
        cfg.data, model, "train", cfg, train=True, rank=acc.process_index, world_size=acc.num_processes
    )
    val = build_loaders(cfg.data, model, "val", cfg, train=False)
    batches = MultiModalLoader(train, cfg.schedule, cfg.weights if cfg.schedule == "weighted" else None, cfg.seed)

    def evaluate() -> dict[str, float]:
        return evaluate_reconstruction(trainer.module, val, trainer.device, cfg.eval_batches)

    trainer.fit(batches, evaluate, loss_weights=cfg.weights if cfg.schedule == "all" else None)
    state = acc.get_state_dict(trainer.module)  # every process takes part; whole tensors on the main one
    summary = {}
    if trainer.is_main:  # a copy with whole weights (under FSDP each process holds shards) to save and plot
        whole = MaskedPretrainer(
            OmniVecModel(model.config, load_library_weights=False),
            cfg.decoder,
            cfg.seed,
            cfg.pack,
            pretrainer.decoder_configs,
            objectives,
            cfg.latent,
        )
        whole.load_state_dict(state)
        whole.to(trainer.device)
        whole.model.save_pretrained(out / "model")
        summary = summarize(out / "metrics.jsonl", list(cfg.data), time.perf_counter() - started, trainer.skipped)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_losses(out / "metrics.jsonl", out / "loss.png")
        plot_reconstructions(
            whole,
            {m: v for m, v in val.items() if objectives[m] == "mae"},
            cfg.plot_samples,
            out / "reconstructions.png",
            trainer.device,
        )  # latent predictions are no picture
        tqdm.write(format_summary(summary, out))
    batches = train = val = None  # drop the last references to the loaders
    gc.collect()  # stop the DataLoader workers now, not in the forked workers of whatever runs next
    acc.wait_for_everyone()
    acc.end_training()
    return summary


def summarize(metrics_file: Path, modalities: list[str], seconds: float, skipped: list[str]) -> dict[str, Any]:
    """Per modality: mean train loss of the first and last 20 steps (the records logged in them),
    validation loss at the start and end."""
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    train = [r for r in records if any(k.startswith("loss/") for k in r)]
    val = [r for r in records if any(k.startswith("val/") for k in r)]
    out: dict[str, Any] = {
        "steps": train[-1]["step"] if train else 0,
        "seconds": round(seconds, 1),
        "skipped_samples": skipped,
        "modalities": {},
    }
    last_step = out["steps"]
    for m in modalities:
        logged = [(r["step"], r[f"loss/{m}"]) for r in train if f"loss/{m}" in r]  # each: mean since the last log
        first = [v for step, v in logged if step <= 20] or [v for _, v in logged[:1]]
        last = [v for step, v in logged if step > last_step - 20] or [v for _, v in logged[-1:]]
        vals = [r[f"val/{m}"] for r in val if f"val/{m}" in r]
        out["modalities"][m] = {
            "train_first20": sum(first) / max(len(first), 1),
            "train_last20": sum(last) / max(len(last), 1),
            "val_start": vals[0] if vals else None,
            "val_end": vals[-1] if vals else None,
        }
    return out


def format_summary(summary: dict[str, Any], out: Path) -> str:
    parts = [
        f"{m} {s['train_first20']:.3f}->{s['train_last20']:.3f} (val {s['val_start']:.3f}->{s['val_end']:.3f})"
        for m, s in summary["modalities"].items()
    ]
    skipped = f", {len(summary['skipped_samples'])} bad samples skipped" if summary["skipped_samples"] else ""
    return (
        f"pretrained {summary['steps']} steps in {summary['seconds']:.0f}s{skipped}; loss first->last 20 steps: "
        + "; ".join(parts)
        + f". Model: {out / 'model'}"
    )
