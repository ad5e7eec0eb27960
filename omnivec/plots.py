"""Figures written to run folders: loss curves and masked-reconstruction examples."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

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
        ax.plot(steps[k - 1:], smooth.tolist(), label=key[5:], color=f"C{i}")
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


def _denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised [..., C, H, W] -> [..., H, W, C] in [0, 1] for display."""
    shape = [1] * (x.ndim - 3) + [-1, 1, 1]
    x = x * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)
    return x.clamp(0, 1).movedim(-3, -1)


def _fill_hidden(raw: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """raw: [n, L, P] true patches, pred: [N, P] standardised predictions of the hidden ones ->
    (patches with the hidden ones blank (NaN), patches with the hidden ones predicted); the
    per-patch standardisation is undone with the true patch's statistics, as in MAE's figures."""
    hidden = raw[mask]
    recon = raw.clone()
    recon[mask] = pred * (hidden.var(-1, keepdim=True) + 1e-6).sqrt() + hidden.mean(-1, keepdim=True)
    blank = raw.clone()
    blank[mask] = float("nan")
    return blank, recon


def _image_panels(enc, x, r) -> list[torch.Tensor]:
    p, size = enc.cfg.patch_size, enc.cfg.image_size
    raw = F.unfold(x, p, stride=p).transpose(1, 2)  # [n, L, C*p*p]
    hidden, recon = _fill_hidden(raw, r["pred"], r["mask"])

    def fold(patches):
        return _denormalize(F.fold(patches.transpose(1, 2), (size, size), p, stride=p), enc.cfg.mean, enc.cfg.std)

    return [fold(raw), fold(hidden), fold(recon)]


def _video_panels(enc, x, r) -> list[torch.Tensor]:
    n, T, C, H, W = x.shape
    (t, h, w), tt, p = enc.grid, enc.cfg.tubelet_size, enc.cfg.patch_size

    def patchify(v):
        return v.reshape(n, t, tt, C, h, p, w, p).permute(0, 1, 4, 6, 2, 3, 5, 7).reshape(n, t * h * w, -1)

    def unpatchify(patches):
        v = patches.reshape(n, t, h, w, tt, C, p, p).permute(0, 1, 4, 5, 2, 6, 3, 7).reshape(n, T, C, H, W)
        frames = v[:, torch.linspace(0, T - 1, 4).long()]  # 4 frames side by side
        return _denormalize(frames, enc.cfg.mean, enc.cfg.std).permute(0, 2, 1, 3, 4).reshape(n, H, 4 * W, C)

    hidden, recon = _fill_hidden(patchify(x), r["pred"], r["mask"])
    return [unpatchify(patchify(x)), unpatchify(hidden), unpatchify(recon)]


def _audio_panels(enc, x, r) -> list[torch.Tensor]:
    p, s = enc.cfg.patch_size, enc.cfg.patch_stride
    spec = x.transpose(1, 2).unsqueeze(1)  # [n, 1, mel, frames]
    raw = F.unfold(spec, p, stride=s).transpose(1, 2)  # [n, L, p*p]
    hidden, recon = _fill_hidden(raw, r["pred"], r["mask"])
    cover = F.fold(torch.ones_like(raw).transpose(1, 2), spec.shape[-2:], p, stride=s).clamp(min=1)

    def fold(patches):
        return (F.fold(patches.transpose(1, 2), spec.shape[-2:], p, stride=s) / cover)[:, 0]  # [n, mel, frames]

    return [fold(raw), fold(hidden), fold(recon)]


def _point_panels(enc, x, r) -> list[torch.Tensor]:
    k, mask = enc.cfg.group_size, r["mask"]
    centres = r["positions"][..., None, :]  # [n, G, 1, 3]
    true = r["target"].reshape(*mask.shape, k, 3) + centres  # [n, G, K, 3] in the cloud's frame
    blank, recon = true.clone(), true.clone()
    blank[mask] = float("nan")
    recon[mask] = r["pred"].reshape(-1, k, 3) + centres.expand_as(true)[mask]
    return [p.flatten(1, 2) for p in (true, blank, recon)]  # [n, G*K, 3], NaN where hidden


PANELS = {"image": _image_panels, "video": _video_panels, "audio": _audio_panels, "point_cloud": _point_panels}


@torch.no_grad()
def plot_reconstructions(pretrainer, loaders: Mapping[str, Any], samples: int, png: str | Path,
                         device: torch.device) -> None:
    """For a few validation samples of each modality: the input, what the encoder saw (hidden
    tokens blank) and the decoder's reconstruction of the hidden tokens."""
    from .training import to_device

    pretrainer.eval()
    rows = []  # (modality, panels for one sample)
    for modality, loader in loaders.items():
        if modality not in PANELS:
            continue
        batch = next(iter(loader))
        if batch["input"] is None:
            continue
        x = to_device(batch["input"], device)[:samples]
        r = pretrainer.reconstruct(modality, x, torch.Generator(device).manual_seed(0))
        r = {k: (v.float() if v.is_floating_point() else v).cpu() if isinstance(v, torch.Tensor) else v for k, v in r.items()}
        panels = PANELS[modality](pretrainer.model.encoders[modality], x.float().cpu(), r)
        rows += [(modality, [p[i] for p in panels]) for i in range(len(x))]
    if not rows:
        return
    fig = plt.figure(figsize=(9, 2.2 * len(rows)))
    for i, (modality, panels) in enumerate(rows):
        for j, (panel, title) in enumerate(zip(panels, ("input", "masked (encoder input)", "reconstruction"))):
            if modality == "point_cloud":
                ax = fig.add_subplot(len(rows), 3, 3 * i + j + 1, projection="3d")
                pts = panel[~panel.isnan().any(-1)].numpy()
                ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=2, c=pts[:, 2], cmap="viridis")
                ax.set_box_aspect((1, 1, 1))
                ax.set_axis_off()
            else:
                ax = fig.add_subplot(len(rows), 3, 3 * i + j + 1)
                ax.imshow(panel.nan_to_num(0.5 if modality != "audio" else float(panel.nan_to_num(0).min())).numpy(),
                          origin="lower" if modality == "audio" else "upper", aspect="auto", cmap="magma"
                          if modality == "audio" else None, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
            if j == 0:
                ax.text2D(-0.1, 0.5, modality, transform=ax.transAxes, rotation=90, va="center") \
                    if modality == "point_cloud" else ax.set_ylabel(modality)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def plot_confusion(predictions: list[int], targets: list[int], labels: tuple[str, ...], png: str | Path,
                   title: str = "") -> None:
    """Confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    from .evaluation import confusion_matrix

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
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
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
