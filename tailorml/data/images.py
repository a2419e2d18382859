"""Image data: read once into a uint8 tensor, checked, split, augmented on the fly in batches.

Sources (`data.train`, `data.eval`, `data.test`):

    a folder          one subfolder per class holding .png/.jpg/.jpeg/.bmp/.gif files
    an idx file       MNIST-style `*-images-idx3-ubyte[.gz]`; its labels are the matching
                      `*-labels-idx1-ubyte[.gz]` beside it
    an .npz file      arrays `x` (n, h, w) or (n, h, w, c), uint8 (or floats in 0..1), and `y`

Every image is decoded once into one uint8 array (n, height, width, channels); an image Pillow
cannot read, or of another size than the first (unless `images.size` resizes them), is a bad row
named by its path, reported like a bad table row (`data.on_bad_rows`). Training batches are
augmented as tensors: a random crop after zero padding and an optional horizontal flip.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tailorml.data.readers import BadRow
from tailorml.errors import DataError

if TYPE_CHECKING:
    import torch

    from tailorml.config.schema import ImagesConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MAX_PIXELS = 4096 * 4096  # a larger image is refused before it is decoded (decompression bombs)


@dataclass
class ImageSet:
    """Decoded images (n, h, w, c) uint8 and their labels as read (class names or ids)."""

    x: np.ndarray
    labels: list[Any]
    source: str
    names: list[str]  # where each image came from (file path, or `file[i]`)
    bad: list[BadRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: Any, source: str | None = None) -> ImageSet:
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet(
            self.x[idx],
            [self.labels[i] for i in idx],
            source or self.source,
            [self.names[i] for i in idx],
        )


def _decode(data: bytes | Path, size: tuple[int, int] | None, gray: bool | None) -> np.ndarray:
    """One image file as (h, w, c) uint8; raises OSError/ValueError when Pillow cannot."""
    from PIL import Image

    with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as opened:
        if opened.width * opened.height > MAX_PIXELS:
            raise ValueError(f"{opened.width}x{opened.height} pixels is over {MAX_PIXELS}")
        opened.load()
        if gray is None:
            gray = opened.mode in ("1", "L", "LA", "I", "I;16", "F")
        im = opened.convert("L" if gray else "RGB")
        if size is not None and (im.height, im.width) != size:
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_image(
    data: bytes, shape: tuple[int, int, int], what: str = "image"
) -> np.ndarray:  # (h, w, c)
    """Bytes of one image file as the (h, w, c) uint8 array a model of `shape` takes (resized
    and converted to its channels). ValueError naming `what` when it is no readable image."""
    h, w, c = shape
    try:
        return _decode(data, (h, w), c == 1)
    except Exception as exc:  # Pillow fails in many ways on bad bytes
        raise ValueError(f"{what} is not a readable image ({type(exc).__name__})") from None


def read_folder(path: Path, cfg: ImagesConfig) -> ImageSet:
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"{path} holds no class subfolders. An image folder has one subfolder per class "
            "(e.g. cat/, dog/) holding its images."
        )
    files = [
        (f, c)
        for c in classes
        for f in sorted((path / c).rglob("*"))
        if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
    ]
    want = (cfg.size[0], cfg.size[1]) if cfg.size else None  # resize to it; else all must match
    size = want
    gray = cfg.grayscale
    if gray is None:  # grayscale when every image is (checked on the headers only)
        modes = {_mode(f) for f, _ in files} - {"?"}  # unreadable files are reported below
        gray = modes <= {"1", "L", "LA", "I", "I;16", "F"}
    arrays, labels, names, bad = [], [], [], []
    for f, c in files:
        try:
            arr = _decode(f, want, gray)
        except Exception as exc:
            bad.append(BadRow(str(f), 0, f"unreadable image ({type(exc).__name__})"))
            continue
        if size is None:
            size = arr.shape[:2]
        elif arr.shape[:2] != size:
            bad.append(
                BadRow(
                    str(f), 0, f"image is {arr.shape[0]}x{arr.shape[1]}, the others "
                    f"{size[0]}x{size[1]} (set `images.size` to resize them all)",
                )  # fmt: skip
            )
            continue
        arrays.append(arr)
        labels.append(c)
        names.append(str(f))
    x = np.stack(arrays) if arrays else np.zeros((0, 1, 1, 1), dtype=np.uint8)
    return ImageSet(x, labels, str(path), names, bad)


def _mode(f: Path) -> str:
    from PIL import Image

    try:
        with Image.open(f) as im:
            return str(im.mode)
    except Exception:
        return "?"


def _open_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST format, gzip or not) as a uint8 array of its dimensions."""
    try:
        raw = _open_maybe_gz(path)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc}).") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte idx file (MNIST format).")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    start, count = 4 + 4 * ndim, int(np.prod(dims))
    if len(raw) - start != count:
        raise DataError(
            f"{path} is truncated or damaged: it declares {dims} ({count} bytes of data) but "
            f"holds {len(raw) - start}. Download it again."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


def labels_file(images: Path) -> Path:
    """`x-labels-idx1-ubyte.gz` beside `x-images-idx3-ubyte.gz`."""
    return images.with_name(images.name.replace("images-idx3", "labels-idx1"))


def read_idx_pair(path: Path) -> ImageSet:
    lab = labels_file(path)
    if lab == path or not lab.is_file():
        raise DataError(
            f"{path}: no labels file {lab.name} beside it. An idx image file "
            "(`*-images-idx3-ubyte[.gz]`) is read with its `*-labels-idx1-ubyte[.gz]`."
        )
    x, y = read_idx(path), read_idx(lab)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataError(
            f"{path} ({x.shape}) and {lab.name} ({y.shape}) do not match: want (n, h, w) images "
            "and n labels."
        )
    x = x[:, :, :, None]
    return ImageSet(np.ascontiguousarray(x), y.tolist(), str(path), _indexed(path, len(x)))


def read_npz(path: Path) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise DataError(f"{path} has arrays {list(z)}; an image npz needs `x` and `y`.")
            x, y = np.asarray(z["x"]), np.asarray(z["y"])
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable npz file ({exc}).") from None
    if x.ndim == 3:
        x = x[:, :, :, None]
    if x.ndim != 4 or len(x) != len(y) or x.shape[3] not in (1, 3):
        raise DataError(
            f"{path}: x has shape {x.shape} and y {y.shape}; want x (n, h, w) or (n, h, w, 1|3) "
            "and n labels in y."
        )
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating) or x.min() < 0 or x.max() > 1:
            raise DataError(f"{path}: x must be uint8 (0..255) or floats in 0..1, not {x.dtype}.")
        x = np.round(x * 255).astype(np.uint8)
    labels = [v.item() if hasattr(v, "item") else v for v in y.tolist()]
    return ImageSet(np.ascontiguousarray(x), labels, str(path), _indexed(path, len(x)))


