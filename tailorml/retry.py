"""Retry with exponential backoff: one policy and one loop for every caller.

    from tailorml.retry import Backoff, call_with_retry

    rows = call_with_retry(
        read_rows, retry_on=is_transient, policy=Backoff(first_s=0.2, max_s=5.0),
        give_up_after_s=600,
    )

Used by the serving client (429/503/refused connections), finwatch's database writes (connection
errors while PostgreSQL restarts), its migrations (two watchers creating the schema at once) and
the webhook outbox (which only needs `Backoff.delay`: it stores the next attempt time in a row
instead of sleeping). Each caller says *what* is worth retrying and *how long*; the doubling, the
cap and the giving up live here, so they cannot drift apart again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


@dataclass(frozen=True)
class Backoff:
    """Delays that double from `first_s` and never exceed `max_s`.

    The cap matters more than the doubling: a caller allowed 20 retries would, uncapped from
    0.1 s, wait 0.1 * (2**20 - 1) s in all, about 29 hours, for a service that is not there."""

    first_s: float = 0.1
    max_s: float = 5.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.first_s < 0 or self.max_s < 0 or self.factor < 1:
            raise ValueError(
                f"Backoff(first_s={self.first_s}, max_s={self.max_s}, factor={self.factor}): "
                "delays must be >= 0 and factor >= 1 (a shrinking delay would hammer the peer)."
            )

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0 = the first retry)."""
        try:
            return min(self.max_s, self.first_s * self.factor ** max(attempt, 0))
        except OverflowError:  # the webhook outbox counts attempts into the thousands
            return self.max_s


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from an HTTP `Retry-After` header, or None when absent or not a number of seconds.

    The header may also be an HTTP date; no server of ours sends one, and guessing the clock skew
    would be worse than falling back to our own backoff, which is what None asks for."""
    if not value:
        return None
    value = value.strip()
    if not value.replace(".", "", 1).isdigit():
        return None
    return float(value)


def _matcher(retry_on: RetryOn) -> Callable[[BaseException], bool]:
    if isinstance(retry_on, (type, tuple)):
        types = retry_on
        return lambda exc: isinstance(exc, types)
    return retry_on


def call_with_retry(
    fn: Callable[[], T],
    *,
    retry_on: RetryOn,
    policy: Backoff | None = None,
    retries: int | None = None,
    give_up_after_s: float | None = None,
    wait_for: Callable[[BaseException], float | None] | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Call `fn()` until it returns; retry the errors `retry_on` accepts, raise the rest at once.

    retry_on: exception type(s), or a predicate on the exception (e.g. "is this a connection
        error, not a constraint violation?"). Only `Exception`s are considered: Ctrl-C is never
        retried.
    policy: the delays (default `Backoff()`: 0.1 s doubling to 5 s).
    retries: most retries after the first call (None = no limit by count).
    give_up_after_s: stop retrying once the delays already slept add up to this (None = no limit
        by time). Only sleeps count, not the time `fn` takes, so the bound is the same on a fast
        and a slow machine; the total wait can pass it by at most one delay.
    wait_for: a delay the peer asked for (an HTTP Retry-After), used instead of the policy's
        delay for that retry when it returns a number; the policy keeps doubling underneath.
    on_retry: called with the error and the delay before each sleep (logging, counters).
    sleep: injected in tests; defaults to `time.sleep`, looked up at call time.

    When retrying stops, the last error is raised unchanged, so callers keep their own messages.
    """
    policy = policy or Backoff()
    should_retry = _matcher(retry_on)
    attempt, slept = 0, 0.0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not should_retry(exc):
                raise
            if retries is not None and attempt >= retries:
                raise
            if give_up_after_s is not None and slept >= give_up_after_s:
                raise
            asked = wait_for(exc) if wait_for else None
            delay = policy.delay(attempt) if asked is None else asked
            if on_retry:
                on_retry(exc, delay)
            (sleep or time.sleep)(delay)
            slept += delay
            attempt += 1
