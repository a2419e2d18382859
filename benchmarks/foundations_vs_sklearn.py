"""The numpy MLP of tailorml.foundations against scikit-learn's MLPClassifier, same split.

Same architecture (one hidden layer of --hidden ReLU units, softmax output, cross-entropy), same
optimiser (Adam, lr 1e-3, betas 0.9/0.999, eps 1e-8), batch size, epochs, no L2 (sklearn
alpha=0), float64 for both; sklearn's early stopping is turned off (tol=0 and
n_iter_no_change > epochs) so both run every epoch. What differs: the initialisation (ours He
normal, sklearn's Glorot uniform) and the shuffling, each seeded. For every data set, --runs
seeds, the two fitted alternately on the same machine; the medians of test accuracy and fit
time are reported, with the time ratio.

Data: scikit-learn's digits (1,797 8x8 images, bundled; a stratified 70/30 split, seed 0) and
a Fashion-MNIST subset read from --fashion (idx gz: the first --train images of the official
train set, the official 10,000 test images), pixels scaled to [0, 1].

    flock /tmp/tailorml-heavy.lock python benchmarks/foundations_vs_sklearn.py --threads 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tailorml.foundations import MLPClassifier  # noqa: E402  (this checkout's)


def machine() -> dict[str, Any]:
    from tailorml.env import machine_info

    return {**machine_info(), "numpy": np.__version__}


def read_idx(path: Path) -> np.ndarray:
    """An idx(.gz) file: magic (2 zero bytes, dtype 0x08 = uint8, number of dims), the dims as
    big-endian int32, then the data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an idx file of uint8")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return tuple(train_test_split(X / 16.0, y, test_size=0.3, stratify=y, random_state=0))


def fashion(folder: Path, n_train: int) -> tuple[np.ndarray, ...]:
    def images(name: str) -> np.ndarray:
        a = read_idx(folder / name)
        return a.reshape(len(a), -1).astype(np.float64) / 255.0

    Xtr = images("train-images-idx3-ubyte.gz")[:n_train]
    ytr = read_idx(folder / "train-labels-idx1-ubyte.gz")[:n_train].astype(np.int64)
    Xte = images("t10k-images-idx3-ubyte.gz")
    yte = read_idx(folder / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return Xtr, Xte, ytr, yte


def fit_ours(X: np.ndarray, y: np.ndarray, a: argparse.Namespace, epochs: int, seed: int) -> Any:
    return MLPClassifier(
        hidden=(a.hidden,), activation="relu", optimizer="adam", lr=1e-3,
        batch_size=a.batch_size, epochs=epochs, l2=0.0, seed=seed,
    ).fit(X, y)  # fmt: skip


def fit_sklearn(X: np.ndarray, y: np.ndarray, a: argparse.Namespace, epochs: int, seed: int) -> Any:
    model = SkMLPClassifier(
        hidden_layer_sizes=(a.hidden,), activation="relu", solver="adam", alpha=0.0,
        learning_rate_init=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
        batch_size=a.batch_size, max_iter=epochs, shuffle=True, random_state=seed,
        tol=0.0, n_iter_no_change=epochs + 1, early_stopping=False,
    )  # fmt: skip
    with warnings.catch_warnings():  # "max_iter reached": asked for, not a problem here
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, y)


def compare(name: str, data: tuple[np.ndarray, ...], epochs: int, a: argparse.Namespace) -> dict:
    Xtr, Xte, ytr, yte = data
    runs: dict[str, list[dict[str, float]]] = {"numpy_mlp": [], "sklearn": []}
    for seed in range(a.runs):
        order = [("numpy_mlp", fit_ours), ("sklearn", fit_sklearn)]
        for key, fit in order if seed % 2 == 0 else order[::-1]:  # alternate who goes first
            t0 = time.perf_counter()
            model = fit(Xtr, ytr, a, epochs, seed)
            seconds = time.perf_counter() - t0
            acc = float((model.predict(Xte) == yte).mean())
            runs[key].append({"seed": seed, "test_accuracy": acc, "fit_seconds": seconds})
            print(f"{name:14s} {key:10s} seed {seed}: acc {acc:.4f}  fit {seconds:6.2f} s")
    med = {
        k: {
            "test_accuracy": statistics.median(r["test_accuracy"] for r in v),
            "fit_seconds": statistics.median(r["fit_seconds"] for r in v),
        }
        for k, v in runs.items()
    }
    return {
        "data": name,
        "train_rows": len(Xtr),
        "test_rows": len(Xte),
        "features": Xtr.shape[1],
        "epochs": epochs,
        "median": med,
        "time_ratio_numpy_over_sklearn": med["numpy_mlp"]["fit_seconds"]
        / med["sklearn"]["fit_seconds"],
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--digits-epochs", type=int, default=30)
    ap.add_argument("--fashion-epochs", type=int, default=10)
    ap.add_argument("--train", type=int, default=20_000, help="Fashion-MNIST training images")
    ap.add_argument("--runs", type=int, default=3, help="seeds per model; medians reported")
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads, for both")
    ap.add_argument("--fashion", type=Path, default=REPO.parent / "shared/data/fashion_mnist")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    from threadpoolctl import threadpool_limits

    started = machine()  # the date and load average when the runs begin
    results = []
    with threadpool_limits(a.threads):
        results.append(compare("digits", digits(), a.digits_epochs, a))
        if (a.fashion / "train-images-idx3-ubyte.gz").is_file():
            results.append(
                compare("fashion-mnist", fashion(a.fashion, a.train), a.fashion_epochs, a)
            )
        else:
            print(f"Fashion-MNIST not found in {a.fashion}: skipped (--fashion DIR)")
    report = {
        "machine": started,
        "load_average_at_end": os.getloadavg(),
        "threads": a.threads,
        "command": " ".join(sys.argv),
        "settings": {"hidden": a.hidden, "batch_size": a.batch_size, "runs": a.runs},
        "results": results,
    }
    cols = ["data", "train / test", "epochs", "numpy MLP acc", "sklearn acc", "numpy fit s"]
    cols += ["sklearn fit s", "time ratio (numpy / sklearn)"]
    print("\n| " + " | ".join(cols) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        o, s = r["median"]["numpy_mlp"], r["median"]["sklearn"]
        print(
            f"| {r['data']} | {r['train_rows']:,} / {r['test_rows']:,} | {r['epochs']} | "
            f"{o['test_accuracy']:.4f} | {s['test_accuracy']:.4f} | {o['fit_seconds']:.2f} | "
            f"{s['fit_seconds']:.2f} | {r['time_ratio_numpy_over_sklearn']:.2f}x |"
        )
    out = (
        a.out
        or REPO / f"benchmarks/results/foundations_vs_sklearn_{time.strftime('%Y-%m-%d')}.json"
    )
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
