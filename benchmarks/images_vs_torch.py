"""Training speed of an image run: tailorml's loop (`tailor finetune` on an image config) vs a
plain PyTorch loop of the same model, batch, optimizer and augmentation, in one process.

    python benchmarks/images_vs_torch.py [--data data/fashion_mnist/train-images-idx3-ubyte.gz]
        [--images 6000] [--steps 60] [--batch 128] [--threads 2] [--repeats 3]

Both sides train `resnet-small` ([32, 64, 128] x [1, 1, 1]) on the same 28x28 images (the first
--images of --data, or generated ones when it is absent) for --steps optimizer steps, with AdamW,
random crop (padding 2) + flip, channels-last, fp32. Ours is timed by the run itself
(eval.json `train_samples_per_s`: loop time without evaluation and checkpoints; one evaluation
at the end on 64 held-out images); the plain loop is timed around its steps. Repetitions
alternate between the two; the table reports medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see DESIGN.md: shared cores


def plain_loop(x, y, steps: int, batch: int, seed: int) -> float:  # type: ignore[no-untyped-def]
    """Images/s of the textbook loop: sample, crop + flip, normalise, forward, backward, step."""
    import torch
    import torch.nn.functional as F

    from tailorml.models.images import ImageClassifier

    torch.manual_seed(seed)
    model = ImageClassifier("resnet", 1, 10, [32, 64, 128], [1, 1, 1])
    model = model.to(memory_format=torch.channels_last).train()  # type: ignore[call-overload]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255)  # decoded once, as ours
    xt = (xt - xt.mean()) / xt.std()
    yt = torch.from_numpy(y).long()
    n = len(xt)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,))
        xb = F.pad(xt[idx], (2, 2, 2, 2))
        dy, dx = torch.randint(0, 5, (2,)).tolist()  # one crop offset per batch (simplest loop)
        xb = xb[:, :, dy : dy + 28, dx : dx + 28]
        if torch.rand(()) < 0.5:
            xb = xb.flip(3)
        xb = xb.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(xb), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def ours(npz: Path, steps: int, batch: int, threads: int, out: Path) -> float:
    from tailorml.config.load import validate_mapping
    from tailorml.recipes.images import train_images

    raw = {
        "name": "bench",
        "output_dir": str(out),
        "data": {"train": str(npz), "eval_fraction": 0.01, "test_fraction": 0.01},
        "task": {"type": "image-classification"},
        "model": {"base": "resnet-small"},
        "images": {"crop_padding": 2, "flip": True},
        "train": {
            "max_steps": steps,
            "batch_size": batch,
            "lr": 2e-3,
            "threads": threads,
            "log_every_steps": 1000,
            "schedule": "constant",
            "warmup_steps": 0,
        },
    }
    cfg, problems = validate_mapping(raw)
    assert cfg is not None, problems
    results = train_images(cfg, overwrite=True)
    return float(results["train"]["train_samples_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, default=Path("data/fashion_mnist/train-images-idx3-ubyte.gz")
    )
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import numpy as np
    import torch

    from tailorml.config.schema import ImagesConfig
    from tailorml.data.images import read_images, write_npz

    torch.set_num_threads(args.threads)
    if args.data.exists():
        s = read_images(args.data, ImagesConfig())
        x, y = s.x[: args.images], np.asarray(s.labels[: args.images])
        source = str(args.data)
    else:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (args.images, 28, 28, 1), dtype=np.uint8)
        y = rng.integers(0, 10, args.images)
        source = "generated"
    with tempfile.TemporaryDirectory() as tmp:
        npz = write_npz(Path(tmp) / "train.npz", x, y.tolist())
        mine, plain = [], []
        for r in range(args.repeats):
            mine.append(ours(npz, args.steps, args.batch, args.threads, Path(tmp) / "run"))
            plain.append(plain_loop(x, y, args.steps, args.batch, r))
            print(f"repeat {r + 1}: ours {mine[-1]:.0f} img/s, plain {plain[-1]:.0f} img/s")
    result = {
        "data": source,
        "images": len(x),
        "steps": args.steps,
        "batch": args.batch,
        "threads": args.threads,
        "ours_images_per_s": round(statistics.median(mine), 1),
        "plain_images_per_s": round(statistics.median(plain), 1),
    }
    result["ratio"] = round(result["ours_images_per_s"] / result["plain_images_per_s"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
