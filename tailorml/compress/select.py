"""Choose the variant to serve: the fastest at batch 1 whose accuracy drop stays within budget
and whose outputs agree with fp32 (the parity rule), and whose test accuracy holds (the test
rule, below) — and among those as fast as the fastest within the timing spread over
repetitions (`as_fast`), the smallest on disk; for a generation run, the fastest in tokens/s
at batch 8 whose perplexity rise stays within budget.

The test rule. The budget is judged on the eval split. Each variant is also scored on the test
split, and its test drop against fp32 (points) comes with the standard error of that paired
difference, SE = 100 * sd(c_fp32 - c_v) / sqrt(n), c = 1 where a row is predicted right. A
variant whose eval drop is within budget is still not chosen when its test drop is over the
budget by more than TEST_Z standard errors (drop - TEST_Z * SE > budget): the eval result did
not hold on data selection never saw. Test never ranks variants (speed does) and never admits
one that eval rejected; without a test split the rule is skipped."""

from __future__ import annotations

import math
from typing import Any

REFERENCE = "fp32"
# A test drop this many standard errors over the budget rejects a variant (about 2.3% one-sided
# for a normal difference: a variant that truly holds the budget is rarely rejected).
TEST_Z = 2.0


def accuracy_drop(ref_acc: float, acc: float) -> float:
    """Drop in accuracy points (percentage points); negative = the variant is more accurate."""
    return round((ref_acc - acc) * 100, 4)


def exclusion(v: dict[str, Any], ref: dict[str, Any], budget: float) -> str | None:
    """Why variant `v` cannot be chosen (the rule and its numbers), or None when it is eligible."""
    if not v.get("parity_passed", True):
        agree = v.get("agreement")
        shown = f" {agree:.3f}" if isinstance(agree, float) else ""
        return f"agreement with fp32{shown} is below the parity threshold"
    drop = accuracy_drop(ref["accuracy"], v["accuracy"])
    if drop > budget:
        return f"accuracy drop {drop:.2f} points is over the budget of {budget:g}"
    if not holds_on_test(v, budget):
        return (
            f"its eval accuracy did not hold on the test split: test drop "
            f"{v['test_accuracy_drop_points']:.2f} ± {v['test_drop_se_points']:.2f} points is over "
            f"the budget of {budget:g} by more than {TEST_Z:g} standard errors"
        )
    return None


def holds_on_test(v: dict[str, Any], budget: float) -> bool:
    """The test rule: test drop - TEST_Z * SE <= budget (True when there is no test split)."""
    drop = v.get("test_accuracy_drop_points")
    if drop is None:
        return True
    return bool(drop - TEST_Z * v.get("test_drop_se_points", 0.0) <= budget)


def pareto_front(variants: list[dict[str, Any]], cost: str, quality: str = "accuracy") -> list[str]:
    """Names of the variants no other variant beats on both `quality` (higher is better) and
    `cost` (lower is better; e.g. latency_ms_b1_p50 or size_bytes), in order of cost."""

    def beats(w: dict[str, Any], v: dict[str, Any]) -> bool:
        return (
            w[quality] >= v[quality]
            and w[cost] <= v[cost]
            and (w[quality] > v[quality] or w[cost] < v[cost])
        )

    front = [v for v in variants if not any(beats(w, v) for w in variants if w is not v)]
    return [v["name"] for v in sorted(front, key=lambda v: v[cost])]


def as_fast(v: dict[str, Any], fastest: dict[str, Any]) -> bool:
    """Speed tie: `v`'s fastest timed repetition (its lowest batch-1 p50) reached the fastest
    variant's median. Under a drifting machine load two equally fast models swap places from
    one repetition to the next (seen: 1.05 and 1.49 ms for the same model); a variant that is
    really slower rarely beats the fastest one's median even once, and with one repetition
    only equal times tie."""
    low = (v.get("latency_ms_b1_range") or [v["latency_ms_b1_p50"]])[0]
    return bool(low <= fastest["latency_ms_b1_p50"])


