"""The surge detector: is the negative sentiment of a topic in this window far above its baseline?

It judges the model's probabilities, not its hard labels: a window of n events of a topic
brings e = sum of p_negative (the expected negative count) and q = sum of p_negative (1 -
p_negative) (the Poisson-binomial variance of the true count given the scores). With replayed
labels p is 0 or 1, so e is the negative count and q is 0: the label path is the special case.

Per topic it keeps EWMAs of the expected negative share s = e / n (mean `mu`, variance `var`),
of the per-event p (1 - p) (`qm`, = q / n), and of e (mean `mu_c`, variance `var_c`, and `qc`, the
EWMA of q). A closed window gets two z-scores:

    z_share = (s - mu) / sqrt(max(0, var - sv) + (mu (1 - mu) - qm) / n + min_std^2)
              # mu (1 - mu) - qm: the variance of one event's p around mu (p(1-p) averaged is
              # what hard labels would add on top); / n: this window's sampling noise of s;
              # var - sv: the baseline's drift beyond the sampling noise it had (sv = its EWMA)
    z_count = (e - mu_c) / sqrt(var_c + max(0, mu_c - qc) + 1)   # compound-Poisson noise of e

Per-topic baselines with a pooled prior: the share baseline of a topic is its own EWMA blended
with the pooled one (all topics' windows), the pooled one weighing `prior_windows` judged windows
against the topic's own count of judged windows. A new or quiet topic thus starts from the pooled
baseline (a surge on a small topic is often the first window it has volume) and its own history
takes over as it grows; after a few dozen windows the prior hardly counts.

A surge starts when z_share reaches `z_on`, or z_count reaches `z_count_on` while z_share is at
least `z_off` (so a pure volume spike, e.g. the daily rise of traffic, does not alert), with at
least `min_volume` events and an expected `min_negative` negative ones, after `warmup` judged
windows and outside the `cooldown` after the previous alert. It ends when both z fall below
`z_off` (hysteresis: one alert per surge). During a surge the baseline learns 4x slower, so a
surge does not quickly become the new normal.

sklearn's contract: `__init__` stores arguments; `fit(windows)` learns the baselines and returns
self; learned state ends in `_`; `update` (streaming, mutates) and `predict` (pure) before `fit`
raise a clear error. State round-trips through JSON (`get_state`/`set_state`) so a restarted
watcher continues exactly where it stopped (the watcher stores it with each closed window).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tailorml.errors import TailorError

PARAMS = (
    "alpha",
    "z_on",
    "z_off",
    "z_count_on",
    "min_volume",
    "min_negative",
    "cooldown",
    "warmup",
    "min_std",
    "prior_windows",
)


POOL = "__pooled__"
# A topic's state before its first window (older saved states lack the newer keys: filled in).
TOPIC_STATE = {
    "mu": 0.0,
    "var": 0.0,
    "sv": 0.0,
    "qm": 0.0,
    "mu_c": 0.0,
    "var_c": 0.0,
    "qc": 0.0,
    "judged": 0,
    "counted": 0,
    "in_surge": 0,
    "since_alert": 1e9,
}
POOL_STATE = {"mu": 0.0, "var": 0.0, "sv": 0.0, "qm": 0.0, "judged": 0}


class NotFittedError(TailorError):
    """predict/update called before fit."""


@dataclass
class Window:
    topic: str
    window_start: float
    n: int
    n_negative: int  # events whose top sentiment is negative (hard labels)
    expected: float | None = None  # sum of p_negative; None = the hard count (labels)
    variance: float | None = None  # sum of p_negative (1 - p_negative); None = 0

    @property
    def e(self) -> float:
        return float(self.n_negative) if self.expected is None else float(self.expected)

    @property
    def q(self) -> float:
        return 0.0 if self.variance is None else max(0.0, float(self.variance))


def _as_window(row: Any) -> Window:
    if isinstance(row, Window):
        return row
    if isinstance(row, Mapping):
        return Window(
            str(row["topic"]),
            float(row["window_start"]),
            int(row["n"]),
            int(row["n_negative"]),
            row.get("expected"),
            row.get("variance"),
        )
    topic, start, n, neg, *rest = row
    return Window(str(topic), float(start), int(n), int(neg), *rest)


def _blend(own: dict[str, float], pool: dict[str, float], k: float, key: str) -> float:
    """The topic's own EWMA of `key`, the pooled one weighing `k` windows against its count."""
    m = float(own["judged"])
    if m + k <= 0:
        return own[key]
    return (m * own[key] + k * pool[key]) / (m + k)


