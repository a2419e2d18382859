"""Hostile input against real servers on 127.0.0.1: `tailor serve` as a child process (the C
parser, httptools) and the same app under uvicorn's pure-Python parser (h11) in a thread.

Every case asserts the status, the one error shape, a time bound, and that `/healthz` kept
answering quickly while the case ran (a probe polls it from another connection). The bounds are
loose on purpose (a busy 2-core CI machine); the figures themselves are printed at the end of
the module (`pytest -s`) and recorded in docs/security.md.

- bodies: a corpus of known-bad bodies (huge lists, many keys, deep nesting, bad encodings, huge
  numbers, wrong content types, ...) and hypothesis-generated ones judged by an oracle written
  from the API's documentation, not from the code;
- HTTP: methods, paths, the API key, malformed requests;
- the connection: huge headers, slowloris (idle, half headers, trickled headers, half bodies),
  a connection flood, keep-alive after an early answer (raw sockets).
"""

from __future__ import annotations

import contextlib
import gc
import http.client
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from .serve_helpers import AppServer, ProcessServer, ThreadServer, trained_classifier

KEY = "hostile-key-5d41402abc4b2a76b9719d911017c592"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}
MiB = 1024 * 1024
MAX_BODY = 4 * MiB  # the default max_body_bytes: the servers here keep the default limits

# Loose bounds for a busy 2-core CI machine (before the fixes: 60 s and more for both); the aims
# and the measured figures are far lower.
REQUEST_BOUND_S = 2.0  # a hostile request's answer (aim: tens of ms)
HEALTHZ_BOUND_S = 1.0  # /healthz while one is served (aim: under 100 ms more than when idle)
ERROR_BYTES = 4096  # no error answer is bigger, whatever was sent
# Connection-level settings of both servers: short timeouts keep the suite fast.
WIRE = {
    "header_timeout_s": 1.0,
    "body_timeout_s": 2.0,
    "keepalive_timeout_s": 1.0,
    "max_connections": 16,
    "max_header_bytes": 8192,
}
FLAGS = [
    "--header-timeout", "1", "--body-timeout", "2", "--keepalive-timeout", "1",
    "--max-connections", "16", "--max-header-bytes", "8192",
]  # fmt: skip


