"""A new modality and a new head, each defined in this file alone, run through every command:
`data check`, `pretrain` (with its reconstruction figure), `finetune`, `evaluate` and `embed`.
Nothing under omnivec/ names them: generic code asks the modality and the head."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from omnivec.backbone import masked_mean
from omnivec.cli import main
from omnivec.config import HeadConfig, ModalityConfig, PatchConfig
from omnivec.embedding_store import open_store
from omnivec.errors import DataError
from omnivec.heads import TaskHead, register_head
from omnivec.metrics import topk_accuracy
from omnivec.modalities import ModalityEncoder, register_modality
from omnivec.modalities.base import Tokens
from omnivec.parsing import require
from omnivec.registry import HEADS, MODALITIES
from omnivec.targets import Target

pytestmark = pytest.mark.integration


@dataclass
class DepthConfig(PatchConfig):
    image_size: int = 8
    patch_size: int = 2

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        require(
            self.image_size % self.patch_size == 0, f"{prefix}.patch_size", "a divisor of image_size", self.patch_size
        )


class DepthTransform:
    """A depth map [H, W] (metres) -> [1, S, S] scaled to [0, 1] by its own range."""

    def __init__(self, cfg: DepthConfig, train: bool = False):
        self.size = cfg.image_size

    def __call__(self, depth: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(depth, dtype=torch.float32)[None, None]  # [1, 1, H, W]
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        return (x - x.min()) / (x.max() - x.min()).clamp(min=1e-6)  # [1, S, S]


class DepthEncoder(ModalityEncoder):
    """[B, 1, S, S] depth maps -> [B, (S/p)^2, D] patch tokens with learned positions."""

    config_class = DepthConfig
    suffixes = (".npy",)
    plot_style = "image"

    def __init__(self, cfg: DepthConfig, dim: int):
        super().__init__(cfg, dim)
        self.patch = nn.Linear(cfg.patch_size**2, self.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, self.width))

    @property
    def num_tokens(self) -> int:
        return (self.cfg.image_size // self.cfg.patch_size) ** 2

    @property
    def target_dim(self) -> int:
        return self.cfg.patch_size**2

    @classmethod
    def read(cls, path: Path) -> np.ndarray:
        try:
            depth = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise DataError(f"{path}: cannot read depth map ({e})") from e
        if depth.ndim != 2:
            raise DataError(f"{path}: expected a depth map [H, W], got shape {list(depth.shape)}")
        return depth

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch_size
        return F.unfold(x, p, stride=p).transpose(1, 2)  # [B, L, p*p]

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        p, s = self.cfg.patch_size, self.cfg.image_size
        return F.fold(patches.transpose(1, 2), (s, s), p, stride=p)  # [B, 1, S, S]

    def display(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]  # [n, S, S]

    def tokenize(self, x: torch.Tensor, with_target: bool = False) -> Tokens:
        tokens = self.patch(self.patchify(x)) + self.pos_embed  # [B, L, width]
        return Tokens(tokens, target=self.patch_target(x) if with_target else None)

    def check_input(self, x: torch.Tensor) -> None:
        s = self.cfg.image_size
        self._check_tensor(x, (None, 1, s, s), f"[B, 1, {s}, {s}]")

    @classmethod
    def build_transform(cls, cfg: DepthConfig, train: bool = False) -> DepthTransform:
        return DepthTransform(cfg, train)

    @classmethod
    def example_input(cls, cfg: DepthConfig, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(batch_size, 1, cfg.image_size, cfg.image_size, generator=generator)


@dataclass
class PrototypeHeadConfig(HeadConfig):
    type: str = "prototype"
    num_classes: int = 2
    labels: tuple[str, ...] = ()
    scale: float = 10.0


class PrototypeHead(TaskHead):
    """Cosine similarity of the pooled tokens to one learned prototype per class."""

    config_class = PrototypeHeadConfig
    main_metric = "accuracy"

    def __init__(self, cfg: PrototypeHeadConfig, dim: int):
        super().__init__()
        self.cfg = cfg
        self.prototypes = nn.Parameter(torch.randn(cfg.num_classes, dim) * 0.02)

    @classmethod
    def from_data(cls, classes, model_config, task):
        return {"num_classes": len(classes), "labels": list(classes)}

    def forward(self, x, padding_mask=None):
        pooled = F.normalize(masked_mean(x, padding_mask), dim=-1)
        return self.cfg.scale * pooled @ F.normalize(self.prototypes, dim=-1).T  # [B, C]

    def loss(self, x, padding_mask, target):
        return F.cross_entropy(self(x, padding_mask).float(), target)

    def metrics(self, predictions, targets):
        return {"accuracy": topk_accuracy(predictions, targets, 1)}

    def details(self, predictions, targets):
        return {"_pred": predictions.argmax(1).tolist(), "_true": targets.tolist()}

    @classmethod
    def baseline(cls, rows, classes):
        majority = max(sum(r["label"] == c for r in rows) for c in classes) / len(rows)
        return {"chance_accuracy": majority}


if "depth" not in MODALITIES:
    register_modality("depth")(DepthEncoder)
if "prototype" not in HEADS:
    register_head("prototype")(PrototypeHead)


def write_depth_dataset(root: Path, per_class: int = 12) -> Path:
    """Flat floors vs ramps, 8 px noisy depth maps, split train / val / test."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for c, label in enumerate(("flat", "ramp")):
        for i in range(per_class):
            ramp = np.linspace(0, 1, 12)[None, :].repeat(12, 0) if c else np.zeros((12, 12))
            depth = (2.0 + ramp + 0.05 * rng.standard_normal((12, 12))).astype(np.float32)
            np.save(root / f"{label}_{i}.npy", depth)
            split = "train" if i < per_class - 4 else "val" if i < per_class - 2 else "test"
            rows.append({"path": f"{label}_{i}.npy", "label": label, "split": split})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def write_yaml(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


MODEL = {
    "backbone": {"dim": 32, "depth": 1, "num_heads": 2},
    "modalities": {m: None for m in ("image", "video", "audio", "text", "point_cloud")}
    | {"depth": {"image_size": 8, "patch_size": 2}},
}
LOOP = {"batch_size": 4, "num_workers": 0, "log_every": 1, "warmup_steps": 0, "save_every": 0}


def test_a_modality_and_a_head_defined_outside_the_package_run_every_command(tmp_path, capsys):
    data = write_depth_dataset(tmp_path / "floors")

    assert main(["data", "check", str(data)]) == 0
    assert "floors (depth, label, 2 classes)" in capsys.readouterr().out

    pre = write_yaml(
        tmp_path / "pre.yaml",
        {
            "model": "omnivec_tiny",
            "model_overrides": MODEL,
            "data": {"depth": [str(data)]},
            "max_steps": 4,
            "eval_batches": 1,
            "decoder": {"dim": 16, "depth": 1, "num_heads": 2},
            "output_dir": str(tmp_path / "pre"),
            **LOOP,
        },
    )
    assert main(["pretrain", pre]) == 0
    summary = json.loads((tmp_path / "pre" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["modalities"]["depth"]["val_end"] > 0
    assert (tmp_path / "pre" / "reconstructions.png").stat().st_size > 1000  # drawn through the modality's display

    ft_cfg = {
        "init": str(tmp_path / "pre" / "model"),
        "tasks": {"floors": {"head": "prototype", "data": [str(data)]}},
        "stages": [{"tasks": ["floors"], "steps": 40}],
        "lr": 1e-3,
        "eval_split": "test",
        "output_dir": str(tmp_path / "ft"),
        **LOOP,
    }
    ft = write_yaml(tmp_path / "ft.yaml", ft_cfg)
    assert main(["finetune", ft]) == 0
    report = json.loads((tmp_path / "ft" / "eval.json").read_text())
    assert report["forgetting_matrix"]["metric"] == {"floors": "accuracy"}
    assert report["baselines"]["floors"] == {"chance_accuracy": 0.5}  # the head's own baseline
    assert report["final"]["floors"]["accuracy"] == 1.0  # flat vs ramp is easy: every test map right
    assert "| floors | accuracy | 1.000 | 0.500 (chance) |" in (tmp_path / "ft" / "eval.md").read_text()
    card = (tmp_path / "ft" / "model" / "README.md").read_text()  # the model card
    assert "| floors | prototype | depth | flat, ramp |" in card and "| depth | omnivec | 0.75 |" in card
    assert (
        "## Metrics (test split, from ft/eval.json)" in card
        and "| floors | accuracy | 1.000 | 0.500 (chance) |" in card
    )

    assert (
        main(
            ["evaluate", "--model", str(tmp_path / "ft" / "model"), "--config", ft, "--output", str(tmp_path / "eval")]
        )
        == 0
    )
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["floors"]["accuracy"] == 1.0
    assert (tmp_path / "eval" / "confusion_floors.png").is_file()  # from the head's details

    assert (
        main(
            [
                "embed",
                "--model",
                str(tmp_path / "ft" / "model"),
                "--input",
                str(data),
                "--output",
                str(tmp_path / "emb"),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    emb = np.load(tmp_path / "emb" / "part-00000.npy")
    assert emb.shape == (24, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)

    (data / "flat_0.npy").write_bytes(b"\x93NUMPY garbage")
    assert main(["data", "check", str(data)]) == 1
    assert f"BAD {data / 'flat_0.npy'}: cannot read depth map" in capsys.readouterr().out


# --- a head whose target is a new kind (a number per sample), and a second inline modality ---------


class Value(Target):
    """A number per sample, in a `value` column: batched as a float tensor [B]."""

    column = "value"

    def parse(self, value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise DataError(f"{where}: value: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError as e:
            raise DataError(f"{where}: value: expected a number, got {value!r}") from e

    def collate(self, values):
        return torch.tensor(values, dtype=torch.float32)  # [B]


@dataclass
class RegressionHeadConfig(HeadConfig):
    type: str = "regression"


class RegressionHead(TaskHead):
    """Mean-pooled tokens -> one number; mean squared error; mean absolute error and R²."""

    config_class = RegressionHeadConfig
    target = Value()
    main_metric = "r2"

    def __init__(self, cfg: RegressionHeadConfig, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, 1)

    def forward(self, x, padding_mask=None):
        return self.fc(masked_mean(x, padding_mask))[:, 0]  # [B]

    def loss(self, x, padding_mask, target):
        return F.mse_loss(self(x, padding_mask).float(), target)

    def metrics(self, predictions, targets):
        residual = ((predictions - targets) ** 2).sum() / ((targets - targets.mean()) ** 2).sum()
        return {"r2": float(1 - residual), "mae": float((predictions - targets).abs().mean())}

    @classmethod
    def baseline(cls, rows, classes):
        values = torch.tensor([r["value"] for r in rows])
        return {"median": {"mae": float((values - values.median()).abs().mean())}} if len(values) else {}


@dataclass
class VectorConfig(ModalityConfig):
    features: int = 8
    chunk: int = 2


class VectorTransform:
    """A list of numbers -> [F] floats."""

    def __init__(self, cfg: VectorConfig, train: bool = False):
        self.features = cfg.features

    def __call__(self, values: list) -> torch.Tensor:
        if len(values) != self.features:
            raise ValueError(f"expected {self.features} numbers, got {len(values)}")
        return torch.tensor(values, dtype=torch.float32)  # [F]


class VectorEncoder(ModalityEncoder):
    """Feature vectors held inline in a `vector` column (a JSON list, or numbers separated by
    spaces in CSV) -> [B, F / c, D] tokens of c features each."""

    config_class = VectorConfig
    suffixes = (".vec",)
    inline_column = "vector"
    masked_pretraining = False

    def __init__(self, cfg: VectorConfig, dim: int):
        super().__init__(cfg, dim)
        self.chunk = nn.Linear(cfg.chunk, self.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, self.width))

    @property
    def num_tokens(self) -> int:
        return self.cfg.features // self.cfg.chunk

    @classmethod
    def parse_inline(cls, value, where):
        numbers = value.split() if isinstance(value, str) else value
        try:
            return [float(v) for v in numbers]
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}: vector: expected numbers, got {value!r}") from e

    @classmethod
    def inline_member(cls, value):
        return ".vec", " ".join(map(repr, value)).encode()

    @classmethod
    def read(cls, path: Path) -> list:
        return cls.parse_inline(path.read_text(), str(path))

    def tokenize(self, x: torch.Tensor, with_target: bool = False) -> Tokens:
        return Tokens(self.chunk(x.unflatten(1, (-1, self.cfg.chunk))) + self.pos_embed)  # [B, L, width]

    def check_input(self, x: torch.Tensor) -> None:
        self._check_tensor(x, (None, self.cfg.features), f"[B, {self.cfg.features}]")

    @classmethod
    def build_transform(cls, cfg: VectorConfig, train: bool = False) -> VectorTransform:
        return VectorTransform(cfg, train)

    @classmethod
    def example_input(cls, cfg: VectorConfig, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(batch_size, cfg.features, generator=generator)


if "vector" not in MODALITIES:
    register_modality("vector")(VectorEncoder)
if "regression" not in HEADS:
    register_head("regression")(RegressionHead)


def write_vector_dataset(root: Path, n: int = 48) -> Path:
    """8 random features per row, inline; the value to predict is the sum of the first two."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        x = rng.standard_normal(8).round(3)
        split = "train" if i < n - 16 else "val" if i < n - 8 else "test"
        rows.append({"vector": x.tolist(), "value": float(x[0] + x[1]), "split": split})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_a_new_target_kind_and_an_inline_modality_defined_outside_the_package_run_every_command(tmp_path, capsys):
    data = write_vector_dataset(tmp_path / "sums")
    assert main(["data", "check", str(data)]) == 0
    assert "sums (vector, value): " in capsys.readouterr().out

    shards = tmp_path / "shards"
    assert main(["data", "shard", str(data), "--output", str(shards)]) == 0
    index = json.loads((shards / "index.json").read_text())
    assert index["modalities"]["vector"]["target"] == "value" and index["splits"] == {"test": 8, "train": 32, "val": 8}
    assert main(["data", "check", str(shards)]) == 0  # the inline samples came back from .vec members
    assert "vector, value" in capsys.readouterr().out

    model = {
        "backbone": {"dim": 32, "depth": 1, "num_heads": 2},
        "modalities": {m: None for m in ("image", "video", "audio", "text", "point_cloud")} | {"vector": {}},
    }
    for name, source in (("manifest", data), ("shards", shards)):
        ft = write_yaml(
            tmp_path / f"ft-{name}.yaml",
            {
                "model": "omnivec_tiny",
                "model_overrides": model,
                "tasks": {"sums": {"head": "regression", "data": [str(source)]}},
                "stages": [{"tasks": ["sums"], "steps": 200}],
                "lr": 3e-3,
                "eval_split": "test",
                "output_dir": str(tmp_path / f"ft-{name}"),
                **LOOP,
            },
        )
        assert main(["finetune", ft]) == 0
        report = json.loads((tmp_path / f"ft-{name}" / "eval.json").read_text())
        assert report["forgetting_matrix"]["metric"] == {"sums": "r2"}
        median = report["baselines"]["sums"]["median"]["mae"] if name == "manifest" else None
        assert name == "shards" or report["final"]["sums"]["mae"] < median  # learned something beyond the median

    out = tmp_path / "eval"
    assert (
        main(["evaluate", "--model", str(tmp_path / "ft-shards" / "model"), "--config", ft, "--output", str(out)]) == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]["sums"]
    assert metrics["samples"] == 8 and set(metrics) >= {"r2", "mae"}

    assert main(["embed", "--model", str(tmp_path / "ft-shards" / "model"), "--input", str(data),
                 "--output", str(tmp_path / "emb"), "--num-workers", "0"]) == 0  # fmt: skip
    assert open_store(tmp_path / "emb").load()[0].shape == (48, 32)
