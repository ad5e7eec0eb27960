"""Video files: a video decoded lazily with PyAV (only the frames a clip needs), or a folder of
frame images; the video modality (video.py) reads through these."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..files import opened
from .image import ImageEncoder, read_image


def to_rgb(frame: Any) -> np.ndarray:
    """A decoded `av.VideoFrame` -> uint8 [H, W, 3], converted on this thread: swscale's default slice
    threads, started for every frame, cost 4 to 20 times the decoding of a small clip."""
    return frame.to_ndarray(format="rgb24", threads=1)


class VideoFile:
    """A video file (or `Blob`) read lazily: `len()` is its frame count (from demuxing, nothing decoded) and
    `frames(indices)` decodes the stream up to the last index asked for, keeping only those frames:
    memory holds the sampled frames, never the whole clip."""

    def __init__(self, path: Path):
        import av

        self.path = path
        try:
            with av.open(opened(path)) as container:
                stream = container.streams.video[0]
                self.height, self.width = stream.codec_context.height, stream.codec_context.width
                self.length = sum(1 for packet in container.demux(stream) if packet.size)
        except (av.FFmpegError, IndexError, ValueError) as e:
            raise DataError(f"{path}: cannot decode video ({e})") from e
        if not self.length:
            raise DataError(f"{path}: video has no frames")

    def __len__(self) -> int:
        return self.length

    def frames(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 frames [len(indices), H, W, 3]; an index past the last decodable frame gets that frame."""
        import av

        wanted, kept, frame = {int(i) for i in indices}, {}, None
        try:
            with av.open(opened(self.path)) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i in wanted:
                        kept[i] = to_rgb(frame)
                    if i >= max(wanted):
                        break
                if frame is None:
                    raise DataError(f"{self.path}: video has no frames")
                tail = None if wanted <= kept.keys() else to_rgb(frame)
            return torch.from_numpy(np.stack([kept.get(int(i), tail) for i in indices]))  # [k, H, W, 3]
        except (av.FFmpegError, ValueError) as e:  # (frames of different sizes do not stack)
            raise DataError(f"{self.path}: cannot decode video ({e})") from e

    @classmethod
    def verify(cls, path: Path) -> int:
        """Decode every frame (none kept) -> the frame count; `DataError` naming the file if that fails."""
        import av

        try:
            with av.open(opened(path)) as container:
                count = sum(1 for _ in container.decode(video=0))
        except (av.FFmpegError, IndexError, ValueError) as e:
            raise DataError(f"{path}: cannot decode video ({e})") from e
        if not count:
            raise DataError(f"{path}: video has no frames")
        return count


def read_frame_folder(path: Path) -> torch.Tensor:
    """A folder of frame images (sorted by name) -> uint8 frames [T, H, W, 3]."""
    frames = sorted(p for p in path.iterdir() if p.suffix.lower() in ImageEncoder.suffixes)
    if not frames:
        raise DataError(f"{path}: folder holds no frame images")
    arrays = [np.asarray(read_image(p).convert("RGB")) for p in frames]
    if len({a.shape for a in arrays}) > 1:
        raise DataError(f"{path}: frames differ in size")
    return torch.from_numpy(np.stack(arrays))