@dataclass
class Figures:
    """What the cases measured, printed at the end of the module."""

    rows: list[tuple[str, str, int, float, float]] = field(default_factory=list)
    healthz_idle: list[float] = field(default_factory=list)

    def add(self, surface: str, name: str, status: int, seconds: float, healthz: float) -> None:
        self.rows.append((surface, name, status, seconds, healthz))

    def report(self) -> str:
        if not self.rows:
            return ""
        idle = sorted(self.healthz_idle)[len(self.healthz_idle) // 2] if self.healthz_idle else 0
        by: dict[str, dict[int, int]] = {}
        for surface, _, status, _, _ in self.rows:
            by.setdefault(surface, {}).setdefault(status, 0)
            by[surface][status] += 1
        worst = max(self.rows, key=lambda r: r[3])
        worst_h = max(self.rows, key=lambda r: r[4])
        lines = [f"\nhostile inputs tried: {len(self.rows)}"]
        for surface, counts in by.items():
            outcome = ", ".join(f"{s}: {n}" for s, n in sorted(counts.items()))
            lines.append(f"  {surface:10s} {sum(counts.values()):4d}  ({outcome})")
        lines += [
            f"slowest answer (for a timeout: time past the deadline): {worst[3] * 1e3:.1f} ms "
            f"({worst[0]}: {worst[1]})",
            f"/healthz: median idle {idle * 1e3:.1f} ms, worst while a hostile request was "
            f"served {worst_h[4] * 1e3:.1f} ms ({worst_h[0]}: {worst_h[1]})",
        ]
        return "\n".join(lines)


FIGURES = Figures()


@pytest.fixture(scope="module", autouse=True)
def _print_figures() -> Iterator[None]:
    yield
    print(FIGURES.report())


class HealthWatch:
    """Polls /healthz on its own kept-alive connection while a case runs; `worst` is the
    slowest answer (one more probe is taken after the case, so there is always a sample)."""

    def __init__(self, url: str):
        self.port = int(url.rsplit(":", 1)[1])
        self.times: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def _probe(self) -> None:
        t0 = time.perf_counter()
        try:
            self._conn.request("GET", "/healthz")
            r = self._conn.getresponse()
            body = r.read()
            if r.status != 200:
                self.failures.append(f"{r.status} {body[:100]!r}")
        except (OSError, http.client.HTTPException) as exc:
            self.failures.append(repr(exc))
            self._conn.close()  # reconnects on the next request
        self.times.append(time.perf_counter() - t0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._probe()
            self._stop.wait(0.005)

    def __enter__(self) -> HealthWatch:
        self._probe()  # connected before the case starts
        self.times.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)
        self._probe()
        self._conn.close()

    @property
    def worst(self) -> float:
        return max(self.times)

    def check(self) -> float:
        assert not self.failures, self.failures
        assert self.worst < HEALTHZ_BOUND_S, f"/healthz took {self.worst:.3f} s"
        return self.worst


def assert_error(r: httpx.Response, status: int, kind: str | None, *needles: str) -> None:
    """The kit's one error shape: JSON, `{"error": {"type", "message"}}`, no internals."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    assert r.headers.get("x-content-type-options") == "nosniff"
    assert len(r.content) <= ERROR_BYTES, len(r.content)
    body = r.json()
    assert set(body) == {"error"} and {"type", "message"} <= set(body["error"]), body
    if kind:
        assert body["error"]["type"] == kind, body
    for needle in needles:
        assert needle in body["error"]["message"], (needle, body["error"]["message"])
    assert "Traceback" not in r.text and 'File "' not in r.text


# ----------------------------------------------------------------------------- the servers


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessServer]:
    """`tailor serve` itself, default limits, the API key on, short connection timeouts."""
    model = trained_classifier(tmp_path_factory)
    # This process has torch loaded: a full garbage collection here can pause the probe thread
    # for most of a second on a busy machine. Freeze what exists, so the probe measures the
    # server and not us.
    gc.collect()
    gc.freeze()
    log = tmp_path_factory.mktemp("hostile") / "serve.log"
    srv = ProcessServer(model, log, "--threads", "1", *FLAGS, env={"TAILORML_API_KEY": KEY})
    with srv:
        with httpx.Client(timeout=10) as c:
            for _ in range(20):  # the idle /healthz latency the figures compare against
                t0 = time.perf_counter()
                c.get(srv.url + "/healthz")
                FIGURES.healthz_idle.append(time.perf_counter() - t0)
        yield srv
    out = srv.output()
    for bad in SERVER_LOG_DEFECTS:
        assert bad not in out, out[out.index(bad) - 500 :][:4000]


# What a server log must never show, whatever was sent: a traceback, or uvicorn finding the app
# in a broken state.
SERVER_LOG_DEFECTS = ("Traceback", "Exception in ASGI application", "ASGI callable returned")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage() + (" Traceback" if record.exc_info else ""))


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """One client for the whole module (building one costs an SSL context: ~0.1 s)."""
    with httpx.Client(timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def h11_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    from tailorml.predictors import load_predictor

    pred = load_predictor(trained_classifier(tmp_path_factory), threads=1)
    srv = ThreadServer(pred, parser="h11", api_key=KEY, **WIRE)
    # After the server's config exists: uvicorn sets up its loggers then, dropping handlers.
    records = Records()
    logging.getLogger("uvicorn.error").addHandler(records)
    try:
        with srv:
            srv.records = records  # type: ignore[attr-defined]
            yield srv
    finally:
        logging.getLogger("uvicorn.error").removeHandler(records)
    assert records.lines, "the log handler saw nothing: the check below would be vacuous"
    for line in records.lines:
        assert not any(bad in line for bad in SERVER_LOG_DEFECTS), line


@pytest.fixture(params=["httptools", "h11"])
def wire_server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("served" if request.param == "httptools" else "h11_served")


# ----------------------------------------------------------------------------- bodies


def fill(head: bytes, unit: bytes, tail: bytes, size: int = MAX_BODY - 64) -> bytes:
    """`head`, then `unit` repeated to reach `size` bytes, then `tail`."""
    return head + unit * ((size - len(head) - len(tail)) // len(unit)) + tail


def many_keys(n: int, inside: bool = False) -> bytes:
    keys = ", ".join(f'"k{i}": 0' for i in range(n))
    if inside:
        return ('{"inputs": [{' + keys + "}]}").encode()
    return ('{"inputs": ["a"], ' + keys + "}").encode()


@dataclass
class Case:
    name: str
    body: Callable[[], bytes]
    status: int
    kind: str | None = None
    needles: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON_AUTH))


def _chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
    for _ in range(MAX_BODY // 65536 + 2):
        yield b" " * 65536


CORPUS = [
    # --- size in structure: refused before parsing, naming the limit
    Case("40k zeros", lambda: json.dumps({"inputs": [0] * 40_000}).encode(), 413, "too_large",
         ("more than 656 JSON tokens", "max_inputs=64")),
    Case("4 MiB of zeros", lambda: fill(b'{"inputs": [', b"0,", b"0]}"), 413, "too_large",
         ("max_inputs=64",)),
    Case("4 MiB of empty strings", lambda: fill(b'{"inputs": [', b'"",', b'""]}'), 413,
         "too_large"),
    Case("100k unknown keys", lambda: many_keys(100_000), 413, "too_large"),
    Case("one input with 100k keys", lambda: many_keys(100_000, inside=True), 413, "too_large"),
    Case("4 MiB of [{}]", lambda: fill(b'{"inputs": [', b"{},", b"{}]}"), 413, "too_large"),
    Case("65 inputs", lambda: json.dumps({"inputs": ["a"] * 65}).encode(), 413, "too_large",
         ("65 inputs", "max_inputs=64")),
    # --- many problems: listed up to ten, the rest counted
    Case("200 unknown keys", lambda: many_keys(200), 422, "invalid_request",
         ("k0: unknown field", "… and 190 more problems")),
    Case("60 wrong-typed inputs", lambda: json.dumps({"inputs": [0] * 60}).encode(), 422,
         "invalid_request", ("inputs[0]: expected a string", "… and 50 more problems")),
    Case("a 1 MB field name", lambda: json.dumps({"k" * MiB: 1, "inputs": ["a"]}).encode(), 422,
         "invalid_request", ("unknown field", "chars)")),
    # --- encodings
    Case("invalid UTF-8", lambda: b'{"inputs": ["caf\xe9"]}', 422, "invalid_request",
         ("not valid UTF-8", "offset 16")),
    Case("UTF-16 JSON", lambda: '{"inputs": ["a"]}'.encode("utf-16"), 422, "invalid_request",
         ("UTF-8",)),
    Case("UTF-8 byte-order mark", lambda: b'\xef\xbb\xbf{"inputs": ["a"]}', 422,
         "invalid_request", ("not valid JSON",)),
    Case("lone surrogate escape", lambda: b'{"inputs": ["\\ud800"]}', 422, "invalid_request",
         ("inputs[0]", "Unicode")),
    Case("raw control character", lambda: b'{"inputs": ["a\x01b"]}', 422, "invalid_request",
         ("not valid JSON",)),
    # --- nesting and numbers
    Case("100k-deep lists", lambda: b"[" * 100_000 + b"]" * 100_000, 422, "invalid_request",
         ("nested more than 32 levels",)),
    Case("2 MiB-deep lists, unclosed", lambda: b"[" * (2 * MiB), 422, "invalid_request",
         ("nested more than 32 levels",)),
    Case("deep objects in an input", lambda: b'{"inputs": [' + b'{"a":' * 5000 + b"1"
         + b"}" * 5000 + b"]}", 422, "invalid_request", ("nested",)),
    Case("30-deep lists (under the cap)", lambda: b'{"inputs": ' + b"[" * 30 + b"]" * 30 + b"}",
         422, "invalid_request", ("inputs[0]",)),
    Case("5,000-digit integer", lambda: b'{"inputs": [' + b"9" * 5000 + b"]}", 422,
         "invalid_request", ("not valid JSON", "4300")),
    Case("4 MiB integer", lambda: fill(b'{"inputs": [', b"9", b"]}"), 422, "invalid_request",
         ("not valid JSON",)),
    Case("1e999999 (infinity)", lambda: b'{"inputs": [1e999999]}', 422, "invalid_request",
         ("got a number",)),
    Case("NaN", lambda: b'{"inputs": [NaN]}', 422, "invalid_request", ("got a number",)),
    # --- long strings
    Case("4 MiB of escaped backslashes", lambda: fill(b'{"inputs": ["', b"\\\\", b'"]}'), 413,
         "too_large", ("max_chars=20000",)),
    Case("4 MiB of \\u escapes", lambda: fill(b'{"inputs": ["', b"\\u00e9", b'"]}'), 413,
         "too_large", ("max_chars=20000",)),
    Case("64 inputs of 20,001 chars", lambda: json.dumps({"inputs": ["x" * 20_001] * 64}).encode(),
         413, "too_large", ("inputs[0] has 20001 characters",)),
    Case("4 MiB of whitespace (valid)", lambda: fill(b'{"inputs": ["a"]', b" ", b"}"), 200),
    Case("duplicate `inputs` key (last wins)", lambda: b'{"inputs": [0], "inputs": ["a"]}', 200),
    Case("NUL and controls in text (valid)", lambda: b'{"inputs": ["a\\u0000b\\tc"]}', 200),
    # --- sizes on the wire
    Case("body over max_body_bytes", lambda: b"[" + b" " * MAX_BODY + b"]", 413, "too_large",
         ("max_body_bytes=4194304",)),
    Case("chunked body over max_body_bytes", _chunks, 413, "too_large",  # type: ignore[arg-type]
         ("max_body_bytes=4194304",)),
    # --- shapes and types
    Case("text/plain", lambda: b'{"inputs": ["a"]}', 422, "invalid_request",
         ("application/json", "text/plain"), {**AUTH, "Content-Type": "text/plain"}),
    Case("a cross-site form post", lambda: b"inputs=a", 422, "invalid_request",
         ("application/json",), {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}),
    Case("no Content-Type", lambda: b'{"inputs": ["a"]}', 422, "invalid_request", ("'none'",),
         dict(AUTH)),
    Case("empty body", lambda: b"", 422, "invalid_request", ("body is missing",)),
    Case("truncated JSON", lambda: b'{"inputs": ["a",', 422, "invalid_request",
         ("not valid JSON",)),
    Case("null", lambda: b"null", 422, "invalid_request", ("expected a JSON object",)),
    Case("a JSON string", lambda: b'"inputs"', 422, "invalid_request",
         ("expected a JSON object",)),
    Case("{}", lambda: b"{}", 422, "invalid_request", ("inputs: required",)),
    Case("blank texts", lambda: b'{"inputs": ["  ", "\\n"]}', 422, "invalid_request",
         ("is empty",)),
    Case("text_pair for a one-text model", lambda: b'{"inputs": [{"text": "a", "text_pair": "b"}]}',
         422, "invalid_request", ("text_pair",)),
]  # fmt: skip


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_known_bad_bodies(served: ProcessServer, client: httpx.Client, case: Case) -> None:
    body = case.body()
    with HealthWatch(served.url) as watch:
        t0 = time.perf_counter()
        r = client.post(served.url + "/v1/predict", content=body, headers=case.headers)
        took = time.perf_counter() - t0
    FIGURES.add("body", case.name, r.status_code, took, watch.worst)
    if case.status == 200:
        assert r.status_code == 200, r.text[:300]
        assert len(r.json()["predictions"]) >= 1
    else:
        assert_error(r, case.status, case.kind, *case.needles)
    assert took < REQUEST_BOUND_S, f"{case.name}: {took:.3f} s"
    watch.check()


def test_body_errors_are_counted_as_validation(served: ProcessServer) -> None:
    """Non-UTF-8 and deeply nested bodies are 422s like any other bad body, and counted."""
    with httpx.Client(base_url=served.url, headers=AUTH, timeout=10) as c:

        def validation() -> float:
            text = c.get("/metrics").text
            line = next(x for x in text.splitlines() if x.startswith(VALIDATION + " "))
            return float(line.split()[-1])

        c.post("/v1/predict", content=b"[0", headers=JSON_AUTH)  # makes sure the line exists
        before = validation()
        for body in (b'{"inputs": ["\xff"]}', b"[" * 1000, b'{"inputs": [' + b"7" * 5000 + b"]}"):
            assert_error(c.post("/v1/predict", content=body, headers=JSON_AUTH), 422, None)
        assert validation() == before + 3


VALIDATION = 'tailorml_errors_total{kind="validation"}'


def test_kit_apps_answer_unparsable_bodies_with_the_same_422() -> None:
    """An app on the kit that lets FastAPI parse its body (finwatch's `/v1/events` does) gets
    the same 422, counted, for what FastAPI cannot parse: it used to be a bare 400 "There was an
    error parsing the body", uncounted."""
    from fastapi import Body, FastAPI

    from tailorml.serve import kit

    app = FastAPI()

    @app.post("/v1/things")
    def things(body: Any = Body(...)) -> dict[str, Any]:  # noqa: B008
        return {"got": type(body).__name__}

    asgi = kit.install(app, api_key=None, max_body_bytes=1 << 20, body_hint="(test)")
    with AppServer(asgi) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        js = {"Content-Type": "application/json"}
        assert c.post("/v1/things", json=[1, 2]).json() == {"got": "list"}
        cases = [
            (b'{"a": "caf\xe9"}', "UTF-8"),
            (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
            (b"[" + b"9" * 5000 + b"]", "4300"),
        ]
        for raw, needle in cases:
            assert_error(c.post("/v1/things", content=raw, headers=js), 422, "invalid_request",
                         needle)  # fmt: skip
        text = c.get("/metrics").text
    assert 'tailorml_errors_total{kind="validation"} 3.0' in text, text


# ----------------------------------------------------------------------------- generated bodies


def accepted(obj: Any) -> bool:
    """Whether docs/serve.md says a one-text model answers 200 to this body: an object with only
    `inputs`, a list of 1..max_inputs texts (strings or {text} objects, `text_pair` absent or
    null), each text non-blank, valid Unicode, at most max_chars characters."""
    if not isinstance(obj, dict) or set(obj) != {"inputs"}:
        return False
    items = obj["inputs"]
    if not isinstance(items, list) or not 1 <= len(items) <= 64:
        return False
    for item in items:
        if isinstance(item, dict):
            if "text" not in item or not set(item) <= {"text", "text_pair"}:
                return False
            if item.get("text_pair") is not None:
                return False
            item = item["text"]
        if not isinstance(item, str) or not item.strip() or len(item) > 20_000:
            return False
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def test_generated_bodies(served: ProcessServer) -> None:
    """Hypothesis: arbitrary JSON, long lists, many keys, deep nesting, near-valid bodies and
    corrupted bytes. Every answer is 200 exactly when `accepted` says so, else a 413/422 in the
    error shape; none is slow, none slows /healthz."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = (
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
        | st.sampled_from(["", " ", "\u00a0", "\ud7ff", "x" * 20_000, "x" * 20_001])
    )  # fmt: skip
    anything = st.recursive(
        scalars,
        lambda kids: st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=6), kids,
                                                                  max_size=4),
        max_leaves=20,
    )  # fmt: skip
    small = st.none() | st.booleans() | st.integers(-9, 99) | st.text(max_size=4)
    long_list = st.builds(lambda n, x: {"inputs": [x] * n}, st.integers(0, 30_000), small)
    wide = st.builds(lambda n: {f"k{i}": i for i in range(n)} | {"inputs": ["a"]},
                     st.integers(0, 30_000))  # fmt: skip
    deep = st.builds(lambda d: b'{"inputs": [' + b"[" * d + b"1" + b"]" * d + b"]}",
                     st.integers(0, 5_000))  # fmt: skip
    texts = st.text(min_size=0, max_size=50) | st.sampled_from(["ok", "  ", "\ud800"])
    item = texts | st.fixed_dictionaries({"text": texts}, optional={"text_pair": st.none()})
    near = st.fixed_dictionaries({"inputs": st.lists(item, min_size=0, max_size=70)},
                                 optional={"extra": anything})  # fmt: skip
    valid = st.fixed_dictionaries(
        {"inputs": st.lists(st.text(min_size=1, max_size=40).filter(str.strip), min_size=1,
                            max_size=64)}
    )  # fmt: skip
    values = valid | near | anything | long_list | wide

    def corrupt(raw: bytes, at: int, junk: bytes) -> bytes:
        at = at % (len(raw) + 1)
        return raw[:at] + junk + raw[at:]

    corrupted = st.builds(
        corrupt, near.map(lambda v: json.dumps(v).encode()), st.integers(0, 10_000),
        st.binary(min_size=1, max_size=8),
    )  # fmt: skip
    seen: dict[int, int] = {}
    c = httpx.Client(base_url=served.url, timeout=30)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=values.map(lambda v: json.dumps(v).encode()) | deep | corrupted)
    def check(body: bytes) -> None:
        t0 = time.perf_counter()
        r = c.post("/v1/predict", content=body, headers=JSON_AUTH)
        took = time.perf_counter() - t0
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        FIGURES.add("generated", f"{len(body)} bytes", r.status_code, took, 0.0)
        try:
            obj = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            ok = False
        else:
            ok = accepted(obj)
        if ok:
            assert r.status_code == 200, (body[:200], r.text[:300])
            assert len(r.json()["predictions"]) == len(obj["inputs"])
        else:
            assert r.status_code in (413, 422), (body[:200], r.status_code, r.text[:300])
            assert_error(r, r.status_code, None)
        assert took < REQUEST_BOUND_S, (body[:100], took)

    try:
        with HealthWatch(served.url) as watch:
            check()
        worst = watch.check()
    finally:
        c.close()
    # One probe ran across all the examples: its worst stands for each of them.
    FIGURES.rows = [(*r[:4], worst if r[0] == "generated" else r[4]) for r in FIGURES.rows]
    assert seen.get(200, 0) >= 10 and seen.get(422), seen  # the strategies reach both sides


# ----------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "kind"),
    [
        ("POST", "/v1/predict", {}, 401, "unauthorized"),
        ("POST", "/v1/predict", {"Authorization": "Bearer nope"}, 401, "unauthorized"),
        ("POST", "/v1/predict", {"Authorization": "Bearer " + "k" * 7000}, 401, "unauthorized"),
        ("POST", "/v1/predict", {"X-API-Key": KEY[:-1]}, 401, "unauthorized"),
        ("POST", "/v1/predict", {"X-API-Key": KEY + "0"}, 401, "unauthorized"),
        ("POST", f"/v1/predict?api_key={KEY}", {}, 401, "unauthorized"),  # never from the URL
        ("GET", "/metrics", {}, 401, "unauthorized"),
        ("GET", "/v1/models", {"Authorization": f"Basic {KEY}"}, 401, "unauthorized"),
        ("TRACE", "/v1/predict", AUTH, 405, "method_not_allowed"),
        ("OPTIONS", "/v1/predict", {**AUTH, "Origin": "http://evil.example"}, 405,
         "method_not_allowed"),
        ("PUT", "/v1/predict", AUTH, 405, "method_not_allowed"),
        ("DELETE", "/v1/models", AUTH, 405, "method_not_allowed"),
        ("POST", "/healthz", {}, 405, "method_not_allowed"),
        ("GET", "/../../etc/passwd", AUTH, 404, "not_found"),
        ("GET", "/%2e%2e/%2e%2e/etc/passwd", AUTH, 404, "not_found"),
        ("GET", "/v1/models/..%2f..%2fetc%2fpasswd", AUTH, 404, "not_found"),
        ("GET", "//v1/models", AUTH, 404, "not_found"),
        ("GET", "/v1/" + "a" * 6000, AUTH, 404, "not_found"),
        ("GET", "/admin", AUTH, 404, "not_found"),
        # No WebSocket routes: an upgrade request is a plain request (was a bare 403).
        ("GET", "/v1/predict", {**AUTH, "Upgrade": "websocket", "Connection": "Upgrade",
                                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                "Sec-WebSocket-Version": "13"}, 405, "method_not_allowed"),
    ],
)  # fmt: skip
def test_methods_paths_and_keys(
    served: ProcessServer,
    client: httpx.Client,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
    kind: str,
) -> None:
    with HealthWatch(served.url) as watch:
        t0 = time.perf_counter()
        body = b'{"inputs": ["a"]}'
        r = client.request(method, served.url + path, headers=headers, content=body)
        took = time.perf_counter() - t0
    FIGURES.add("http", f"{method} {path[:40]}", r.status_code, took, watch.worst)
    assert_error(r, status, kind)
    assert "root:" not in r.text  # no file was ever read
    assert took < REQUEST_BOUND_S
    watch.check()


def test_startup_objects_are_frozen(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Once the service is up, a full garbage collection no longer walks the ~400k objects torch
    and the model brought in (it took ~0.85 s here and stopped the event loop: /healthz with it).
    Measured in this process, where the app runs in a thread: a full collection with everything
    unfrozen, then one after the service started."""
    from tailorml.predictors import load_predictor

    pred = load_predictor(trained_classifier(tmp_path_factory), threads=1)
    gc.unfreeze()
    gc.collect()
    t0 = time.perf_counter()
    gc.collect()
    walk_all = time.perf_counter() - t0
    with ThreadServer(pred) as srv:
        assert httpx.get(srv.url + "/readyz").status_code == 200
        t0 = time.perf_counter()
        gc.collect()
        after = time.perf_counter() - t0
    assert gc.get_freeze_count() > 100_000
    assert after < walk_all / 4, (after, walk_all)


def test_api_key_compared_as_fixed_length_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key check never compares strings of the key's own length (an early exit on a length
    mismatch would tell a prober how long the key is): both sides are SHA-256 digests."""
    import hmac

    from tailorml.serve import gate

    lengths: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        lengths.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(gate.hmac, "compare_digest", spy)
    for given in ("", "x", KEY[:-1], KEY, KEY + "x", "k" * 10_000, "ключ"):
        assert gate._same_secret(given, KEY) == (given == KEY)
    assert lengths and set(lengths) == {(32, 32)}


# ----------------------------------------------------------------------------- raw sockets


def connect(srv: Any) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_until_closed(s: socket.socket, limit: float = 8.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or `limit` passes), and when it closed."""
    t0 = time.perf_counter()
    s.settimeout(limit)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except TimeoutError:
        out += b"<still open>"
    except ConnectionResetError:
        out += b"<reset>"
    finally:
        s.close()
    return out, time.perf_counter() - t0


def parse_raw(raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(body)


def raw_error(raw: bytes, status: int, kind: str, *needles: str) -> None:
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    got, headers, body = parse_raw(raw)
    assert got == status, raw[:300]
    assert headers["content-type"] == "application/json"
    assert body["error"]["type"] == kind, body
    for needle in needles:
        assert needle in body["error"]["message"], body


REQUEST = b"GET /healthz HTTP/1.1\r\nHost: t\r\n"


def _wire(name: str, parser: str, raw: bytes, took: float, watch: HealthWatch) -> None:
    status = int(raw.split()[1]) if raw.startswith(b"HTTP/") else 0
    FIGURES.add(f"wire/{parser}", name, status, took, watch.worst)
    watch.check()


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("1 MB header", b"X-Big: " + b"a" * MiB + b"\r\n"),
        ("3,000 small headers", b"".join(b"X-%d: v\r\n" % i for i in range(3000))),
        ("9 kB cookie", b"Cookie: " + b"c=1; " * 1800 + b"\r\n"),
    ],
)
def test_header_cap(wire_server: Any, name: str, extra: bytes) -> None:
    parser = "h11" if isinstance(wire_server, ThreadServer) else "httptools"
    with HealthWatch(wire_server.url) as watch:
        s = connect(wire_server)
        t0 = time.perf_counter()
        # Answered before all of it was sent? Then read the answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(REQUEST + extra + b"\r\n")
        raw, _ = read_until_closed(s)
        took = time.perf_counter() - t0
    raw_error(raw, 431, "too_large", "max_header_bytes=8192")
    assert took < REQUEST_BOUND_S
    _wire(name, parser, raw, took, watch)


def test_long_url_is_a_header_too(wire_server: Any) -> None:
    s = connect(wire_server)
    s.sendall(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    raw, took = read_until_closed(s)
    raw_error(raw, 431, "too_large")
    assert took < REQUEST_BOUND_S


def test_header_flood_does_not_grow_memory(served: ProcessServer) -> None:
    """Without the cap, the C parser buffers a header of any size (a 10 MB header was answered
    200, and memory grew with it)."""
    import psutil

    assert served.proc is not None
    proc = psutil.Process(served.proc.pid)
    before = proc.memory_info().rss
    junk = b"X-Big: " + b"a" * (4 * MiB) + b"\r\n\r\n"

    def one() -> None:
        s = connect(served)
        with contextlib.suppress(OSError):
            s.sendall(REQUEST + junk)
        read_until_closed(s)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    grown = (proc.memory_info().rss - before) / MiB
    assert grown < 16, f"RSS grew {grown:.0f} MiB after 12 x 4 MiB headers"


@pytest.mark.parametrize(
    ("name", "send", "status", "needle", "deadline"),
    [
        ("connects, sends nothing", [], 0, "", "header_timeout_s"),
        ("half the headers", [REQUEST], 408, "header_timeout_s=1", "header_timeout_s"),
        ("headers one byte at a time", "trickle", 408, "header_timeout_s=1", "header_timeout_s"),
        ("half the body", [b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: "
                           b"application/json\r\nAuthorization: Bearer " + KEY.encode()
                           + b"\r\nContent-Length: 1000\r\n\r\n{\"inputs\": [\"a"],
         408, "body_timeout_s=2", "body_timeout_s"),
    ],
)  # fmt: skip
def test_slow_clients_are_cut_off(
    wire_server: Any, name: str, send: Any, status: int, needle: str, deadline: str
) -> None:
    """Slowloris: a connection that does not finish its request in time is answered 408 (or,
    having sent nothing, just closed); meanwhile every other client is served."""
    parser = "h11" if isinstance(wire_server, ThreadServer) else "httptools"
    limit = WIRE[deadline]
    with HealthWatch(wire_server.url) as watch:
        s = connect(wire_server)
        t0 = time.perf_counter()
        if send == "trickle":  # a byte every 0.1 s: each one arrives in time, the whole does not
            for b in REQUEST:
                s.send(bytes([b]))
                if select.select([s], [], [], 0.1)[0]:  # answered: stop sending, read it
                    break
        else:
            for part in send:
                s.sendall(part)
        raw, _ = read_until_closed(s, limit=limit + 5)
        took = time.perf_counter() - t0
    if status:
        raw_error(raw, status, "slow_client", needle)
    else:
        assert raw == b"", raw[:200]
    assert limit * 0.8 <= took < limit + 1.5, took
    _wire(name, parser, raw, took - limit, watch)


def fill_connections(srv: Any) -> tuple[list[socket.socket], list[socket.socket]]:
    """Open max_connections + 2 connections at once; (the idle ones, the refused ones: answered
    503 before asking). Connections of earlier tests may still be lingering for a moment; they
    count too, so more than two may be refused."""
    n = int(WIRE["max_connections"])
    conns = [connect(srv) for _ in range(n + 2)]
    time.sleep(0.3)  # well within header_timeout_s: the idle ones are still open
    answered = set(select.select(conns, [], [], 0)[0])
    return [c for c in conns if c not in answered], [c for c in conns if c in answered]


def test_connection_flood(wire_server: Any) -> None:
    """Past max_connections a new connection is answered 503 at once (Retry-After) and closed;
    the idle ones are closed at header_timeout_s, after which the service answers again."""
    parser = "h11" if isinstance(wire_server, ThreadServer) else "httptools"
    n = int(WIRE["max_connections"])
    idle, refused = fill_connections(wire_server)
    try:
        assert 2 <= len(refused) <= 6 and len(idle) <= n, (len(idle), len(refused))
        for c in refused:
            raw, _ = read_until_closed(c)
            raw_error(raw, 503, "overloaded", f"max_connections={n}")
            assert parse_raw(raw)[1]["retry-after"] == "1"
        FIGURES.add(f"wire/{parser}", "connection flood", 503, 0.0, 0.0)
        # The idle ones are closed by the server at header_timeout_s.
        closed = [read_until_closed(c, limit=WIRE["header_timeout_s"] + 3) for c in idle]
        assert all(r == b"" and t < WIRE["header_timeout_s"] + 1.5 for r, t in closed), closed
    finally:
        for c in idle:
            c.close()
    deadline = time.time() + 5
    while time.time() < deadline:  # the closes are seen by the server a moment later
        r = httpx.get(wire_server.url + "/healthz", timeout=5)
        if r.status_code == 200:
            break
        time.sleep(0.05)
    assert r.status_code == 200, r.text


def read_response(s: socket.socket) -> bytes:
    """One response with a Content-Length, read off a kept-alive connection."""
    s.settimeout(5)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))  # fmt: skip
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def test_keep_alive_after_an_early_answer(wire_server: Any) -> None:
    """A 401 answered before the body was read: the connection stays usable, the next request
    on it is answered, and the header cap still holds for the one after (the guard follows the
    parser through the unread body)."""
    s = connect(wire_server)
    body = b'{"inputs": ["a"]}' + b" " * 50_000
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)  # fmt: skip
    assert read_response(s).startswith(b"HTTP/1.1 401")
    time.sleep(0.05)  # apart, so that each request arrives in its own read
    s.sendall(REQUEST + b"\r\n")
    assert read_response(s).startswith(b"HTTP/1.1 200")
    time.sleep(0.05)
    s.sendall(REQUEST + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    raw, took = read_until_closed(s)
    raw_error(raw, 431, "too_large")
    assert took < REQUEST_BOUND_S


def test_idle_keep_alive_is_closed(wire_server: Any) -> None:
    s = connect(wire_server)
    s.sendall(REQUEST + b"\r\n")
    raw, took = read_until_closed(s)
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    assert WIRE["keepalive_timeout_s"] * 0.8 <= took < WIRE["keepalive_timeout_s"] + 1.5


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("garbage request line", b"\x00\x01\x02 nonsense\r\n\r\n"),
        ("Content-Length not a number", b"POST /v1/predict HTTP/1.1\r\nHost: t\r\n"
                                        b"Content-Length: abc\r\n\r\n"),
        ("two different Content-Lengths", b"POST /v1/predict HTTP/1.1\r\nHost: t\r\n"
                                          b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
        ("a 30-digit Content-Length", b"POST /v1/predict HTTP/1.1\r\nHost: t\r\n"
                                      b"Content-Length: 999999999999999999999999999999\r\n\r\n"),
        ("bad chunk size", b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked"
                           b"\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n"),
        ("non-ASCII in the path", b"GET /\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n"),
    ],
)  # fmt: skip
def test_malformed_http(wire_server: Any, name: str, raw: bytes) -> None:
    parser = "h11" if isinstance(wire_server, ThreadServer) else "httptools"
    with HealthWatch(wire_server.url) as watch:
        s = connect(wire_server)
        t0 = time.perf_counter()
        s.sendall(raw)
        got, _ = read_until_closed(s)
        took = time.perf_counter() - t0
    raw_error(got, 400, "bad_request")
    _wire(name, parser, got, took, watch)


