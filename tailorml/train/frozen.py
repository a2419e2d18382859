"""The frozen encoder as a candidate: kept instead of the fine-tuned model when it scores higher.

A linear classifier on a frozen sentence encoder's averaged token states is a strong floor on
small data: with a few examples per class, fine-tuning the whole encoder can end below it
(docs/benchmarks.md, "A few hundred rows"). After fine-tuning, the run builds that floor as a
second candidate: the same base with mean pooling, untouched, and its output layer fitted on the
frozen features (train/probe.py; the L2 strength chosen on the eval split by the task's loss). Both
are scored on the eval split; the frozen one is kept only when its selection metric is strictly
better. The test split never takes part in the choice: it is scored for both, so eval.json shows
what the other candidate would have given.

The kept frozen candidate is an ordinary mean-pooled classifier folder (models/pooling.py):
evaluate, predict, serve and compress read it like any other.

Opt-in (`train.frozen_candidate: auto` or `true`). Measured on 12 few-shot runs and full Banking77
(docs/benchmarks.md, "The frozen encoder as a candidate"), it was kept 4 times: twice for +2.6
test points, once for -4.9, once for -0.2. An eval split of 30-80 rows cannot tell the two
candidates apart reliably, and that is where the frozen one is worth having.
"""

from __future__ import annotations

import time
from typing import Any

from tailorml.errors import ConfigError
from tailorml.train import probe

# The frozen features are fitted once; a grid wider than the probe's (whose start only has to be
# reasonable), since this fit is the model itself when it is kept.
L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def resolve(
    setting: bool | str, pretrained: bool, lora: bool, distill: bool, model_type: str | None,
    has_output_layer: bool,
) -> tuple[bool, str]:  # fmt: skip
    """(build the candidate?, why) for `train.frozen_candidate: setting`."""
    reasons = []  # each rules the candidate out
    if lora:
        reasons.append("LoRA keeps the base frozen already")
    if distill:
        reasons.append("a distilled student is judged against its teacher")
    if model_type != "bert":
        reasons.append(f"mean pooling is built for BERT-family encoders, not {model_type!r}")
    if not has_output_layer:
        reasons.append("the model's output layer is not one Linear layer")
    if setting is True and reasons:
        raise ConfigError(
            f"train.frozen_candidate: true cannot apply here: {'; '.join(reasons)}. "
            "Set `train.frozen_candidate: auto` (or false)."
        )
    if setting is False:
        return False, "set in the config"
    if reasons:
        return False, reasons[0]
    if setting is True:
        return True, "set in the config"
    if not pretrained:
        return False, "a random encoder: its frozen features are not worth a candidate"
    return True, (
        "a pretrained encoder: its frozen mean-pooled features with a fitted output layer are "
        "kept instead of the fine-tuned model when they score higher on eval"
    )


def build(
    model_cfg: Any, heads: list[Any], tokenizer: Any, enc: dict[str, dict[str, Any]],
    pad_id: int, device: Any, batch_size: int,
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """The frozen candidate (in eval mode, on `device`) and what its fit chose."""
    from tailorml.models import build_model

    t0 = time.perf_counter()
    frozen_cfg = model_cfg.model_copy(update={"pooling": "mean", "lora": None})
    model = build_model(frozen_cfg, heads, tokenizer).to(device).eval()
    fitted = probe.probe_heads(model, heads, enc, pad_id, device, batch_size, l2_grid=L2_GRID)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, {"heads": fitted["heads"], "seconds": round(time.perf_counter() - t0, 1)}


def choose(metric: str, fine_tuned: dict[str, Any], frozen: dict[str, Any]) -> bool:
    """Keep the frozen candidate? Only when its eval `metric` is strictly better (a tie keeps
    the fine-tuned model)."""
    from tailorml.evaluate.metrics import is_better, scalar_metrics

    ft, fr = scalar_metrics(fine_tuned).get(metric), scalar_metrics(frozen).get(metric)
    return fr is not None and ft is not None and is_better(metric, fr, ft)  # strict: a tie is no


def summary(
    metric: str, fine_tuned: dict[str, Any], frozen: dict[str, Any], fit: dict[str, Any]
) -> dict[str, Any]:
    """eval.json's `candidates`: both candidates' eval and test scalars, the fit, and the choice
    (`choose` on the eval split)."""
    from tailorml.evaluate.metrics import scalar_metrics

    keep = choose(metric, fine_tuned["eval"], frozen["eval"])
    ft_eval = scalar_metrics(fine_tuned["eval"]).get(metric)
    fr_eval = scalar_metrics(frozen["eval"]).get(metric)
    kept = "frozen" if keep else "fine_tuned"
    why = (
        f"kept the {'frozen encoder' if keep else 'fine-tuned model'}: eval {metric} "
        f"{fr_eval:.4f} frozen against {ft_eval:.4f} fine-tuned"
        if fr_eval is not None and ft_eval is not None
        else f"kept the fine-tuned model: the frozen candidate reports no {metric}"
    )
    return {
        "kept": kept,
        "why": why,
        "metric": metric,
        "fine_tuned": {s: scalar_metrics(fine_tuned[s]) for s in ("eval", "test")},
        "frozen": {**{s: scalar_metrics(frozen[s]) for s in ("eval", "test")}, "fit": fit},
    }
