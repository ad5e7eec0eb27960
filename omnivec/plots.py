"""Figures written to run folders: loss curves and masked-reconstruction examples."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def plot_losses(metrics_file: str | Path, png: str | Path) -> None:
    """Training loss per modality (smoothed) and validation loss points, from `metrics.jsonl`."""
    records = [json.loads(line) for line in Path(metrics_file).read_text().splitlines()]
    keys = sorted({k for r in records for k in r if k.startswith("loss/")})
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, key in enumerate(keys):
        steps = [r["step"] for r in records if key in r]
        values = torch.tensor([r[key] for r in records if key in r])
        k = max(1, len(values) // 20)
        smooth = F.avg_pool1d(values[None, None], k, stride=1).flatten() if k > 1 else values
        ax.plot(steps[k - 1 :], smooth.tolist(), label=key[5:], color=f"C{i}")
        val = [(r["step"], r[f"val/{key[5:]}"]) for r in records if f"val/{key[5:]}" in r]
        if val:
            ax.plot(*zip(*val), "o--", color=f"C{i}", markersize=4, linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (lines: train, smoothed; dots: validation)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _draw_image(ax, panel: torch.Tensor):
    """[H, W, C] in [0, 1], NaN where hidden (drawn grey)."""
    ax.imshow(panel.nan_to_num(0.5).numpy(), aspect="auto", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _draw_spectrogram(ax, panel: torch.Tensor):
    """[mel, frames], NaN where hidden (drawn as the lowest value)."""
    ax.imshow(
        panel.nan_to_num(float(panel.nan_to_num(0).min())).numpy(),
        origin="lower",
        aspect="auto",
        cmap="magma",
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _draw_points(ax, panel: torch.Tensor):
    """[N, 3] points, NaN rows hidden (not drawn)."""
    pts = panel[~panel.isnan().any(-1)].numpy()
    ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=2, c=pts[:, 2], cmap="viridis")
    ax.set_box_aspect((1, 1, 1))
    ax.set_axis_off()
    return ax


DRAW = {"image": _draw_image, "spectrogram": _draw_spectrogram, "points": _draw_points}  # by `plot_style`


def _first(x: Any, n: int) -> Any:
    """A model-ready batch (a tensor or a dict of them, e.g. padded clips) -> its first `n` samples."""
    return {k: _first(v, n) for k, v in x.items()} if isinstance(x, Mapping) else x[:n]


def _cpu_float(x: Any) -> Any:
    """Tensors (in dicts too) on the CPU, floating ones as float32; anything else as it is."""
    if isinstance(x, Mapping):
        return {k: _cpu_float(v) for k, v in x.items()}
    if not isinstance(x, torch.Tensor):
        return x
    return (x.float() if x.is_floating_point() else x).cpu()


@torch.no_grad()
def plot_reconstructions(
    pretrainer, loaders: Mapping[str, Any], samples: int, png: str | Path, device: torch.device
) -> None:
    """For a few validation samples of each modality: the input, what the encoder saw (hidden
    tokens blank) and the decoder's reconstruction of the hidden tokens."""
    from .datasets.dataset import to_device

    pretrainer.eval()
    rows = []  # (plot style, modality, panels for one sample)
    for modality, loader in loaders.items():
        encoder = pretrainer.model.encoders[modality]
        if encoder.plot_style is None:
            continue
        batch = next(iter(loader))
        if batch["input"] is None:
            continue
        x = to_device(_first(batch["input"], samples), device)
        r = pretrainer.reconstruct(modality, x, torch.Generator(device).manual_seed(0))
        r = {k: _cpu_float(v) for k, v in r.items()}
        panels = encoder.reconstruction_panels(_cpu_float(x), r)
        rows += [(encoder.plot_style, modality, [p[i] for p in panels]) for i in range(len(r["mask"]))]
    if not rows:
        return
    fig = plt.figure(figsize=(9, 2.2 * len(rows)))
    for i, (style, modality, panels) in enumerate(rows):
        for j, (panel, title) in enumerate(zip(panels, ("input", "masked (encoder input)", "reconstruction"))):
            ax = DRAW[style](
                fig.add_subplot(len(rows), 3, 3 * i + j + 1, projection="3d" if style == "points" else None), panel
            )
            if i == 0:
                ax.set_title(title, fontsize=9)
            if j == 0:
                ax.text2D(
                    -0.1, 0.5, modality, transform=ax.transAxes, rotation=90, va="center"
                ) if style == "points" else ax.set_ylabel(modality)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def plot_confusion(
    predictions: list[int], targets: list[int], labels: tuple[str, ...], png: str | Path, title: str = ""
) -> None:
    """Confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    from .metrics import confusion_matrix

    n = len(labels) or max(predictions + targets) + 1
    cm = confusion_matrix(torch.tensor(predictions), torch.tensor(targets), n).numpy()
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * n, 0.8 + 0.45 * n))
    ax.imshow(cm, cmap="Blues")
    names = list(labels) or [str(i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(int(cm[i, j])),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = cm.trace() / max(cm.sum(), 1)
    ax.set_title(f"{title} accuracy {accuracy:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_projection(embeddings: torch.Tensor, modalities: list[str], labels: list[str], png: str | Path) -> None:
    """2-D PCA of the embeddings: colour = class label, marker = modality."""
    x = embeddings - embeddings.mean(0)
    _, _, v = torch.pca_lowrank(x, q=2, center=False)
    xy = (x @ v[:, :2]).numpy()
    markers = dict(zip(dict.fromkeys(modalities), "os^Dv*P"))
    classes = list(dict.fromkeys(labels))
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(8, 6))
    for modality, marker in markers.items():
        idx = [i for i, m in enumerate(modalities) if m == modality]
        colours = [cmap(classes.index(labels[i]) % 20) for i in idx]
        ax.scatter(xy[idx, 0], xy[idx, 1], c=colours, marker=marker, s=18, label=modality, alpha=0.8)
    ax.legend(title="modality", fontsize=8)
    ax.set_title("embeddings, PCA (colour: class)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_label_efficiency(summary: list[Mapping[str, Any]], png: str | Path) -> None:
    """One panel per task: fine-tuning's main metric against the share of training labels (mean ±
    standard deviation over seeds) from the pretrained backbone, from scratch and from the
    target-modality-only backbone; k-NN of the frozen pretrained and random backbones as lines."""
    from .reports import cell_lookup

    cells = cell_lookup(summary)
    tasks = list(dict.fromkeys(c["task"] for c in summary))
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    styles = {"pretrained": ("C0", "o-"), "scratch": ("C1", "s-"), "target_only": ("C2", "D")}
    for ax, task in zip(axes.flat, tasks):
        runs = [c for c in summary if c["task"] == task and c["protocol"] == "finetune"]
        for init, (color, style) in styles.items():
            line = sorted((c for c in runs if c["init"] == init), key=lambda c: c["fraction"])
            if line:
                ax.errorbar(
                    [c["fraction"] for c in line],
                    [c["mean"] for c in line],
                    [c["std"] for c in line],
                    fmt=style,
                    color=color,
                    capsize=3,
                    label=f"fine-tuned: {init.replace('_', ' ')}",
                )
        for init, color in (("pretrained", "C0"), ("random", "C7")):
            knn = cells.get((task, "knn", init, 1.0, "top1"))
            if knn:
                ax.axhline(knn["mean"], color=color, linestyle=":", label=f"k-NN, frozen {init}")
        ax.set_xscale("log")
        ax.minorticks_off()
        fractions = sorted({c["fraction"] for c in runs})
        ax.set_xticks(fractions, [f"{f:.0%}" for f in fractions])
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("training labels")
        ax.set_ylabel(runs[0]["metric"] if runs else "")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
