"""Point-cloud modality: farthest point sampling + kNN groups + a mini-PointNet per group (Point-MAE)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import AugmentConfig, ModalityConfig
from ..errors import InputError
from ..masking import gather_tokens
from ..parsing import require, require_positive
from .base import ModalityEncoder, Tokens, register_modality
from .point_files import read_point_cloud


@dataclass
class PointCloudConfig(ModalityConfig):
    num_points: int = 1024
    num_groups: int = 64
    group_size: int = 32
    in_chans: int = 3  # xyz, plus any extra channels (normals, colours)
    normals: bool = False  # columns 3:6 are unit normals: augmentation rotates and rescales them with xyz
    pointnet_dims: tuple[int, ...] = (128, 256, 512)  # hidden widths of the group encoder (Point-MAE's)
    mask_ratio: float = 0.6  # Point-MAE

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        require_positive(self, prefix, "num_points", "num_groups", "group_size")
        require(self.in_chans >= 3, f"{prefix}.in_chans", "at least 3 (xyz first)", self.in_chans)
        require(
            not self.normals or self.in_chans >= 6,
            f"{prefix}.in_chans",
            "at least 6 with normals=true (xyz, then normals)",
            self.in_chans,
        )
        require(
            len(self.pointnet_dims) == 3 and min(self.pointnet_dims) > 0,
            f"{prefix}.pointnet_dims",
            "three positive widths",
            self.pointnet_dims,
        )
        for key in ("num_groups", "group_size"):
            value = getattr(self, key)
            require(value <= self.num_points, f"{prefix}.{key}", f"<= num_points={self.num_points}", value)


@torch.no_grad()
def farthest_point_sample(xyz: torch.Tensor, n: int) -> torch.Tensor:
    """xyz: [B, N, 3] -> [B, n] indices of points spread over the cloud (starting at point 0)."""
    B, N, _ = xyz.shape
    idx = torch.zeros(B, n, dtype=torch.long, device=xyz.device)
    dist = torch.full((B, N), float("inf"), device=xyz.device, dtype=xyz.dtype)
    farthest = torch.zeros(B, dtype=torch.long, device=xyz.device)
    batch = torch.arange(B, device=xyz.device)
    for i in range(n):
        idx[:, i] = farthest
        centre = xyz[batch, farthest].unsqueeze(1)  # [B, 1, 3]
        dist = torch.minimum(dist, (xyz - centre).square().sum(-1))  # [B, N]
        farthest = dist.argmax(-1)
    return idx


def group_points(points: torch.Tensor, num_groups: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """points: [B, N, C] -> centres [B, G, 3] and groups [B, G, K, C] (xyz relative to the centre)."""
    xyz = points[..., :3]
    centres = torch.gather(xyz, 1, farthest_point_sample(xyz, num_groups)[..., None].expand(-1, -1, 3))  # [B, G, 3]
    knn = torch.cdist(centres, xyz).topk(group_size, dim=-1, largest=False).indices  # [B, G, K]
    B, G, K = knn.shape
    groups = torch.gather(points, 1, knn.reshape(B, G * K, 1).expand(-1, -1, points.shape[-1]))
    groups = groups.reshape(B, G, K, -1)  # [B, G, K, C]
    groups = torch.cat([groups[..., :3] - centres.unsqueeze(2), groups[..., 3:]], dim=-1)
    return centres, groups


def chamfer_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a, b: [N, K, 3] point sets -> mean squared distance from each point to the other set's
    nearest point, both ways (the L2 Chamfer distance of Point-MAE)."""
    d = torch.cdist(a, b).square()  # [N, K, K]
    return d.min(2).values.mean() + d.min(1).values.mean()


class MiniPointNet(nn.Module):
    """Point-MAE's group encoder: shared MLP, max-pool, concat the pooled feature, MLP, max-pool.
    (LayerNorm instead of BatchNorm, so that a sample's tokens never depend on its batch.)"""

    def __init__(self, in_chans: int, out_dim: int, dims: tuple[int, ...] = (128, 256, 512)):
        super().__init__()
        d1, d2, d3 = dims
        self.first = nn.Sequential(nn.Linear(in_chans, d1), nn.LayerNorm(d1), nn.GELU(), nn.Linear(d1, d2))
        self.second = nn.Sequential(nn.Linear(2 * d2, d3), nn.LayerNorm(d3), nn.GELU(), nn.Linear(d3, out_dim))

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        """groups: [B, G, K, C] -> [B, G, out_dim]."""
        f = self.first(groups)  # [B, G, K, d2]
        pooled = f.amax(dim=2, keepdim=True).expand_as(f)  # [B, G, K, d2]
        return self.second(torch.cat([pooled, f], dim=-1)).amax(dim=2)  # [B, G, out_dim]