def choose(variants: list[dict[str, Any]], budget: float) -> tuple[str, str]:
    """Return (chosen name, message). `variants` holds the fp32 reference (name "fp32") and the
    measured variants (`accuracy`, `latency_ms_b1_p50`, `parity_passed`). Never picks a variant
    whose drop exceeds `budget` or that failed parity; falls back to fp32 with a message that
    says which rule excluded each variant."""
    ref = next(v for v in variants if v["name"] == REFERENCE)
    others = [v for v in variants if v["name"] != REFERENCE]
    reasons = {v["name"]: exclusion(v, ref, budget) for v in others}
    fits = [v for v in others if reasons[v["name"]] is None]
    if not fits:
        if not others:
            return REFERENCE, "No compressed variant was built. Keeping the fp32 model."
        why = "; ".join(f"{name}: {r}" for name, r in reasons.items())
        over_budget = [n for n, r in reasons.items() if r and "budget" in r]
        fix = (
            " Raise --budget to trade more accuracy for speed"
            + (f" ({', '.join(over_budget)})" if over_budget else "")
            + "; a variant below the parity threshold is never chosen."
            if over_budget
            else " Raising --budget would not help: no variant passed the parity check."
        )
        best = min(others, key=lambda v: accuracy_drop(ref["accuracy"], v["accuracy"]))
        return REFERENCE, (
            f"No compressed variant stays within the accuracy budget of {budget:g} points and the "
            f"parity rule ({why}; smallest drop: {best['name']}, "
            f"{accuracy_drop(ref['accuracy'], best['accuracy']):.2f} points). Keeping the fp32 "
            f"model.{fix}"
        )
    fastest = min(fits, key=lambda v: v["latency_ms_b1_p50"])
    if fastest["latency_ms_b1_p50"] >= ref["latency_ms_b1_p50"]:
        return REFERENCE, (
            f"No variant within the budget of {budget:g} points is faster than fp32 at batch 1. "
            "Keeping the fp32 model."
        )
    faster = [v for v in fits if v["latency_ms_b1_p50"] < ref["latency_ms_b1_p50"]]
    tied = [v for v in faster if as_fast(v, fastest)]
    best = min(tied, key=lambda v: (v.get("size_bytes", math.inf), v["latency_ms_b1_p50"]))
    drop = accuracy_drop(ref["accuracy"], best["accuracy"])
    speed = ref["latency_ms_b1_p50"] / best["latency_ms_b1_p50"]
    test = ""
    if best.get("test_accuracy_drop_points") is not None:
        test = (
            f"; on the test split {best['test_accuracy_drop_points']:.2f} ± "
            f"{best['test_drop_se_points']:.2f} points"
        )
    if best is not fastest:
        test += (
            f"; as fast as {fastest['name']} within the timing spread over repetitions, and "
            f"{fastest.get('size_bytes', math.inf) / best['size_bytes']:.1f}x smaller"
        )
    held = [n for n, r in reasons.items() if r and "did not hold" in r]
    also = f" Not chosen because test did not hold: {', '.join(held)}." if held else ""
    return best["name"], (
        f"Chose {best['name']}: {speed:.1f}x faster than fp32 at batch 1 (p50), "
        f"accuracy drop {drop:.2f} points on eval (budget {budget:g}){test}.{also}"
    )


# ---- generation runs: a perplexity budget, speed in tokens/s -----------------------------------


def ppl_increase(ref_ppl: float, ppl: float) -> float:
    """Rise of perplexity over the reference, in percent of it; negative = the variant is lower."""
    return round((ppl - ref_ppl) / ref_ppl * 100, 4)


def choose_by_perplexity(variants: list[dict[str, Any]], max_increase: float) -> tuple[str, str]:
    """Return (chosen name, message) for a generation run. `variants` holds the fp32 reference
    and the measured variants (`perplexity`, `tokens_per_s_b8`). Chooses the fastest at batch 8
    whose perplexity rises at most `max_increase` percent over fp32's, and only when it is
    faster than fp32; never a variant over budget (the message names each excluded one)."""
    ref = next(v for v in variants if v["name"] == REFERENCE)
    others = [v for v in variants if v["name"] != REFERENCE]
    if not others:
        return REFERENCE, "No compressed variant was built. Keeping the fp32 model."
    rise = {v["name"]: ppl_increase(ref["perplexity"], v["perplexity"]) for v in others}
    fits = [v for v in others if rise[v["name"]] <= max_increase]
    if not fits:
        why = "; ".join(f"{n}: +{r:.2f}%" for n, r in rise.items())
        return REFERENCE, (
            f"No compressed variant keeps the perplexity rise within {max_increase:g}% of fp32's "
            f"({why}). Keeping the fp32 model. Raise --max-ppl-increase to trade quality for "
            "speed."
        )
    best = max(fits, key=lambda v: v["tokens_per_s_b8"])
    if best["tokens_per_s_b8"] <= ref["tokens_per_s_b8"]:
        return REFERENCE, (
            f"No variant within the perplexity budget of {max_increase:g}% is faster than fp32 "
            f"at batch 8 ({best['name']}: {best['tokens_per_s_b8']:.1f} against "
            f"{ref['tokens_per_s_b8']:.1f} tokens/s). Keeping the fp32 model."
        )
    speed = best["tokens_per_s_b8"] / ref["tokens_per_s_b8"]
    return best["name"], (
        f"Chose {best['name']}: {speed:.2f}x fp32's tokens/s at batch 8, perplexity "
        f"{rise[best['name']]:+.2f}% (budget {max_increase:g}%)."
    )
