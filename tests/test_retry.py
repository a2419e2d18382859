"""tailorml.retry: the one backoff policy and retry loop (client, finwatch store, webhook outbox).

The loop's sleep is injected, so these tests wait for nothing; the expected delays are worked out
by hand from the policy (first delay, doubling, cap)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tailorml.retry import Backoff, call_with_retry, parse_retry_after


class Flaky:
    """Fails with the given errors in turn, then returns "ok"; counts calls."""

    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_backoff_doubles_up_to_the_cap() -> None:
    b = Backoff(first_s=0.1, max_s=0.5)
    assert [b.delay(i) for i in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5])
    assert Backoff(first_s=1.0, max_s=300.0, factor=3.0).delay(2) == pytest.approx(9.0)


def test_backoff_after_thousands_of_attempts_is_the_cap() -> None:
    # The webhook outbox keeps counting attempts (max_attempts defaults to 1000); 2.0**5000
    # overflows a float, and the answer must still be the cap, not an OverflowError.
    assert Backoff(first_s=1.0, max_s=300.0).delay(5000) == 300.0


def test_backoff_refuses_a_shrinking_or_negative_delay() -> None:
    with pytest.raises(ValueError, match="factor=0.5"):
        Backoff(factor=0.5)
    with pytest.raises(ValueError, match="first_s=-1"):
        Backoff(first_s=-1)


def test_transient_errors_are_retried_with_growing_delays() -> None:
    fn = Flaky(ConnectionError("a"), ConnectionError("b"), ConnectionError("c"))
    slept: list[float] = []
    seen: list[tuple[str, float]] = []
    out = call_with_retry(
        fn,
        retry_on=ConnectionError,
        policy=Backoff(first_s=0.1, max_s=0.3),
        on_retry=lambda exc, d: seen.append((str(exc), d)),
        sleep=slept.append,
    )
    assert out == "ok" and fn.calls == 4
    assert slept == pytest.approx([0.1, 0.2, 0.3])
    assert [s for s, _ in seen] == ["a", "b", "c"]
    assert [d for _, d in seen] == slept


def test_other_errors_are_raised_at_once() -> None:
    boom = ValueError("constraint violated")
    fn = Flaky(boom)
    slept: list[float] = []
    with pytest.raises(ValueError) as info:
        call_with_retry(fn, retry_on=ConnectionError, sleep=slept.append)
    assert info.value is boom and fn.calls == 1 and slept == []


def test_a_predicate_decides_what_is_retried() -> None:
    fn = Flaky(OSError("connection reset"), OSError("disk full"))
    slept: list[float] = []
    with pytest.raises(OSError, match="disk full"):
        call_with_retry(fn, retry_on=lambda exc: "connection" in str(exc), sleep=slept.append)
    assert fn.calls == 2 and len(slept) == 1


def test_ctrl_c_is_never_retried() -> None:
    fn = Flaky(KeyboardInterrupt())
    slept: list[float] = []
    with pytest.raises(KeyboardInterrupt):
        call_with_retry(fn, retry_on=BaseException, sleep=slept.append)
    assert fn.calls == 1 and slept == []


def test_gives_up_after_the_retries_with_the_last_error() -> None:
    errors = [ConnectionError(str(i)) for i in range(10)]
    fn = Flaky(*errors)
    slept: list[float] = []
    with pytest.raises(ConnectionError) as info:
        call_with_retry(fn, retry_on=ConnectionError, retries=3, sleep=slept.append)
    assert fn.calls == 4 and len(slept) == 3 and info.value is errors[3]


def test_gives_up_once_the_sleeps_add_up_to_the_limit() -> None:
    fn = Flaky(*[ConnectionError() for _ in range(100)])
    slept: list[float] = []
    with pytest.raises(ConnectionError):
        call_with_retry(
            fn,
            retry_on=ConnectionError,
            policy=Backoff(first_s=1.0, max_s=4.0),
            give_up_after_s=10.0,
            sleep=slept.append,
        )
    # 1 + 2 + 4 = 7 < 10: one more wait (4, the cap); 11 >= 10: the next failure is raised.
    assert slept == [1.0, 2.0, 4.0, 4.0] and fn.calls == 5


def test_a_delay_the_peer_asks_for_replaces_the_policy_once() -> None:
    class Busy(Exception):
        def __init__(self, after: float | None):
            self.after = after

    fn = Flaky(Busy(3.0), Busy(None), Busy(None))
    slept: list[float] = []
    call_with_retry(
        fn,
        retry_on=Busy,
        policy=Backoff(first_s=0.1, max_s=5.0),
        wait_for=lambda exc: getattr(exc, "after", None),
        sleep=slept.append,
    )
    # The asked 3 s is used as is; the policy kept doubling underneath (0.1 -> 0.2 -> 0.4).
    assert slept == pytest.approx([3.0, 0.2, 0.4])


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("2", 2.0),
        ("0.5", 0.5),
        (" 7 ", 7.0),
        (None, None),
        ("", None),
        ("-1", None),
        ("soon", None),
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),  # an HTTP date: fall back to our backoff
    ],
)
def test_retry_after_header(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


# -- the client, against a real HTTP server ---------------------------------------------------
@contextmanager
def serve(answers: list[tuple[int, dict[str, str]]]) -> Iterator[tuple[str, list[str]]]:
    """Answers GET /v1/models with each (status, headers) in turn, then 200 with a model card;
    records each request's path."""
    arrived: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            arrived.append(self.path)
            status, headers = answers.pop(0) if answers else (200, {})
            body = json.dumps(
                {"models": [{"task": "classification", "limits": {"max_inputs": 8}}]}
                if status == 200
                else {"error": {"type": "queue_full", "message": "busy"}}
            ).encode()
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", arrived
    finally:
        srv.shutdown()
        srv.server_close()


def test_client_honours_retry_after_then_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from tailorml.client import Client

    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # the client's retry loop looks it up per call
    with (
        serve([(429, {"Retry-After": "3"}), (503, {})]) as (url, arrived),
        Client(url, retries=5, backoff_s=0.1, backoff_max_s=5.0) as c,
    ):
        assert c.model()["limits"]["max_inputs"] == 8
    # 429 asked for 3 s; the 503 said nothing, so the policy's second delay (0.2 s) applies.
    assert slept == pytest.approx([3.0, 0.2]) and arrived == ["/v1/models"] * 3


def test_client_reports_the_last_refusal_after_its_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tailorml.client import Client, ServiceError

    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    with (
        serve([(429, {})] * 3) as (url, arrived),
        Client(url, retries=2, backoff_s=0.1) as c,
        pytest.raises(ServiceError, match="429 queue_full: busy") as info,
    ):
        c.model()
    assert info.value.status == 429 and len(arrived) == 3 and slept == pytest.approx([0.1, 0.2])


def test_client_does_not_retry_a_plain_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    from tailorml.client import Client, ServiceError

    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    with (
        serve([(400, {})]) as (url, arrived),
        Client(url) as c,
        pytest.raises(ServiceError) as info,
    ):
        c.model()
    assert info.value.status == 400 and len(arrived) == 1 and slept == []
