"""Choose the variant to serve: the fastest at batch 1 whose accuracy drop stays within budget."""

from __future__ import annotations

from typing import Any

REFERENCE = "fp32"


def accuracy_drop(ref_acc: float, acc: float) -> float:
    """Drop in accuracy points (percentage points); negative = the variant is more accurate."""
    return round((ref_acc - acc) * 100, 4)


def choose(variants: list[dict[str, Any]], budget: float) -> tuple[str, str]:
    """Return (chosen name, message). `variants` holds the fp32 reference (name "fp32") and the
    measured variants (`accuracy`, `latency_ms_b1_p50`, `parity_passed`). Never picks a variant
    whose drop exceeds `budget`; falls back to fp32 with a message when none fits."""
    ref = next(v for v in variants if v["name"] == REFERENCE)
    fits = [
        v
        for v in variants
        if v["name"] != REFERENCE
        and v.get("parity_passed", True)
        and accuracy_drop(ref["accuracy"], v["accuracy"]) <= budget
    ]
    if not fits:
        over = [v for v in variants if v["name"] != REFERENCE]
        if over:
            best = min(over, key=lambda v: accuracy_drop(ref["accuracy"], v["accuracy"]))
            detail = (
                f" (smallest drop: {best['name']}, "
                f"{accuracy_drop(ref['accuracy'], best['accuracy']):.2f} points)"
            )
        else:
            detail = ""
        return REFERENCE, (
            f"No compressed variant stays within the accuracy budget of {budget:g} points"
            f"{detail}. Keeping the fp32 model. Raise --budget to trade more accuracy for speed."
        )
    best = min(fits, key=lambda v: v["latency_ms_b1_p50"])
    if best["latency_ms_b1_p50"] >= ref["latency_ms_b1_p50"]:
        return REFERENCE, (
            f"No variant within the budget of {budget:g} points is faster than fp32 at batch 1. "
            "Keeping the fp32 model."
        )
    drop = accuracy_drop(ref["accuracy"], best["accuracy"])
    speed = ref["latency_ms_b1_p50"] / best["latency_ms_b1_p50"]
    return best["name"], (
        f"Chose {best['name']}: {speed:.1f}x faster than fp32 at batch 1 (p50), "
        f"accuracy drop {drop:.2f} points (budget {budget:g})."
    )