class SurgeDetector:
    def __init__(
        self,
        alpha: float = 0.1,
        z_on: float = 3.5,
        z_off: float = 1.0,
        z_count_on: float = 5.0,
        min_volume: int = 10,
        min_negative: int = 6,
        cooldown: int = 4,
        warmup: int = 6,
        min_std: float = 0.03,
        prior_windows: float = 3.0,
        per_topic: dict[str, dict[str, Any]] | None = None,
    ):
        self.alpha = alpha
        self.z_on = z_on
        self.z_off = z_off
        self.z_count_on = z_count_on
        self.min_volume = min_volume
        self.min_negative = min_negative
        self.cooldown = cooldown
        self.warmup = warmup
        self.min_std = min_std
        self.prior_windows = prior_windows
        self.per_topic = per_topic
        # Set to a list to record every judged window's figures (the evaluation's separability
        # analysis); not state: it is neither saved nor restored.
        self.trace: list[dict[str, Any]] | None = None

    # -- sklearn API -------------------------------------------------------------------------
    def fit(self, windows: Iterable[Any] = ()) -> SurgeDetector:
        """Learn per-topic baselines from closed windows in time order (alerts are not kept)."""
        self._validate()
        self.state_: dict[str, dict[str, float]] = {}
        self.n_windows_ = 0
        for row in windows:
            self.update(row)
        return self

    def baseline(self, topic: str) -> dict[str, float]:
        """The share baseline a window of `topic` is judged against now (pooled prior blended)."""
        self._check_fitted()
        s = self.state_.get(topic) or dict(TOPIC_STATE)
        pool = self.state_.get(POOL) or dict(POOL_STATE)
        k = float(self.params(topic)["prior_windows"]) if pool["judged"] > 0 else 0.0
        if s["judged"] == 0 and k == 0:
            return {"share": 0.0, "excess_var": 0.0, "qm": 0.0, "windows": 0, "own_weight": 0.0}
        return {
            "share": _blend(s, pool, k, "mu"),
            "excess_var": max(0.0, _blend(s, pool, k, "var") - _blend(s, pool, k, "sv")),
            "qm": _blend(s, pool, k, "qm"),
            "windows": int(s["judged"]),
            "own_weight": s["judged"] / (s["judged"] + k),
        }

    def update(self, row: Any) -> dict[str, Any] | None:
        """Judge one closed window and learn from it. Returns the alert figures, or None."""
        self._check_fitted()
        w = _as_window(row)
        p = self.params(w.topic)
        s = self.state_.setdefault(w.topic, dict(TOPIC_STATE))
        pool = self.state_.setdefault(POOL, dict(POOL_STATE))
        self.n_windows_ += 1
        s["since_alert"] += 1
        e, q = w.e, w.q
        share = e / w.n if w.n else 0.0
        z_share = z_count = 0.0
        base = self.baseline(w.topic)
        mu = base["share"]
        if (s["judged"] > 0 or pool["judged"] > 0) and w.n > 0:
            # One event's p varies around mu by mu (1 - mu) - qm (all of mu (1 - mu) for hard
            # labels); the baseline's own drift (its variance beyond its sampling noise) adds.
            per_event = max(mu * (1 - mu) - base["qm"], 0.0)
            z_share = (share - mu) / math.sqrt(
                base["excess_var"] + per_event / w.n + p["min_std"] ** 2
            )
        if s["counted"] > 0:
            noise = s["var_c"] + max(s["mu_c"] - s["qc"], 0.0) + 1.0
            z_count = (e - s["mu_c"]) / math.sqrt(noise)
        judged = w.n >= p["min_volume"]
        hot = z_share >= p["z_on"] or (
            p["z_count_on"] > 0 and z_count >= p["z_count_on"] and z_share >= p["z_off"]
        )
        hot = hot and share >= mu
        alert = None
        if judged and hot and not s["in_surge"]:
            s["in_surge"] = 1
            if (
                max(s["judged"], pool["judged"]) >= p["warmup"]
                and s["counted"] >= p["warmup"]
                and e >= p["min_negative"]
                and s["since_alert"] > p["cooldown"]
            ):
                s["since_alert"] = 0
                alert = {
                    "topic": w.topic,
                    "window_start": w.window_start,
                    "n": w.n,
                    "n_negative": w.n_negative,
                    "expected_negative": round(e, 3),
                    "negative_share": round(share, 4),
                    "baseline_share": round(mu, 4),
                    "baseline_windows": int(s["judged"]),
                    "z_share": round(z_share, 3),
                    "baseline_negative": round(s["mu_c"], 3),
                    "z_count": round(z_count, 3),
                }
        elif s["in_surge"] and max(z_share, z_count) < p["z_off"]:
            s["in_surge"] = 0
        if self.trace is not None and judged:
            self.trace.append(
                {"topic": w.topic, "window_start": w.window_start, "n": w.n, "e": e}
                | {"z_share": z_share, "z_count": z_count, "alert": alert is not None}
            )
        # Learn: slower inside a surge so the surge does not become the baseline.
        a = p["alpha"] * (0.25 if s["in_surge"] else 1.0)
        if judged:
            qm = q / w.n
            for st, rate in ((s, a), (pool, p["alpha"] / 10)):  # pool: many topics feed it
                # the expected sampling variance of this window's share under this baseline
                sv = max(st["mu"] * (1 - st["mu"]) - st["qm"], 0.0) / w.n
                if st["judged"] == 0:
                    st["mu"], st["var"], st["sv"], st["qm"] = share, 0.0, 0.0, qm
                else:
                    d = share - st["mu"]
                    st["mu"] += rate * d
                    st["var"] = (1 - rate) * (st["var"] + rate * d * d)
                    st["sv"] += rate * (sv - st["sv"])
                    st["qm"] += rate * (qm - st["qm"])
                st["judged"] += 1
        if s["counted"] == 0:
            s["mu_c"], s["var_c"], s["qc"] = e, 0.0, q
        else:
            d = e - s["mu_c"]
            s["mu_c"] += a * d
            s["var_c"] = (1 - a) * (s["var_c"] + a * d * d)
            s["qc"] += a * (q - s["qc"])
        s["counted"] += 1
        return alert

    def update_empty(self, topic: str, window_start: float, count: int, step: float) -> list[Any]:
        """Judge `count` consecutive windows without events for `topic` (the first starting at
        `window_start`, `step` seconds apart): the same state and alerts as that many `update`
        calls, at the cost of far fewer.

        An empty window only decays the count baseline towards 0; once one leaves the state as
        it found it apart from the counters (the decay has reached exactly 0.0 in floating
        point, after some thousands of windows), every later empty window does the same, so the
        rest are added to the counters at once. An event timed in 1970 ahead of a 2026 stream
        thus costs milliseconds, not minutes of closing two million empty windows one by one."""
        self._check_fitted()
        counters = ("since_alert", "counted")
        alerts = []
        done = 0
        while done < count:
            before = self.state_.get(topic)
            snapshot = dict(before) if before is not None else None
            found = self.update((topic, window_start + done * step, 0, 0))
            done += 1
            if found:
                alerts.append(found)
            after = self.state_[topic]
            same = snapshot is not None and all(
                after[k] == v for k, v in snapshot.items() if k not in counters
            )
            if same and not found:
                rest = count - done
                after["since_alert"] += rest
                after["counted"] += rest
                self.n_windows_ += rest
                break
        return alerts

    def predict(self, windows: Iterable[Any]) -> list[bool]:
        """Would each window (in order, continuing from the fitted state) raise an alert?

        Pure: the fitted state is not changed."""
        self._check_fitted()
        clone = copy.deepcopy(self)
        return [clone.update(w) is not None for w in windows]

    # -- helpers -----------------------------------------------------------------------------
    def params(self, topic: str) -> dict[str, Any]:
        p = {k: getattr(self, k) for k in PARAMS}
        p.update((self.per_topic or {}).get(topic, {}))
        return p

    def get_state(self) -> dict[str, Any]:
        self._check_fitted()
        return {"state": self.state_, "n_windows": self.n_windows_}

    def set_state(self, state: dict[str, Any]) -> SurgeDetector:
        """Continue from `get_state()`'s output (also one saved before the probability figures
        existed: their EWMAs start at 0, which is what hard labels give)."""
        self._validate()
        self.state_ = {
            k: {**(POOL_STATE if k == POOL else TOPIC_STATE), **v}
            for k, v in state["state"].items()
        }
        self.n_windows_ = int(state["n_windows"])
        return self

    def _validate(self) -> None:
        problems = []
        for topic, over in [("", {})] + list((self.per_topic or {}).items()):
            p = {k: getattr(self, k) for k in PARAMS}
            p.update(over)
            unknown = set(over) - set(PARAMS)
            where = f"per_topic[{topic!r}]." if topic else ""
            if unknown:
                problems.append(f"{where}{sorted(unknown)}: unknown parameter(s); use {PARAMS}.")
            if not 0 < p["alpha"] <= 1:
                problems.append(f"{where}alpha={p['alpha']}: must be in (0, 1].")
            if p["z_off"] > p["z_on"]:
                problems.append(f"{where}z_off={p['z_off']} is above z_on={p['z_on']}; lower it.")
            if p["min_volume"] < 1 or p["min_std"] <= 0:
                problems.append(f"{where}min_volume must be >= 1 and min_std > 0.")
            if p["prior_windows"] < 0:
                problems.append(f"{where}prior_windows={p['prior_windows']}: must be >= 0.")
        if problems:
            raise TailorError(problems)

    def _check_fitted(self) -> None:
        if not hasattr(self, "state_"):
            raise NotFittedError(
                "This SurgeDetector is not fitted yet: call fit(windows) (fit([]) starts with "
                "empty baselines) before update or predict."
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in PARAMS)
        return f"SurgeDetector({args})"
