"""Masked self-supervised pretraining of the shared backbone on every modality (MAE family).

Each modality hides most of its tokens (its own `sample_mask`), the encoder and backbone see only
the kept ones, and a light per-modality decoder predicts the hidden tokens' targets (normalised
pixels / tubelets / spectrogram patches, point groups with a Chamfer loss, token ids), or, with the
`latent` objective, an EMA teacher's features of the whole input (omnivec/latent.py)."""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import ConfigError
from .evaluation import eval_batches, evaluating
from .latent import OBJECTIVES, LatentConfig
from .mae import DecoderConfig, MaskedPretrainer
from .model import OmniVecModel
from .parsing import join_key, require, require_positive
from .registry import MODALITIES, MODELS
from .run_dir import prepare_output_dir, recorded_checkpoint
from .saved_model import saved_config
from .trainer import TrainConfig, Trainer
from .variants import load_model

logger = logging.getLogger(__name__)


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
    # Training batches of file datasets hold samples of similar size (transformers' group_by_length): a text batch
    # is padded to its longest text, so one long text among 31 short ones makes the whole batch long.
    group_by_length: bool = False
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
            known = f"a registered modality ({', '.join(MODALITIES.names())})"
            require(modality in MODALITIES, join_key(prefix, f"data.{modality}"), known, modality)
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


def build_model_for(cfg: PretrainConfig, resumed: Path | None = None) -> OmniVecModel:
    """The model a config names (`init` folder, or a variant with overrides), checked against `data`.
    `resumed`: a checkpoint of this same run (`recorded_checkpoint`), whose saved model config is
    built instead (the checkpoint's state then replaces the weights), so that a run resumes after a
    later omnivec changed its variant's defaults."""
    saved = saved_config([resumed / "model"]) if resumed else None
    model = (
        OmniVecModel(saved, load_library_weights=False)
        if saved
        else load_model(cfg.init, cfg.model, cfg.model_overrides)
    )
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
    from .datasets.loaders import build_loaders, modality_tasks
    from .datasets.sampler import MultiModalLoader
    from .plots import plot_losses, plot_reconstructions

    started = time.perf_counter()
    resumed = recorded_checkpoint(cfg)  # read before prepare_output_dir rewrites the run's record
    data = modality_tasks(cfg.data, check_files=not cfg.skip_bad)  # found before overwrite=true removes a run
    prepare_output_dir(cfg, "pretrain")  # writable, and not another run's folder: checked before any work
    torch.manual_seed(cfg.seed)
    model = build_model_for(cfg, resumed)
    objectives = objectives_of(cfg)
    pretrainer = MaskedPretrainer(model, cfg.decoder, cfg.seed, cfg.pack, objectives=objectives, latent=cfg.latent)
    trainer = Trainer(cfg, pretrainer)
    if pretrainer.latent is not None and trainer.accelerator.distributed_type == "FSDP":
        raise ConfigError(
            "objective: latent is not supported under FSDP yet (the EMA teacher would be sharded with "
            "the student); use DDP, or objective: mae"
        )
    out = Path(cfg.output_dir)  # prepare_output_dir recorded the config there (run_config.json)
    accelerator = trainer.accelerator
    train = build_loaders(
        data, model, "train", cfg, train=True, rank=accelerator.process_index, world_size=accelerator.num_processes
    )
    val = build_loaders(data, model, "val", cfg, train=False)
    batches = MultiModalLoader(train, cfg.schedule, cfg.weights if cfg.schedule == "weighted" else None, cfg.seed)

    def evaluate() -> dict[str, float]:
        return evaluate_reconstruction(trainer.module, val, trainer.device, cfg.eval_batches)

    trainer.fit(batches, evaluate, loss_weights=cfg.weights if cfg.schedule == "all" else None)
    state = accelerator.get_state_dict(trainer.module)  # every process takes part; whole tensors on the main one
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
    del batches, train  # drop the last references to the loaders
    val.clear()  # (`evaluate` holds this dict)
    gc.collect()  # stop the DataLoader workers now, not in the forked workers of whatever runs next
    accelerator.wait_for_everyone()
    accelerator.end_training()
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
    n = len(summary["skipped_samples"])
    skipped = f", {n} bad sample{'s' if n > 1 else ''} skipped" if n else ""
    return (
        f"pretrained {summary['steps']} steps in {summary['seconds']:.0f}s{skipped}; loss first->last 20 steps: "
        + "; ".join(parts)
        + f". Model: {out / 'model'}"
    )
