"""Image classification sample: scikit-learn's bundled handwritten digits (1797 images, 8x8, 10 classes).

python data/prepare_digits.py   # writes data/sample/digits/
"""

import numpy as np
from common import SAMPLE, assign_splits, write_manifest
from PIL import Image
from sklearn.datasets import load_digits


def main() -> None:
    digits = load_digits()
    out = SAMPLE / "digits"
    (out / "images").mkdir(parents=True, exist_ok=True)
    labels = [str(t) for t in digits.target]
    rows = []
    for i, (image, label, split) in enumerate(zip(digits.images, labels, assign_splits(labels))):
        path = f"images/{i:04d}.png"
        Image.fromarray((image * (255 / 16)).round().astype(np.uint8), mode="L").save(out / path, optimize=True)
        rows.append({"path": path, "label": label, "split": split})
    write_manifest(out, rows)


if __name__ == "__main__":
    main()
