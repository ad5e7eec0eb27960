"""Video action-recognition sample: a handwritten digit (scikit-learn digits) moving on a 32x32
canvas for 16 frames, H.264 MP4 (PyAV). Nine actions, which no single frame can tell apart:
left, right, up, down, rotate_cw, rotate_ccw, grow, shrink, stay. Each clip moves a different
digit image, taken from the `digits` split of the clip's own split (no image in two splits).

    python data/prepare_video.py   # writes data/sample/moving_digits/
"""

import av
import numpy as np
from common import SAMPLE, assign_splits, write_manifest
from PIL import Image
from sklearn.datasets import load_digits

ACTIONS = ["left", "right", "up", "down", "rotate_cw", "rotate_ccw", "grow", "shrink", "stay"]
PER_CLASS, FRAMES, SIZE, FPS = 20, 16, 32, 8


def render(digit: np.ndarray, action: str, rng: np.random.Generator) -> np.ndarray:
    """One clip: uint8 frames [FRAMES, SIZE, SIZE, 3]."""
    glyph = Image.fromarray((digit * (255 / 16)).astype(np.uint8)).resize((14, 14), Image.BILINEAR)
    start = rng.uniform(-4, 4, size=2)  # random start offset, so position alone gives no answer
    frames = []
    for t in np.linspace(0.0, 1.0, FRAMES):
        shift, angle, scale = np.zeros(2), 0.0, 1.0
        move = {"left": (-12, 0), "right": (12, 0), "up": (0, -12), "down": (0, 12)}.get(action)
        if move:
            shift = (t - 0.5) * np.array(move)
        angle = {"rotate_cw": -180.0 * t, "rotate_ccw": 180.0 * t}.get(action, 0.0)
        scale = {"grow": 0.6 + 0.8 * t, "shrink": 1.4 - 0.8 * t}.get(action, 1.0)
        size = max(2, int(round(14 * scale)))
        g = glyph.resize((size, size), Image.BILINEAR).rotate(angle, resample=Image.BILINEAR)
        canvas = Image.new("L", (SIZE, SIZE))
        x, y = (np.array([SIZE, SIZE]) - size) / 2 + start + shift
        canvas.paste(g, (int(round(x)), int(round(y))))
        frames.append(np.repeat(np.asarray(canvas)[..., None], 3, axis=2))
    return np.stack(frames)


def write_mp4(path, frames: np.ndarray) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    rng = np.random.default_rng(0)
    digits = load_digits()
    digit_splits = assign_splits([str(t) for t in digits.target])  # the digits set's splits (prepare_digits.py)
    pools = {
        s: list(rng.permutation([i for i, d in enumerate(digit_splits) if d == s])) for s in ("train", "val", "test")
    }
    out = SAMPLE / "moving_digits"
    (out / "clips").mkdir(parents=True, exist_ok=True)
    items = [a for a in ACTIONS for _ in range(PER_CLASS)]
    rows = []
    for i, (action, split) in enumerate(zip(items, assign_splits(items))):
        source = int(pools[split].pop())  # each digit image in one clip at most
        path = f"clips/{i:03d}_{action}.mp4"
        write_mp4(out / path, render(digits.images[source], action, rng))
        rows.append({"path": path, "label": action, "split": split, "source": f"digits/images/{source:04d}.png"})
    write_manifest(out, rows)


if __name__ == "__main__":
    main()
