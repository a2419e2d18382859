"""Generation serving: the continuous-batching engine against `generate`, and `tailor serve` on
a causal-LM folder (a tiny random Llama with large initial weights, so that its greedy output
varies with the context) answering /v1/generate, SSE streams and the OpenAI client."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from .serve_helpers import ProcessServer, ThreadServer

PROMPTS = [
    "Hello there",
    "What is the capital of a country far away in the north?",
    "x",
    "Tell me a story about bees and honey, please, a long one",
    "ok",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForCausalLM

    from tailorml.config.schema import ModelConfig
    from tailorml.models.causal_lm import (
        load_causal_tokenizer,
        set_generation_tokens,
        tiny_causal_config,
    )

    tok = load_causal_tokenizer(None)
    torch.manual_seed(0)
    cfg = tiny_causal_config(
        ModelConfig(base="tiny", tiny_hidden_size=32), tok, initializer_range=0.5
    )
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    set_generation_tokens(model, tok)
    out = tmp_path_factory.mktemp("gen") / "tiny-chat"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gen(folder: Path) -> Any:
    from tailorml.predictors.generator import Generator

    torch.set_num_threads(1)
    return Generator.load(folder)


def _run_engine(gen: Any, prompts: list[str], sampling: list[Any], **kw: Any) -> list[Any]:
    """Submit each prompt a little after the previous one; (deltas, Done) per prompt."""
    from tailorml.predictors.decoder import DecodeEngine, Sequence

    engine = DecodeEngine(gen.model, gen.tokenizer, **kw)
    engine.start()
    got: list[tuple[list[str], Any]] = [([], None) for _ in prompts]
    ended = [threading.Event() for _ in prompts]

    def on(i: int) -> Any:
        def event(delta: str, done: Any) -> None:
            got[i][0].append(delta)
            if done is not None:
                got[i] = (got[i][0], done)
                ended[i].set()

        return event

    for i, (p, sp) in enumerate(zip(prompts, sampling, strict=True)):
        ids = gen.tokenizer(gen.render(p), add_special_tokens=False)["input_ids"]
        engine.submit(Sequence(ids, sp, on(i)))
        time.sleep(0.003 * i)
    for e in ended:
        assert e.wait(60)
    engine.close()
    assert engine.running == 0 and engine.waiting == 0
    return got


def test_engine_equals_generate_as_sequences_join_and_leave(gen: Any) -> None:
    """Greedy answers from the continuous batch (3 rows at most, so sequences queue, join a
    running batch at different lengths and leave it at different steps) are those of
    `generate` run one prompt at a time; the streamed chunks add up to the answer."""
    from tailorml.predictors.decoder import Sampling

    lengths = [12, 20, 5, 16, 9]
    want = [
        gen.generate([p], max_new_tokens=n, batch_size=1)[0]
        for p, n in zip(PROMPTS, lengths, strict=True)
    ]
    got = _run_engine(gen, PROMPTS, [Sampling(max_new_tokens=n) for n in lengths], max_batch_size=3)
    for w, (deltas, done) in zip(want, got, strict=True):
        assert len(set(w.output)) > 3  # the tiny model's answers are not one repeated token
        assert done.output == w.output and done.tokens == w.tokens == done.tokens
        assert done.finish_reason == w.finish_reason == "length"
        assert "".join(deltas) == done.output
        assert done.ttft_s > 0 and done.prompt_tokens > 3


def test_engine_stop_strings_and_seeded_sampling(gen: Any) -> None:
    from tailorml.predictors.decoder import Sampling, _safe_end

    full = gen.generate([PROMPTS[0]], max_new_tokens=12, batch_size=1)[0].output
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full[: full.find(stop)]
    sampled = Sampling(max_new_tokens=10, temperature=0.9, top_p=0.9, top_k=50, seed=7)
    got = _run_engine(
        gen,
        [PROMPTS[0], PROMPTS[1], PROMPTS[1], PROMPTS[3]],
        [Sampling(max_new_tokens=12, stop=(stop, "\x00never")), sampled, sampled, sampled],
        max_batch_size=4,
    )
    (deltas, done) = got[0]
    assert done.finish_reason == "stop" and done.output == cut
    assert "".join(deltas) == cut and stop not in "".join(deltas)  # never streamed
    # the same seed gives the same sample whatever else shares the batch
    assert got[1][1].output == got[2][1].output != got[3][1].output
    greedy = gen.generate([PROMPTS[1]], max_new_tokens=10, batch_size=1)[0].output
    assert got[1][1].output != greedy
    # text held back: an incomplete character, or a tail that may begin a stop string
    assert _safe_end("abc\ufffd", ()) == 3
    assert _safe_end("say ST", ("STOP",)) == 4 and _safe_end("say X", ("STOP",)) == 5


@pytest.fixture(scope="module")
def server(gen: Any) -> Any:
    with ThreadServer(gen, api_key="k3y", max_new_tokens=40, max_prompt_tokens=64) as srv:
        yield srv


def _client(srv: Any) -> httpx.Client:
    return httpx.Client(base_url=srv.url, headers={"X-API-Key": "k3y"}, timeout=60)


def _sse(text: str) -> list[Any]:
    data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_generate_plain_and_streamed(server: Any, gen: Any) -> None:
    want = gen.generate([PROMPTS[1]], max_new_tokens=15, batch_size=1)[0]
    with _client(server) as c:
        r = c.post("/v1/generate", json={"prompt": PROMPTS[1], "max_new_tokens": 15})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["output"] == want.output and body["finish_reason"] == "length"
        assert body["tokens"] == 15 and body["model"]["name"] == "tiny-chat"
        chat = [{"role": "user", "content": PROMPTS[1]}]
        r = c.post("/v1/generate", json={"messages": chat, "max_new_tokens": 15, "stream": True})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r.text)
        chunks = [e["text"] for e in events[:-1]]
        assert len(chunks) > 3 and "".join(chunks) == want.output
        assert events[-1]["finish_reason"] == "length" and events[-1]["output"] == want.output
        spec = c.get("/openapi.json").json()
        assert {"GenerateRequest", "ChatRequest", "Message"} <= set(spec["components"]["schemas"])


def test_openai_client_unchanged(server: Any, gen: Any) -> None:
    from openai import OpenAI

    want = gen.generate([PROMPTS[3]], max_new_tokens=12, batch_size=1)[0].output
    client = OpenAI(base_url=server.url + "/v1", api_key="k3y")
    msgs: Any = [{"role": "user", "content": PROMPTS[3]}]
    r = client.chat.completions.create(model="tiny-chat", messages=msgs, max_tokens=12)
    assert r.choices[0].message.content == want and r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 12
    stream = client.chat.completions.create(
        model="tiny-chat",
        messages=msgs,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            reasons.append(chunk.choices[0].finish_reason)
        usage = chunk.usage or usage
    assert "".join(parts) == want and reasons[-1] == "length" and usage is not None
    assert [m.id for m in client.models.list()] == ["tiny-chat"]
    with pytest.raises(Exception, match="401"):
        OpenAI(base_url=server.url + "/v1", api_key="wrong").models.list()


def test_concurrent_requests_share_decode_steps(server: Any, gen: Any) -> None:
    """8 clients at once each get the answer they would get alone, from shared decode steps."""
    want = {p: gen.generate([p], max_new_tokens=20, batch_size=1)[0].output for p in PROMPTS}
    first = _client(server).get("/metrics").text
    before = _metric(first, "tailorml_batch_size_sum")
    steps_before = _metric(first, "tailorml_batch_size_count")
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        with _client(server) as c:
            r = c.post("/v1/generate", json={"prompt": PROMPTS[i % 5], "max_new_tokens": 20})
            answers[i] = r.json()["output"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {i: answers[i] for i in range(8)} == {i: want[PROMPTS[i % 5]] for i in range(8)}
    text = _client(server).get("/metrics").text
    rows = _metric(text, "tailorml_batch_size_sum") - before
    assert rows == 8 * 19  # the first token of each comes from its prefill
    for name in (
        "tailorml_generated_tokens_total",
        "tailorml_time_to_first_token_seconds_count",
        "tailorml_tokens_per_second",
        "tailorml_queue_depth",
        "tailorml_running_sequences",
    ):
        assert name in text, name
    steps = _metric(text, "tailorml_batch_size_count") - steps_before
    assert rows / steps > 2.0, (rows, steps)  # decode steps were shared


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"prompt": "hi", "max_new_tokens": 41}, 413, "max_new_tokens=40"),
        ({"prompt": "word " * 80}, 413, "max_prompt_tokens=64"),
        ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, 422, "exactly one"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 422, "messages[0].role"),
        ({"prompt": "   "}, 422, "empty"),
        ({"prompt": "hi", "temperature": -1}, 422, "temperature"),
        ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
        ({"prompt": "hi", "colour": 1}, 422, "colour"),
        ({"prompt": 3}, 422, "prompt"),
    ],
)
def test_bad_requests_name_the_field_or_limit(
    server: Any, body: dict[str, Any], status: int, needle: str
) -> None:
    with _client(server) as c:
        r = c.post("/v1/generate", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"], r.text


def test_chat_completions_limits_and_auth(server: Any) -> None:
    with _client(server) as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 99},
        )
        assert r.status_code == 413 and "max_new_tokens=40" in r.text
        r = c.post("/v1/chat/completions", json={"messages": [], "model": "x"})
        assert r.status_code == 422 and "messages" in r.text
        r = c.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}], "n": 2}
        )
        assert r.status_code == 422
    r = httpx.post(server.url + "/v1/generate", json={"prompt": "hi"})
    assert r.status_code == 401


def test_disconnect_and_timeout_stop_the_generation(gen: Any) -> None:
    with ThreadServer(gen, max_new_tokens=100_000, timeout_s=0.3) as srv:
        state = srv.server.config.app.app.state.service
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            r = c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 1500})
            assert r.status_code == 504 and "timeout_s=0.3" in r.text
            r = c.post(
                "/v1/generate", json={"prompt": "hi", "max_new_tokens": 1500, "stream": True}
            )
            assert _sse(r.text)[-1]["finish_reason"] == "timeout"
        srv.settings.timeout_s = 60
        deadline = time.time() + 10
        while state.engine.running and time.time() < deadline:
            time.sleep(0.05)
        start = state.engine.tokens
        # a client that reads one chunk and hangs up: its generation stops
        with (
            httpx.Client(base_url=srv.url, timeout=30) as c,
            c.stream(
                "POST",
                "/v1/generate",
                json={"prompt": "hi", "max_new_tokens": 1500, "stream": True},
            ) as r,
        ):
            next(r.iter_lines())
        deadline = time.time() + 10
        while state.engine.running and time.time() < deadline:
            time.sleep(0.05)
        used = state.engine.tokens - start
        assert state.engine.running == 0 and used < 300, used


def test_tailor_serve_drains_streams_on_sigterm(folder: Path, tmp_path: Path) -> None:
    """`tailor serve FOLDER`: SIGTERM while streams run; each finishes, then the process exits
    by the signal and the port refuses new connections."""
    srv = ProcessServer(folder, tmp_path / "serve.log", "--threads", "1", "--log-level", "info")
    results: list[Any] = []

    def stream() -> None:
        body = {"prompt": "hello", "max_new_tokens": 300, "stream": True}
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            results.append(_sse(c.post("/v1/generate", json=body).text)[-1])

    with srv:
        threads = [threading.Thread(target=stream) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        srv.terminate()
        rc = srv.proc.wait(60) if srv.proc else None
        for t in threads:
            t.join(60)
    assert [r["finish_reason"] for r in results] == ["length"] * 3, results
    assert rc == -signal.SIGTERM, srv.output()
    assert "Traceback" not in srv.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/healthz")


# The engine thread re-raises the model's error after ending every sequence, so that it reaches
# the log through the thread's excepthook: expected here, not a stray failure.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failing_model_ends_every_sequence_and_refuses_new_ones(gen: Any) -> None:
    from tailorml.predictors.decoder import DecodeEngine, EngineClosed, Sampling, Sequence

    class Broken:
        config = gen.model.config
        generation_config = gen.model.generation_config

        def __call__(self, **kw: Any) -> Any:
            raise RuntimeError("out of memory, say")

    engine = DecodeEngine(Broken(), gen.tokenizer)
    ended: list[Any] = []
    engine.submit(Sequence([1, 2, 3], Sampling(), lambda d, done: done and ended.append(done)))
    engine.start()
    assert engine._thread is not None
    engine._thread.join(10)
    assert [d.finish_reason for d in ended] == ["error"]
    assert isinstance(engine.failure, RuntimeError)
    with pytest.raises(EngineClosed):
        engine.submit(Sequence([1], Sampling(), lambda d, done: None))
