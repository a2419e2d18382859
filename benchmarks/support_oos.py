"""Which score tells out-of-scope messages from in-scope ones best, on a trained support run.

The assistant hands a message off when its intent model is not confident. This compares the
confidence it uses (the max softmax probability) with other out-of-scope scores computed from
the same fine-tuned intent model, every one "higher = more in scope":

  msp        max softmax probability (what the assistant uses today)
  maxlogit   the largest logit
  energy     logsumexp of the logits (the negative free energy)
  knn1/knn10 cosine similarity of the message's pooled feature (the classifier's input) to its
             1st / 10th nearest training message (features L2-normalised)
  maha       minus the smallest Mahalanobis distance to a class mean (shared covariance, fitted
             on the training messages' pooled features)
  maha-cls   the same on the last layer's [CLS] state (before the pooler)
  maha-logits, knn1-logits
             the same on the logit vectors: these need nothing but the logits, so they work
             with every runtime (an ONNX variant returns only logits)

For each: the threshold is calibrated on the run's eval split (RUN/data/eval_all.csv, held-out
intents labelled out of scope) for out-of-scope recall --target, as `tailor support calibrate`
does for the intent model alone; then on the test file: in-scope accuracy (right intent and
not handed off), out-of-scope recall and precision, hand-off rate, and AUROC (in scope vs out of
scope; no threshold) on both splits. Selection uses the eval split only.

    python benchmarks/support_oos.py runs/support --test runs/support/data/test_all.csv \\
        --json benchmarks/results/support_oos.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def features(predictor: Any, texts: list[str], chunk: int = 32) -> dict[str, np.ndarray]:
    """Logits, pooled features (the classifier's input) and [CLS] states of `texts`, in order."""
    import torch

    net = predictor.model
    seen: dict[str, list[np.ndarray]] = {"pooled": [], "cls": []}

    def on_classifier(_m: Any, args: tuple[Any, ...]) -> None:
        seen["pooled"].append(args[0].detach().float().numpy())

    def on_pooler(_m: Any, args: tuple[Any, ...]) -> None:
        seen["cls"].append(args[0][:, 0].detach().float().numpy())

    hooks = [net.classifier.register_forward_pre_hook(on_classifier)]
    pooler = getattr(getattr(net, net.base_model_prefix, None), "pooler", None)
    if pooler is not None:
        hooks.append(pooler.register_forward_pre_hook(on_pooler))
    logits = []
    try:
        with torch.inference_mode():
            for i in range(0, len(texts), chunk):
                logits.append(predictor.predict(texts[i : i + chunk]))
    finally:
        for h in hooks:
            h.remove()
    out = {"logits": np.concatenate(logits).astype(np.float64)}
    out.update({k: np.concatenate(v).astype(np.float64) for k, v in seen.items() if v})
    return out


class Mahalanobis:
    """Class means and one shared covariance (its pseudo-inverse) of training features."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        classes = np.unique(y)
        self.means = np.stack([x[y == c].mean(0) for c in classes])
        centred = x - self.means[np.searchsorted(classes, y)]
        cov = centred.T @ centred / len(x)
        self.precision = np.linalg.pinv(cov, hermitian=True)

    def score(self, x: np.ndarray) -> np.ndarray:
        # (x - m)' P (x - m) expanded, so no (n, classes, dim) array is built
        xp = x @ self.precision
        mp = self.means @ self.precision
        dist = (xp * x).sum(1)[:, None] - 2 * xp @ self.means.T + (mp * self.means).sum(1)[None, :]
        return -dist.min(1)


def knn_score(train: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    sims = unit(x) @ unit(train).T
    return -np.sort(-sims, axis=1)[:, k - 1]


def scores(train: dict[str, np.ndarray], split: dict[str, np.ndarray],
           maha: dict[str, Mahalanobis]) -> dict[str, np.ndarray]:  # fmt: skip
    from scipy.special import logsumexp

    from tailorml.apps.support.train import max_softmax

    lg = split["logits"]
    out = {
        "msp": max_softmax(lg)[1],  # the assistant's own confidence
        "maxlogit": lg.max(1),
        "energy": logsumexp(lg, axis=1),
        "knn1": knn_score(train["pooled"], split["pooled"], 1),
        "knn10": knn_score(train["pooled"], split["pooled"], 10),
        "maha": maha["pooled"].score(split["pooled"]),
    }
    if "cls" in maha:
        out["maha-cls"] = maha["cls"].score(split["cls"])
    out["maha-logits"] = maha["logits"].score(lg)
    out["knn1-logits"] = knn_score(train["logits"], lg, 1)
    return out


def main() -> None:
    from sklearn.metrics import roc_auc_score

    from tailorml.apps.support.assistant import read_support_json
    from tailorml.apps.support.train import calibrate_threshold, intent_scores, read_intent_rows
    from tailorml.predictors import load_predictor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--test", type=Path, default=None, help="default: RUN/data/test_all.csv")
    ap.add_argument("--target", type=float, default=None, help="default: the run's target")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    meta = read_support_json(a.run)
    oos = meta["out_of_scope_label"]
    target = a.target if a.target is not None else meta.get("target_oos_recall") or 0.8
    pred = load_predictor(a.run / meta["intent_model"], threads=a.threads)
    labels = list(pred.labels or [])

    def rows(path: Path, key: str) -> list[dict[str, str]]:
        return read_intent_rows(path, "text", "label", oos, [], key=key)

    data = {
        "train": rows(a.run / "data" / "train.csv", "train"),
        "eval": rows(a.run / "data" / "eval_all.csv", "eval"),
        "test": rows(a.test or a.run / "data" / "test_all.csv", "test"),
    }
    feats = {}
    for k, v in data.items():
        print(f"encoding {k}: {len(v):,} messages", flush=True)
        feats[k] = features(pred, [r["text"] for r in v])
    y_train = np.array([labels.index(r["label"]) for r in data["train"]])
    maha = {k: Mahalanobis(feats["train"][k], y_train) for k in ("pooled", "cls", "logits")
            if k in feats["train"]}  # fmt: skip
    splits = ("eval", "test")
    per_split = {s: scores(feats["train"], feats[s], maha) for s in splits}
    gold = {s: [r["label"] for r in data[s]] for s in splits}
    named = {s: [labels[i] for i in feats[s]["logits"].argmax(1)] for s in splits}
    is_oos = {s: np.array([g == oos for g in gold[s]]) for s in splits}
    result: dict[str, Any] = {"run": str(a.run), "target_oos_recall": target, "scores": {}}
    for name in per_split["eval"]:
        row: dict[str, Any] = {}
        threshold = calibrate_threshold(per_split["eval"][name][is_oos["eval"]], target)
        for s in splits:
            sc = per_split[s][name]
            row[s] = {
                **intent_scores(gold[s], named[s], sc >= threshold, oos),
                "auroc": round(float(roc_auc_score(~is_oos[s], sc)), 4),
            }
        row["threshold"] = threshold
        result["scores"][name] = row
        t = row["test"]
        print(f"{name:11} eval AUROC {row['eval']['auroc']:.4f} | test AUROC {t['auroc']:.4f} "
              f"in-scope acc {t['in_scope_accuracy']:.4f} OOS recall {t['oos_recall']:.4f} "
              f"precision {t['oos_precision']:.4f} hand-off {t['handoff_rate']:.4f}",
              flush=True)  # fmt: skip
    nothing_handed = np.ones(len(gold["test"]), dtype=bool)
    result["test_intent_accuracy_in_scope"] = intent_scores(
        gold["test"], named["test"], nothing_handed, oos
    )["in_scope_accuracy"]
    print("intent accuracy on in-scope test rows (no hand-off):",
          result["test_intent_accuracy_in_scope"])  # fmt: skip
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