@dataclass
class PointCloudAugment(AugmentConfig):
    """Training augmentation of point clouds, after centring and scaling to the unit sphere:
    Point-MAE's scale-and-translate, PointNeXt's rotation about the up (z) axis, PointNet's clipped
    jitter and PointNet++'s random point dropout, with their values. 0 or an empty range switches
    one off."""

    rotation: float = 180.0  # rotation about z, uniform in +-rotation degrees (PointNeXt: any angle)
    scale: tuple[float, ...] = (2 / 3, 3 / 2)  # scale range (Point-MAE PointcloudScaleAndTranslate); [] off
    anisotropic: bool = True  # one scale per axis (Point-MAE); false: one for all three
    translate: float = 0.2  # shift per axis, uniform in +-translate (Point-MAE)
    jitter: float = 0.01  # Gaussian noise per coordinate, this standard deviation (PointNet)
    jitter_clip: float = 0.05  # noise clipped to +-jitter_clip (PointNet); 0: unclipped
    point_dropout: float = 0.875  # drop a random share, up to this, of the points: they repeat the first (PointNet++)

    def validate(self, prefix: str) -> None:
        require(
            len(self.scale) in (0, 2) and (not self.scale or 0 < self.scale[0] <= self.scale[1]),
            f"{prefix}.scale",
            "[] (off) or [low, high] with 0 < low <= high",
            self.scale,
        )
        for key in ("rotation", "translate", "jitter", "jitter_clip"):
            require(getattr(self, key) >= 0, f"{prefix}.{key}", "a number >= 0 (0: off)", getattr(self, key))
        require(0 <= self.point_dropout < 1, f"{prefix}.point_dropout", "a share in [0, 1)", self.point_dropout)

    def __call__(self, points: torch.Tensor, normals: bool = False) -> torch.Tensor:
        """points [N, C] (xyz first) -> [N, C]: xyz rotated, scaled, shifted and jittered, points dropped.
        With `normals`, columns 3:6 are unit normals: rotated with xyz, and under a per-axis scale
        transformed by its inverse (the inverse transpose of a diagonal map) and renormalised."""
        xyz = points[:, :3]  # [N, 3]
        normal = points[:, 3:6] if normals else None  # [N, 3]
        if self.rotation:
            angle = math.radians(float(torch.empty(()).uniform_(-self.rotation, self.rotation)))
            c, s = math.cos(angle), math.sin(angle)
            rotation = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
            xyz = xyz @ rotation.T
            normal = None if normal is None else normal @ rotation.T
        if self.scale:
            scale = torch.empty(3 if self.anisotropic else 1).uniform_(*self.scale)  # [3] or [1]
            xyz = xyz * scale
            normal = None if normal is None else F.normalize(normal / scale, dim=1)
        if self.translate:
            xyz = xyz + torch.empty(3).uniform_(-self.translate, self.translate)
        if self.jitter:
            noise = self.jitter * torch.randn_like(xyz)
            xyz = xyz + (noise.clamp(-self.jitter_clip, self.jitter_clip) if self.jitter_clip else noise)
        points = torch.cat([xyz, points[:, 3:]] if normal is None else [xyz, normal, points[:, 6:]], dim=1)
        if self.point_dropout:
            dropped = torch.rand(len(points)) < float(torch.rand(())) * self.point_dropout  # [N]
            points[dropped] = points[0].clone()
        return points


# Training without `augment` (and masked pretraining unless its config asks for more): a random
# rotation about z, one random scale and jitter.
TRAIN_AUGMENT = PointCloudAugment(
    scale=(0.8, 1.2), anisotropic=False, translate=0.0, jitter_clip=0.0, point_dropout=0.0
)


def check_normals(normals: torch.Tensor) -> None:
    """`InputError` unless every row of normals [N, 3] is a unit vector (or zero: a point with no
    normal). A file without normals puts its colours right after x, y, z, where they would pass
    for normals unnoticed."""
    length = normals.norm(dim=1)  # [N]
    bad = ((length - 1).abs() > 0.02) & (length > 0)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise InputError(
            f"point_cloud: modalities.point_cloud.normals=true expects unit normals in columns 3:6, got "
            f"{[round(v, 3) for v in normals[i].tolist()]} (length {length[i]:.3f}) at point {i}; "
            "a file without normals has its colours there"
        )


