"""Point-cloud files: reading clouds and meshes with open3d (imported here only, lazily: it needs the
system library libusb), sampling a mesh's surface, and telling a truncated PLY / PCD / OFF file
from a whole one before open3d reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..files import Blob, local_path

MESH_EXTENSIONS = (".obj", ".off", ".stl", ".ply")


MESH_POINTS = 2048  # points sampled from a mesh's surface
MESH_SEED = 0  # open3d's sampling seed for every mesh read: a mesh gives the same points each time (resume, embeddings)


PLY_SIZES = {
    "char": 1,
    "uchar": 1,
    "int8": 1,
    "uint8": 1,
    "short": 2,
    "ushort": 2,
    "int16": 2,
    "uint16": 2,
    "int": 4,
    "uint": 4,
    "int32": 4,
    "uint32": 4,
    "float": 4,
    "float32": 4,
    "double": 8,
    "float64": 8,
}


def _split_header(path: Path | Blob, last: str) -> tuple[list[list[str]], bytes] | None:
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


def is_truncated(path: Path | Blob) -> bool:
    """True when a PLY or PCD file holds less data than its header declares (open3d reads such
    files without an error, filling the missing points with zeros)."""
    suffix = path.suffix.lower()
    if suffix == ".ply":
        split = _split_header(path, "end_header")
        if split is None:
            return True
        fmt = ""
        elements: list[list[Any]] = []  # [count, bytes per item (None once a list property makes it vary)]
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


def read_point_cloud(path: Path | Blob) -> np.ndarray:
    """Point files (PLY/PCD/XYZ/PTS) or meshes (OBJ/OFF/STL, or a PLY with faces: sampled to
    MESH_POINTS points, the same ones at every read) -> float32 [N, 3 + C]: xyz, then normals, then
    colours when the file has them."""
    import open3d as o3d  # imported here: only point-cloud files need it

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    suffix = path.suffix.lower()
    try:
        truncated = is_truncated(path)
    except (ValueError, IndexError, KeyError) as e:  # a count or size that is not a number, a short line
        raise DataError(f"{path}: malformed header ({type(e).__name__}: {e})") from e
    if truncated:
        raise DataError(f"{path}: truncated file (less data than its header declares)")
    cloud = None
    with local_path(path) as file:  # open3d reads named files only (its stubs say os.PathLike; it takes str)
        if suffix in MESH_EXTENSIONS:
            mesh = o3d.io.read_triangle_mesh(str(file))  # type: ignore[arg-type]
            if len(mesh.triangles) > 0:
                o3d.utility.random.seed(MESH_SEED)
                cloud = mesh.sample_points_uniformly(MESH_POINTS, use_triangle_normal=True)
            elif suffix != ".ply":
                raise DataError(f"{path}: mesh has no triangles (unreadable or empty)")
        if cloud is None:
            cloud = o3d.io.read_point_cloud(str(file), format="xyz" if suffix == ".pts" else "auto")  # type: ignore[arg-type]
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
