"""Decoding files into the raw samples each modality's transform takes, one reader per modality.

Every reader raises `DataError` naming the file when it is unreadable, empty, wrongly shaped or
holds NaN/Inf values, so that `omnivec data check` and training report the file, not a traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DataError

EXTENSIONS = {
    "image": (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"),
    "video": (".mp4", ".webm", ".avi", ".mkv", ".mov"),
    "audio": (".wav", ".flac", ".ogg", ".mp3"),
    "text": (".txt",),
    "point_cloud": (".ply", ".pcd", ".xyz", ".xyzn", ".xyzrgb", ".pts", ".obj", ".off", ".stl"),
}
MESH_EXTENSIONS = (".obj", ".off", ".stl", ".ply")
MESH_POINTS = 2048  # points sampled from a mesh's surface


def modality_of(path: str | Path) -> str:
    """The modality a file (or a folder of frames: video) belongs to, from its extension."""
    path = Path(path)
    if path.is_dir():
        return "video"
    suffix = path.suffix.lower()
    for modality, suffixes in EXTENSIONS.items():
        if suffix in suffixes:
            return modality
    raise DataError(f"{path}: unknown file type {suffix!r}; expected one of "
                    + ", ".join(f"{m} {list(s)}" for m, s in EXTENSIONS.items()))


def _nonempty(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")


def read_image(path: Path):
    """-> a fully decoded PIL image."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if image.width == 0 or image.height == 0:
                raise DataError(f"{path}: image has size {image.size}")
            return image.copy()
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e


def read_video(path: Path) -> torch.Tensor:
    """A video file (PyAV) or a folder of frame images -> uint8 frames [T, H, W, 3]."""
    if path.is_dir():
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in EXTENSIONS["image"])
        if not frames:
            raise DataError(f"{path}: folder holds no frame images")
        arrays = [np.asarray(read_image(p).convert("RGB")) for p in frames]
        if len({a.shape for a in arrays}) > 1:
            raise DataError(f"{path}: frames differ in size")
        return torch.from_numpy(np.stack(arrays))
    import av

    try:
        with av.open(str(path)) as container:
            arrays = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except (av.FFmpegError, IndexError, ValueError) as e:
        raise DataError(f"{path}: cannot decode video ({e})") from e
    if not arrays:
        raise DataError(f"{path}: video has no frames")
    return torch.from_numpy(np.stack(arrays))  # [T, H, W, 3]


def read_audio(path: Path) -> tuple[torch.Tensor, int]:
    """-> (waveform [channels, samples] float32 in [-1, 1], sample rate)."""
    import soundfile as sf

    try:
        if "should be" in sf.info(str(path)).extra_info:  # libsndfile: chunk sizes beyond the file's end
            raise DataError(f"{path}: truncated audio file (its header promises more data)")
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)  # [samples, channels]
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(f"{path}: cannot decode audio ({e})") from e
    if data.shape[0] == 0:
        raise DataError(f"{path}: audio has no samples")
    if not np.isfinite(data).all():
        raise DataError(f"{path}: audio holds NaN or Inf samples")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sample_rate)


def read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    if not text.strip():
        raise DataError(f"{path}: empty text")
    return text


PLY_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
             "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}


def _split_header(path: Path, last: str) -> tuple[list[list[str]], bytes] | None:
    """The header lines (split into words) up to the line starting with `last`, and the body."""
    with path.open("rb") as f:
        header = []
        for raw in f:
            header.append(raw.decode("ascii", "replace").split())
            if header[-1][:1] == [last]:
                return header, f.read()
    return None


def _body_too_short(body: bytes, fmt: str, items: int, item_bytes: int | None) -> bool:
    if fmt == "ascii":
        return len([ln for ln in body.splitlines() if ln.strip()]) < items
    return item_bytes is not None and fmt.startswith("binary") and len(body) < item_bytes


def is_truncated(path: Path) -> bool:
    """True when a PLY or PCD file holds less data than its header declares (open3d reads such
    files without an error, filling the missing points with zeros)."""
    suffix = path.suffix.lower()
    if suffix == ".ply":
        split = _split_header(path, "end_header")
        if split is None:
            return True
        fmt, elements = "", []  # [count, bytes per item (None once a list property makes it vary)]
        for parts in filter(None, split[0]):
            if parts[0] == "format":
                fmt = parts[1]
            elif parts[0] == "element":
                elements.append([int(parts[2]), 0])
            elif parts[0] == "property" and elements and elements[-1][1] is not None:
                elements[-1][1] = None if parts[1] == "list" else elements[-1][1] + PLY_SIZES.get(parts[1], 0)
        needed = 0
        for count, size in elements:  # the fixed-size elements before any list element
            if size is None:
                break
            needed += count * size
        return _body_too_short(split[1], fmt, sum(c for c, _ in elements), needed)
    if suffix == ".pcd":
        split = _split_header(path, "DATA")
        if split is None:
            return True
        fields = {parts[0]: parts[1:] for parts in split[0] if parts}
        points = int(fields.get("POINTS", ["0"])[0])
        sizes = [int(s) * int(c) for s, c in zip(fields.get("SIZE", []), fields.get("COUNT", []))]
        fmt = fields["DATA"][0] if fields["DATA"] else ""
        return fmt != "binary_compressed" and _body_too_short(split[1], fmt, points, points * sum(sizes))
    return False


def read_point_cloud(path: Path) -> np.ndarray:
    """Point files (PLY/PCD/XYZ/PTS) or meshes (OBJ/OFF/STL, or a PLY with faces: sampled to
    MESH_POINTS points) -> float32 [N, 3 + C]: xyz, then normals, then colours when the file has them."""
    import open3d as o3d  # imported here: only point-cloud files need it

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    suffix = path.suffix.lower()
    if is_truncated(path):
        raise DataError(f"{path}: truncated file (less data than its header declares)")
    cloud = None
    if suffix in MESH_EXTENSIONS:
        mesh = o3d.io.read_triangle_mesh(str(path))
        if len(mesh.triangles) > 0:
            cloud = mesh.sample_points_uniformly(MESH_POINTS, use_triangle_normal=True)
        elif suffix != ".ply":
            raise DataError(f"{path}: mesh has no triangles (unreadable or empty)")
    if cloud is None:
        cloud = o3d.io.read_point_cloud(str(path), format="xyz" if suffix == ".pts" else "auto")
    points = np.asarray(cloud.points, dtype=np.float32)
    if points.ndim != 2 or points.shape[0] == 0:
        raise DataError(f"{path}: no points could be read")
    channels = [points]
    if cloud.has_normals():
        channels.append(np.asarray(cloud.normals, dtype=np.float32))
    if cloud.has_colors():
        channels.append(np.asarray(cloud.colors, dtype=np.float32))
    points = np.concatenate(channels, axis=1)
    if not np.isfinite(points).all():
        raise DataError(f"{path}: points hold NaN or Inf")
    return points


READERS: dict[str, Callable[[Path], Any]] = {
    "image": read_image,
    "video": read_video,
    "audio": read_audio,
    "text": read_text,
    "point_cloud": read_point_cloud,
}


def read_file(path: str | Path, modality: str | None = None) -> Any:
    """Decode `path` as `modality` (inferred from the extension when not given)."""
    path = Path(path)
    _nonempty(path)
    modality = modality or modality_of(path)
    return READERS[modality](path)