class PointCloudTransform:
    """points [N, C] (array or tensor) -> [num_points, C]: resampled, centred, scaled to the unit sphere.

    Training then augments: `augment`, or `TRAIN_AUGMENT` (rotation about z, scaling, jitter).
    """

    def __init__(self, cfg: PointCloudConfig, train: bool = False, augment: PointCloudAugment | None = None):
        self.num_points, self.in_chans, self.normals, self.train = cfg.num_points, cfg.in_chans, cfg.normals, train
        self.augment = (augment or TRAIN_AUGMENT) if train else None

    def __call__(self, points) -> torch.Tensor:
        points = torch.as_tensor(points, dtype=torch.float32)
        if points.ndim != 2 or points.shape[1] < self.in_chans or points.shape[0] == 0:
            raise InputError(
                f"point_cloud: expected points [N >= 1, {self.in_chans}] (x, y, z first; "
                f"modalities.point_cloud.in_chans), got shape {list(points.shape)}"
            )
        points = points[:, : self.in_chans]  # extra columns (normals, colours) beyond in_chans are dropped
        if self.normals:
            check_normals(points[:, 3:6])
        n = points.shape[0]
        generator = None if self.train else torch.Generator().manual_seed(0)
        if n >= self.num_points:
            idx = torch.randperm(n, generator=generator)[: self.num_points]
        else:
            idx = torch.randint(n, (self.num_points,), generator=generator)
        points = points[idx].clone()  # [num_points, C]
        xyz = points[:, :3] - points[:, :3].mean(0)
        points[:, :3] = xyz / xyz.norm(dim=1).max().clamp(min=1e-8)
        return self.augment(points, self.normals) if self.augment else points


@register_modality("point_cloud")
class PointCloudEncoder(ModalityEncoder):
    """[B, N, C] points -> [B, G, D] group tokens, positioned by an MLP of the group centres."""

    config_class = PointCloudConfig
    augment_class = PointCloudAugment
    transform_class = PointCloudTransform
    suffixes = (".ply", ".pcd", ".xyz", ".xyzn", ".xyzrgb", ".pts", ".obj", ".off", ".stl")
    decoder_position_dim = 3  # the decoder places groups by their centres (Point-MAE)
    plot_style = "points"

    def __init__(self, cfg: PointCloudConfig, dim: int):
        super().__init__(cfg, dim)
        self.group_encoder = MiniPointNet(cfg.in_chans, self.width, cfg.pointnet_dims)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, self.width))

    @property
    def num_tokens(self) -> int:
        return self.cfg.num_groups

    @property
    def target_dim(self) -> int:
        return self.cfg.group_size * 3

    def tokenize(self, x: torch.Tensor, with_target: bool = False) -> Tokens:
        return self.tokenize_kept(x, None, with_target)

    def tokenize_kept(self, x: torch.Tensor, ids_keep: torch.Tensor | None, with_target: bool = False) -> Tokens:
        """Groups over the whole cloud (farthest point sampling, kNN), the mini-PointNet on the kept
        groups `ids_keep` [B, G'] only (every group when None)."""
        centres, groups = group_points(x, self.cfg.num_groups, self.cfg.group_size)  # [B, G, 3], [B, G, K, C]
        kept_centres, kept_groups = centres, groups
        if ids_keep is not None:
            kept_centres, kept_groups = gather_tokens(centres, ids_keep), gather_tokens(groups, ids_keep)
        tokens = self.group_encoder(kept_groups) + self.pos_embed(kept_centres)  # [B, G', width]
        if not with_target:
            return Tokens(tokens)
        return Tokens(tokens, target=groups[..., :3].flatten(2), positions=centres)  # [B, G, K*3], [B, G, 3]

    def reconstruction_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: [N, K*3] for the N hidden groups -> L2 Chamfer distance per group (Point-MAE)."""
        k = self.cfg.group_size
        return chamfer_l2(pred.float().reshape(-1, k, 3), target.float().reshape(-1, k, 3))

    def check_input(self, x: torch.Tensor) -> None:
        n, c = self.cfg.num_points, self.cfg.in_chans
        self._check_tensor(x, (None, n, c), f"[B, {n}, {c}] (points, xyz + extra channels)")

    def reconstruction_panels(self, x: torch.Tensor, result: dict) -> list[torch.Tensor]:
        """(true groups, visible groups, visible + reconstructed groups) as [n, G*K, 3] points in the
        cloud's frame, NaN where hidden."""
        k, mask = self.cfg.group_size, result["mask"]
        centres = result["positions"][..., None, :]  # [n, G, 1, 3]
        true = result["target"].reshape(*mask.shape, k, 3) + centres  # [n, G, K, 3]
        blank, recon = true.clone(), true.clone()
        blank[mask] = float("nan")
        recon[mask] = result["pred"].reshape(-1, k, 3) + centres.expand_as(true)[mask]
        return [p.flatten(1, 2) for p in (true, blank, recon)]

    @classmethod
    def read(cls, path: Path) -> np.ndarray:
        return read_point_cloud(path)

    @classmethod
    def example_input(cls, cfg: PointCloudConfig, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(batch_size, cfg.num_points, cfg.in_chans, generator=generator)
