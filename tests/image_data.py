"""Small generated image data in the formats the image readers take (tests and the docs test).

    python -m tests.image_data FOLDER

writes FOLDER/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz: 300 + 100 generated 28x28 images
of 10 classes in the file layout of Fashion-MNIST (the docs test's stand-in for it).
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np


def idx_bytes(arr: np.ndarray) -> bytes:
    """An unsigned-byte idx file (MNIST format) holding `arr`."""
    dims = b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return bytes([0, 0, 8, arr.ndim]) + dims + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def class_images(
    n: int, seed: int, classes: int = 10, size: int = 28
) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size) uint8 images whose class is where a bright square sits, and the labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 80, size=(n, size, size), dtype=np.uint8)
    y = np.arange(n) % classes
    cell = size // 4
    for i, k in enumerate(y):
        r, c = divmod(int(k), 4)
        x[i, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = 220
    return x, y.astype(np.uint8)


def write_idx_set(folder: Path, n_train: int = 300, n_test: int = 100) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = class_images(n, seed)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
    return folder


if __name__ == "__main__":
    print(write_idx_set(Path(sys.argv[1])))