def _indexed(path: Path, n: int) -> list[str]:
    return [f"{path}[{i}]" for i in range(n)]


def write_npz(path: Path, x: np.ndarray, labels: list[Any]) -> Path:
    """An npz image file (tests, examples): `x` uint8 (n, h, w[, c]) and labels `y`."""
    np.savez_compressed(path, x=np.asarray(x, dtype=np.uint8), y=np.asarray(labels))
    return path


def read_images(path: Path, cfg: ImagesConfig, key: str = "data.train") -> ImageSet:
    """The images at `path` (a class folder, an idx image file or an npz file)."""
    if not path.exists():
        hint = ""
        if "idx" in path.name:  # MNIST-style files are downloaded, never in the repository
            hint = (
                " MNIST-style data is not in the repository: on Debian/Ubuntu `sudo apt-get "
                "install dataset-fashion-mnist` puts Fashion-MNIST in /usr/share/datasets/"
                f"fashion-mnist; link that folder as {path.parent} (docs/images.md, set-up)."
            )
        raise DataError(f"`{key}`: {path} does not exist.{hint}")
    if path.is_dir():
        out = read_folder(path, cfg)
    elif ".npz" in path.suffixes:
        out = read_npz(path)
    elif "idx3" in path.name:
        out = read_idx_pair(path)
    else:
        raise DataError(
            f"`{key}`: {path} is not image data. Give a folder with one subfolder per class, an "
            "idx file (*-images-idx3-ubyte[.gz]) or an .npz file with arrays x and y."
        )
    if cfg.size and out.x.shape[1:3] != tuple(cfg.size) and not path.is_dir():
        out.x = resize(out.x, (cfg.size[0], cfg.size[1]))
    if cfg.grayscale is not None and not path.is_dir():
        out.x = to_channels(out.x, 1 if cfg.grayscale else 3)
    return out


def resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def to_channels(x: np.ndarray, c: int) -> np.ndarray:
    if x.shape[3] == c:
        return x
    if c == 3:
        return np.repeat(x, 3, axis=3)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.round(x.astype(np.float32) @ weights)[:, :, :, None].astype(np.uint8)


# ---- batches ---------------------------------------------------------------------------------


def to_float(x: torch.Tensor, mean: list[float], std: list[float], channels_last: bool) -> Any:
    """uint8 (n, h, w, c) -> normalised float (n, c, h, w) (channels-last in memory if asked)."""
    import torch

    out = x.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=out.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=out.dtype).view(1, -1, 1, 1)
    out = (out - m) / s
    return out.contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


def augment(
    x: torch.Tensor,
    pad: int,
    flip: bool,
    gen: torch.Generator | None = None,
    erase: float = 0.0,
) -> Any:
    """A batch of uint8 images (n, h, w, c), each randomly cropped after zero padding by `pad`,
    (with `flip`) flipped left-right with probability 1/2, and (with `erase` > 0) given, with
    that probability, a rectangle of random noise covering 2-25% of its area with an aspect ratio
    between 1/3 and 3 (random erasing). Whole-batch tensor operations, no Python loop."""
    import torch
    import torch.nn.functional as F

    n, h, w, _ = x.shape
    if pad:
        padded = F.pad(x.permute(0, 3, 1, 2), (pad, pad, pad, pad)).permute(0, 2, 3, 1)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (n, h, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (n, 1, w)
        x = padded[torch.arange(n)[:, None, None], rows, cols]
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(2), x)
    if erase > 0:
        x = _erase(x, erase, gen)
    return x


def _erase(x: torch.Tensor, p: float, gen: torch.Generator | None) -> Any:
    import math

    import torch

    n, h, w, c = x.shape
    area = torch.empty(n).uniform_(0.02, 0.25, generator=gen) * h * w
    log_r = torch.empty(n).uniform_(math.log(1 / 3), math.log(3), generator=gen)
    eh = (area * log_r.exp()).sqrt().round().clamp(1, h).long()
    ew = (area / log_r.exp()).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(n, generator=gen) * (h - eh + 1)).long()
    x0 = (torch.rand(n, generator=gen) * (w - ew + 1)).long()
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_y = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])  # (n, h)
    in_x = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])  # (n, w)
    on = torch.rand(n, generator=gen) < p
    mask = (in_y[:, :, None] & in_x[:, None, :] & on[:, None, None])[..., None]  # (n, h, w, 1)
    noise = torch.randint(0, 256, x.shape, generator=gen, dtype=torch.uint8)
    return torch.where(mask, noise, x)


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, on the 0..1 scale (normalisation)."""
    f = x.reshape(-1, x.shape[3]).astype(np.float64) / 255.0
    std = np.maximum(f.std(axis=0), 1e-3)
    return [round(float(v), 6) for v in f.mean(axis=0)], [round(float(v), 6) for v in std]