def test_bad_requests_do_not_flood_the_log(h11_served: ThreadServer) -> None:
    """uvicorn logs a warning for every malformed request; a client sending them by the
    thousand must not fill the disk: at most one line of each kind per 10 s."""
    from tailorml.serve import wire

    records: Records = h11_served.records  # type: ignore[attr-defined]
    wire._last_warning.clear()  # a fresh 10 s window, whatever earlier tests logged
    start = len(records.lines)
    for _ in range(40):
        c = connect(h11_served)
        c.sendall(b"\x00\x01 nonsense\r\n\r\n")
        read_until_closed(c)
    lines = records.lines[start:]
    assert sum("Invalid HTTP request" in line for line in lines) == 1, lines  # once, not 40
    assert len(lines) <= 3, lines


def test_refusals_on_the_wire_are_counted(h11_served: ThreadServer) -> None:
    """What the guard refuses never reaches the app, but it is counted in its metrics."""

    def errors() -> dict[str, float]:
        text = httpx.get(h11_served.url + "/metrics", headers=AUTH).text
        prefix = "tailorml_errors_total{kind="
        return {line[len(prefix) + 1 : line.index("}") - 1]: float(line.split()[-1])
                for line in text.splitlines() if line.startswith(prefix)}  # fmt: skip

    def requests(path: str, status: int) -> float:
        text = httpx.get(h11_served.url + "/metrics", headers=AUTH).text
        name = f'tailorml_requests_total{{path="{path}",status="{status}"}} '
        return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(name)), 0.0)

    before = errors()
    slow_before = requests("/v1/predict", 408)
    slow = connect(h11_served)  # a body that never completes: 408, counted under its path
    slow.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 99\r\n\r\n{"
    )
    big = connect(h11_served)
    big.sendall(REQUEST + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    garbage = connect(h11_served)
    garbage.sendall(b"\x00\x01 nonsense\r\n\r\n")
    for c in (big, garbage, slow):
        read_until_closed(c)
    idle, refused = fill_connections(h11_served)
    for c in refused:
        assert read_until_closed(c)[0].startswith(b"HTTP/1.1 503")
    for c in idle:  # closed by the server at header_timeout_s: each one a slow client
        read_until_closed(c)
    time.sleep(0.2)
    after = errors()
    gained = {k: after[k] - before.get(k, 0) for k in after}
    assert gained.get("too_large") == 1 and gained.get("bad_request") == 1, gained
    assert gained.get("overloaded") == len(refused), gained
    assert gained.get("slow_client") == len(idle) + 1, gained
    assert requests("/v1/predict", 408) == slow_before + 1


# ----------------------------------------------------------------------------- settings


def test_connection_settings_reach_schema_and_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tailorml.cli import app

    runner = CliRunner()
    schema = runner.invoke(app, ["config", "schema", "serve"])
    assert schema.exit_code == 0, schema.output
    for key in ("max_header_bytes", "header_timeout_s", "body_timeout_s", "keepalive_timeout_s",
                "max_connections"):  # fmt: skip
        assert key in schema.output, key
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("model: nowhere\nheader_timeout_s: -1\nmax_connections: 0\n")
    res = runner.invoke(app, ["serve", "--config", str(cfg)])
    assert res.exit_code == 2, res.output
    assert "--header-timeout" in res.output and "--max-connections" in res.output


# ----------------------------------------------------------------------------- units


def test_error_lists_are_linear_and_truncated() -> None:
    from tailorml.serve.schemas import describe_errors

    errors = [{"type": "string_type", "loc": ("body", "inputs", i), "input": 0}
              for i in range(50_000)]  # fmt: skip
    t0 = time.perf_counter()
    lines = describe_errors(errors)
    assert time.perf_counter() - t0 < 5.0  # was quadratic: about a minute for this many
    assert len(lines) == 11
    assert lines[0] == "inputs[0]: expected a string, got a number"
    assert lines[-1] == "… and 49,990 more problems"


@pytest.mark.parametrize("max_inputs", [1, 2, 8, 64, 500])
def test_largest_valid_body_fits_the_token_budget(max_inputs: int) -> None:
    """The budget is derived from max_inputs: the biggest valid request always passes it, and
    a list just past it is refused before it is parsed."""
    from tailorml.serve.body import parse_predict, predict_token_budget
    from tailorml.serve.schemas import ApiError

    item = {"text": "a, b: [c] {d}", "text_pair": "e, f"}  # separators inside strings too
    body = json.dumps({"inputs": [item] * max_inputs}).encode()
    assert len(parse_predict(body, "application/json", max_inputs).inputs) == max_inputs
    over = json.dumps({"inputs": [0] * predict_token_budget(max_inputs)}).encode()
    with pytest.raises(ApiError) as err:
        parse_predict(over, "application/json", max_inputs)
    assert err.value.status == 413 and "JSON tokens" in err.value.message
