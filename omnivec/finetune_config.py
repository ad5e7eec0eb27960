"""`omnivec finetune CONFIG key=value ...`: the fine-tuning config (tasks, stages, loop settings
and the regularisers of MAE-style fine-tuning), validated before anything trains."""

from __future__ import annotations

from dataclasses import dataclass, field

from .parsing import join_key, require, require_positive
from .registry import HEADS, MODELS
from .trainer import TrainConfig

FREEZABLE = ("backbone", "encoders")


@dataclass
class TaskSpec:
    """One task: its head type, its datasets (the modality and classes come from the data) and
    any extra head settings (`dropout`, `num_beams`, ...)."""

    head: str = "classification"
    data: list[str] = field(default_factory=list)
    head_args: dict = field(default_factory=dict)
    batch_size: int | None = None  # None: the config's batch_size
    label_map: dict[str, str] = field(default_factory=dict)  # rename labels (e.g. zero: "0") to share a label space
    train_fraction: float = 1.0  # share of the train split used: stratified by class, drawn by the config's seed

    def validate(self, prefix: str) -> None:
        require(self.head in HEADS, join_key(prefix, "head"), f"one of {HEADS.names()}", self.head)
        require(
            0 < self.train_fraction <= 1, join_key(prefix, "train_fraction"), "a number in (0, 1]", self.train_fraction
        )
        require_positive(self, prefix, "batch_size")
        require(bool(self.data), join_key(prefix, "data"), "at least one dataset path", self.data)


@dataclass
class StageSpec:
    """One stage: the tasks trained together, for how long, how fast, and what stays frozen."""

    tasks: list[str] = field(default_factory=list)
    steps: int = 100
    lr: float | None = None  # None: the config's lr
    freeze: list[str] = field(default_factory=list)  # any of: backbone, encoders
    replay: list[str] = field(default_factory=list)  # earlier tasks rehearsed: one of them joins every step
    # Tasks of other modalities with one label space whose embeddings are pulled together by class
    # (a cross-modal supervised contrastive loss): retrieval across those modalities then works.
    align: list[str] = field(default_factory=list)
    align_weight: float = 1.0
    align_temperature: float = 0.1

    def validate(self, prefix: str) -> None:
        require(bool(self.tasks), join_key(prefix, "tasks"), "at least one task name", self.tasks)
        require_positive(self, prefix, "steps", "lr", "align_temperature")
        require(
            self.align_weight >= 0,
            join_key(prefix, "align_weight"),
            "a number >= 0 (0: measure only)",
            self.align_weight,
        )
        require(
            not self.align or (len(self.align) >= 2 and set(self.align) <= set(self.tasks)),
            join_key(prefix, "align"),
            "two or more of this stage's tasks",
            self.align,
        )
        bad = [f for f in self.freeze if f not in FREEZABLE]
        require(not bad, join_key(prefix, "freeze"), f"a list of {list(FREEZABLE)}", self.freeze)
        require(
            not set(self.replay) & set(self.tasks),
            join_key(prefix, "replay"),
            "earlier tasks, not this stage's own",
            self.replay,
        )


@dataclass
class FinetuneConfig(TrainConfig):
    """`omnivec finetune CONFIG key=value ...`.

    The regularisers of MAE-style fine-tuning: `layer_decay`, `drop_path`, `label_smoothing`, an
    EMA of the weights (`ema_decay`) and, per modality, `augment` (see `TrainConfig`; image mixup
    and cutmix apply to the tasks whose head takes soft targets). Every default is off, as before;
    MAE's ViT-B recipe is layer_decay 0.65-0.75, drop_path 0.1, label_smoothing 0.1, no EMA.
    """

    init: str | None = None  # a saved model folder (pretrained), or none: `model` from scratch
    model: str = "omnivec_tiny"
    model_overrides: dict = field(default_factory=dict)
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    stages: list[StageSpec] = field(default_factory=list)
    schedule: str = "all"  # how the tasks of one stage share steps: all | round_robin | weighted
    backbone_lr_scale: float = 1.0  # learning rate of the encoders and backbone relative to the heads'
    layer_decay: float = 1.0  # layer-wise lr decay (MAE fine-tuning: 0.65-0.75): each layer down gets this factor
    drop_path: float | None = None  # stochastic depth of the last backbone block (MAE ViT-B: 0.1); None: the model's
    label_smoothing: float = 0.0  # of single-label heads, unless their head_args say (MAE, DeiT: 0.1)
    # EMA of the weights (timm ModelEmaV3 with warmup: the decay grows as 1 - (1 + step)^(-2/3) up to this),
    # evaluated beside the raw weights ("ema:" metrics) and saved as model_ema; 0: off (DeiT: 0.99996).
    ema_decay: float = 0.0
    eval_split: str = "test"
    eval_batch_size: int = 64
    eval_max_batches: int = 0  # per task; 0: the whole split (a quick look evaluates a few batches)

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        require(self.model in MODELS, join_key(prefix, "model"), f"a registered variant {MODELS.names()}", self.model)
        require(bool(self.stages), join_key(prefix, "stages"), "at least one stage", self.stages)
        require_positive(self, prefix, "backbone_lr_scale", "eval_batch_size")
        require(
            0 < self.layer_decay <= 1, join_key(prefix, "layer_decay"), "a number in (0, 1] (1: off)", self.layer_decay
        )
        require(
            self.drop_path is None or 0 <= self.drop_path < 1,
            join_key(prefix, "drop_path"),
            "none or a float in [0, 1)",
            self.drop_path,
        )
        require(
            0 <= self.label_smoothing < 1,
            join_key(prefix, "label_smoothing"),
            "a float in [0, 1)",
            self.label_smoothing,
        )
        require(0 <= self.ema_decay < 1, join_key(prefix, "ema_decay"), "a float in [0, 1) (0: off)", self.ema_decay)
        require(self.eval_max_batches >= 0, join_key(prefix, "eval_max_batches"), "an int >= 0", self.eval_max_batches)
        earlier: set[str] = set()
        for i, stage in enumerate(self.stages):
            require(
                stage.lr is None or stage.lr >= self.min_lr,
                join_key(prefix, f"stages.{i}.lr"),
                f"at least min_lr ({self.min_lr:g}): the schedule decays from lr to min_lr",
                stage.lr,
            )
            for task in stage.tasks:
                require(
                    task in self.tasks,
                    join_key(prefix, f"stages.{i}.tasks"),
                    f"names from tasks {sorted(self.tasks)}",
                    task,
                )
            for task in stage.replay:
                require(
                    task in earlier,
                    join_key(prefix, f"stages.{i}.replay"),
                    f"tasks of earlier stages {sorted(earlier)}",
                    task,
                )
            earlier.update(stage.tasks)
        require(
            self.schedule in ("all", "round_robin", "weighted"),
            join_key(prefix, "schedule"),
            "all, round_robin or weighted",
            self.schedule,
        )
        require(
            self.eval_split in ("train", "val", "test"),
            join_key(prefix, "eval_split"),
            "train, val or test",
            self.eval_split,
        )
