"""Temperature scaling of the sentiment head: probabilities the detector can add up.

A fine-tuned classifier is usually over-confident: its softmax says 0.99 where it is right 90% of
the time. The detector sums p_negative over a window (the expected negative count), so the
probabilities must mean what they say. One scalar T > 0 divides the head's logits before the
softmax; T is fitted on the eval split (labels the model was not trained on) by minimising the
negative log-likelihood (Guo et al. 2017, "On Calibration of Modern Neural Networks"). The argmax
does not change, so accuracy does not either.

`calibrate_folder` scores a labeled file with a model folder (torch, int8 or ONNX: each variant
gets its own T, as their logits differ a little) and writes `calibration.json` into that folder;
`ModelScorer` applies it when present. `tailor finwatch train` calibrates the model it trains;
`tailor finwatch calibrate CONFIG` calibrates the folder a config scores with (a compressed one).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from tailorml.errors import ConfigError
from tailorml.files import atomic_json

FILE = "calibration.json"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    lp = _log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-lp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] minimising `nll` (golden-section search on log T; the NLL is convex
    in 1/T, so it has one minimum)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ConfigError("fit_temperature needs at least one labeled example.")
    lo, hi = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return math.exp((lo + hi) / 2)


def read_labeled(path: Path, labels: list[str], limit: int | None = None) -> tuple[list[str], Any]:
    """Texts and label indices (into the head's `labels`) of a `text,label` CSV; integer labels
    are indices into the head's labels, as `data.label_names` declares them in training."""
    from tailorml.data.examples import canonical_label

    if not Path(path).is_file():
        raise ConfigError(f"calibration data {path} not found; give a labeled CSV (text,label).")
    texts, idx = [], []
    with Path(path).open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            name = canonical_label(row["label"], labels)
            if name not in labels:
                raise ConfigError(
                    f"{path}: label {row['label']!r} is not one of the head's labels {labels}."
                )
            texts.append(row["text"])
            idx.append(labels.index(name))
            if limit and len(texts) >= limit:
                break
    return texts, np.asarray(idx, dtype=np.int64)


def calibrate_folder(
    folder: Path,
    data: Path,
    head: str = "sentiment",
    threads: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Fit T for `head` of the model in `folder` on the labeled file `data`; write
    `folder/calibration.json` and return what it holds."""
    from tailorml.predictors import load_predictor
    from tailorml.tasks.heads import named_heads

    pred = load_predictor(folder, threads=threads)
    heads = {h.name: h for h in named_heads(pred.heads)}
    h = heads.get(head) or (heads.get("") if len(heads) == 1 else None)
    if h is None or not h.labels:
        raise ConfigError(f"{folder} has no classification head {head!r} (heads: {sorted(heads)}).")
    texts, y = read_labeled(data, list(h.labels), limit)
    logits = pred.predict_sorted(texts, 8)[:, h.columns]
    t = fit_temperature(logits, y)
    out = {
        "head": h.name,
        "temperature": round(t, 5),
        "data": str(data),
        "examples": len(y),
        "nll_before": round(nll(logits, y), 5),
        "nll_after": round(nll(logits, y, t), 5),
        "accuracy": round(float((logits.argmax(axis=1) == y).mean()), 5),
    }
    atomic_json(Path(folder) / FILE, out)
    return out


def load_temperature(folder: Path | None, head: str) -> float:
    """T of `head` from `folder/calibration.json`; 1.0 when the folder has none."""
    import json

    if folder is None:
        return 1.0
    path = Path(folder) / FILE
    if not path.is_file():
        return 1.0
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("head") not in (head, ""):
        return 1.0
    t = float(info["temperature"])
    if not t > 0:
        raise ConfigError(f"{path}: temperature {t} must be > 0; run `tailor finwatch calibrate`.")
    return t
