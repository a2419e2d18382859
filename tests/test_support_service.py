"""`tailor support serve`: a real server on 127.0.0.1 over a real database (SQLite, and the
PostgreSQL server the finwatch fixture starts), the chat page in headless Chromium, and the
terminal commands (chat, tickets, resolve, export) on a trained tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tailorml.apps.support.assistant import Assistant
from tailorml.apps.support.knowledge import Passage
from tailorml.apps.support.retrieval import BM25Retriever
from tailorml.apps.support.server import create_app
from tailorml.apps.support.store import Store

from .conftest import REPO
from .finwatch_services import db_url, postgres  # noqa: F401
from .serve_helpers import AppServer, ProcessServer
from .test_finwatch_dashboard import CHROMIUM, DRIVER, chrome
from .test_support_assistant import support_config

KEY = "s3cret-key"
ARTICLES = {
    "pin_blocked": ("Blocked PIN", "If your PIN is blocked, unblock it in the app settings."),
    "card_arrival": ("Where is my card?", "Cards arrive by post within 5 working days."),
}


class KeywordModel:
    """A deterministic intent model: confident when the message names its intent's keyword."""

    labels = ["card_arrival", "pin_blocked", "top_up"]
    words = {"card": 0, "pin": 1, "top": 2}

    def predict_sorted(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 3))
        for j, t in enumerate(texts):
            for w, k in self.words.items():
                if w in t.lower():
                    out[j, k] = 5.0
        return out


def keyword_bot() -> Assistant:
    passages = [Passage(d, f"{d}#0", t, x) for d, (t, x) in ARTICLES.items()]
    return Assistant(
        KeywordModel(),
        threshold=0.6,
        answers={"top_up": "Your top-up of {amount} is on its way."},
        retriever=BM25Retriever().fit(passages),
        min_retrieval_score=0.1,
        retrieval_threshold=0.1,
        handoff_message="A colleague will reply here.",
    )


def serve(store: Store, **kw: Any) -> AppServer:
    return AppServer(create_app(keyword_bot(), store, **kw))


def post(url: str, body: Any, key: str | None = None) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return httpx.post(url + "/v1/chat", json=body, headers=headers, timeout=30)


def test_turns_are_logged_and_hand_offs_open_one_ticket(db_url: str) -> None:  # noqa: F811
    store = Store(db_url)
    with serve(store) as srv:
        said = [
            post(srv.url, {"session_id": "s1", "message": m}).json()
            for m in (
                "my pin is blocked",
                "can I top up 20 EUR",
                "what is the weather like",
                "and tomorrow?",
            )
        ]
        assert [r["path"] for r in said] == ["retrieval", "template", "handoff", "handoff"]
        assert [r["turn"] for r in said] == [1, 2, 3, 4]
        assert said[0]["sources"][0]["doc_id"] == "pin_blocked" and said[0]["ticket_id"] is None
        assert said[1]["answer"] == "Your top-up of 20 is on its way."
        ticket = said[2]["ticket_id"]
        assert ticket is not None and said[3]["ticket_id"] == ticket  # one ticket per session
        assert said[2]["answer"] == "A colleague will reply here." and said[2]["sources"] == []
        new = post(srv.url, {"message": "pin"}).json()  # no session_id: a new session
        assert new["turn"] == 1 and new["session_id"] not in ("s1", "")

        listed = httpx.get(srv.url + "/v1/tickets").json()["tickets"]
        assert [t["id"] for t in listed] == [ticket]
        assert [t["message"] for t in listed[0]["conversation"]][2:] == [
            "what is the weather like",
            "and tomorrow?",
        ]
        conv = httpx.get(srv.url + "/v1/sessions/s1").json()["turns"]
        assert [t["intent"] for t in conv][:2] == ["pin_blocked", "top_up"]
        assert httpx.get(srv.url + "/v1/sessions/nope").status_code == 404

        r = httpx.post(f"{srv.url}/v1/tickets/{ticket}/resolve", json={"intent": "out_of_scope"})
        assert r.status_code == 200 and r.json()["known_intent"] is False
        again = httpx.post(f"{srv.url}/v1/tickets/{ticket}/resolve", json={})
        assert again.status_code == 404 and again.json()["error"]["type"] == "not_found"
        assert httpx.get(srv.url + "/v1/tickets").json()["tickets"] == []
        done = httpx.get(srv.url + "/v1/tickets?status=resolved").json()["tickets"]
        assert done[0]["intent"] == "out_of_scope"
    store.close()
    # Every answered turn is in the database, read by a new connection.
    fresh = Store(db_url)
    assert fresh.count_turns() == 5
    # The turn that handed off carries the person's label: a training row.
    assert fresh.corrected() == [{"text": "what is the weather like", "label": "out_of_scope"}]
    fresh.close()


def test_concurrent_messages_of_one_session_get_distinct_turns(db_url: str) -> None:  # noqa: F811
    store = Store(db_url)
    with serve(store) as srv:
        got: list[int] = []

        def one(j: int) -> None:
            r = post(srv.url, {"session_id": "busy", "message": f"weather {j}"})
            assert r.status_code == 200, r.text
            got.append(r.json()["turn"])

        threads = [threading.Thread(target=one, args=(j,)) for j in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(got) == list(range(1, 13))
    conv = store.conversation("busy")
    assert [t["turn"] for t in conv] == list(range(1, 13))
    assert len({t["ticket_id"] for t in conv}) == 1  # every hand-off joined one ticket
    store.close()


def test_malformed_requests_get_4xx_naming_the_field(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    with serve(store, api_key=KEY, max_body_bytes=2000) as srv:
        assert post(srv.url, {"message": "pin"}).status_code == 401  # no key
        assert post(srv.url, {"message": "pin"}, key="wrong").status_code == 401
        ok = post(srv.url, {"message": "pin"}, key=KEY)
        assert ok.status_code == 200

        def problem(body: Any) -> str:
            r = post(srv.url, body, key=KEY)
            assert r.status_code == 422, (body, r.text)
            return str(r.json()["error"]["message"])

        assert "message" in problem({"session_id": "a"})
        assert "message" in problem({"session_id": "a", "message": "   "})
        assert "message" in problem({"session_id": "a", "message": 5})
        assert "session_id" in problem({"session_id": "a b/c", "message": "hi"})
        assert "sessionid" in problem({"sessionid": "a", "message": "hi"})  # unknown field
        r = httpx.post(
            srv.url + "/v1/chat",
            content=b"{not json",
            headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        )
        assert r.status_code == 422
        big = post(srv.url, {"message": "x" * 3000}, key=KEY)
        assert big.status_code == 413 and "max-body-bytes" in big.json()["error"]["message"]
        bad = httpx.post(srv.url + "/v1/tickets/abc/resolve", json={}, headers={"X-API-Key": KEY})
        assert bad.status_code == 422 and "ticket_id" in bad.json()["error"]["message"]
        bad = httpx.post(
            srv.url + "/v1/tickets/1/resolve", json={"intent": 3}, headers={"X-API-Key": KEY}
        )
        assert bad.status_code == 422 and "intent" in bad.json()["error"]["message"]
        # probes are open; metrics need the key
        assert httpx.get(srv.url + "/healthz").status_code == 200
        assert httpx.get(srv.url + "/readyz").json() == {"status": "ready"}
        assert httpx.get(srv.url + "/metrics").status_code == 401
        m = httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
        assert m.status_code == 200 and "/v1/chat" in m.text
    assert store.count_turns() == 1  # refused requests logged nothing
    store.close()


def test_a_turn_that_cannot_be_saved_is_not_answered(tmp_path: Path) -> None:
    class Broken(Store):
        def log_turn(self, session_id: str, message: str, reply: dict[str, Any]) -> Any:
            raise RuntimeError("disk full")

    store = Broken(f"sqlite:///{tmp_path / 's.db'}")
    with serve(store) as srv:
        r = post(srv.url, {"session_id": "x", "message": "my pin is blocked"})
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert "could not be saved" in r.json()["error"]["message"]
    assert "unblock" not in r.text  # no answer given
    store.close()


@pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="chromium/chromedriver not installed; apt-get install chromium chromium-driver",
)
def test_chat_page_in_headless_chromium(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    with serve(store, api_key=KEY) as srv, tempfile.TemporaryDirectory() as user_dir:
        driver = chrome(user_dir)
        try:
            driver.get(f"{srv.url}/#key={KEY}")
            assert "key=" not in driver.current_url  # the key leaves the address bar

            def ask(text: str, n: int) -> Any:
                box = driver.find_element(By.ID, "message")
                box.send_keys(text)
                driver.find_element(By.ID, "send").click()
                WebDriverWait(driver, 20).until(
                    lambda d: len(d.find_elements(By.CSS_SELECTOR, ".turn.bot")) >= n
                )
                return driver.find_elements(By.CSS_SELECTOR, ".turn.bot")[-1]

            first = ask("my pin is blocked", 1)
            assert "unblock it in the app settings" in first.text
            sources = first.find_elements(By.CSS_SELECTOR, ".source")
            assert sources[0].get_attribute("data-doc-id") == "pin_blocked"  # the best first
            assert "Blocked PIN" in sources[0].text
            second = ask("<b>what</b> is the weather", 2)
            assert "handoff" in (second.get_attribute("class") or "")
            tickets = httpx.get(srv.url + "/v1/tickets", headers={"X-API-Key": KEY}).json()
            [ticket] = tickets["tickets"]
            assert f"ticket #{ticket['id']}" in second.text
            # the customer's text is shown as text, not markup
            you = driver.find_elements(By.CSS_SELECTOR, ".turn.you .bubble")
            assert you[-1].text == "<b>what</b> is the weather"
            assert driver.find_element(By.ID, "status").text == ""
            # both turns belong to the page's one session
            assert [t["message"] for t in ticket["conversation"]] == [
                "my pin is blocked",
                "<b>what</b> is the weather",
            ]
        finally:
            driver.quit()
    store.close()


# ---- the commands on a trained tiny run ---------------------------------------------------------

CLI = [sys.executable, "-m", "tailorml.cli", "support"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("support_run")
    kb = tmp / "kb"
    kb.mkdir()
    for doc, (title, text) in ARTICLES.items():
        (kb / f"{doc}.md").write_text(f"# {title}\n\n{text}\n")
    cfg = support_config(tmp, knowledge={"documents": str(kb), "retriever": "bm25"})
    cfg["train"]["epochs"] = 3
    cfg["support"] = {"target_oos_recall": 0.8, "min_retrieval_score": 0.5}
    path = tmp / "support.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([*CLI, "train", str(path)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    return tmp / "run"


def support(*args: str, input: str | None = None) -> Any:
    """`tailor support ...` in this process (typer's runner): what the commands print and exit."""
    from typer.testing import CliRunner

    from tailorml.cli import app

    return CliRunner().invoke(app, ["support", *args], input=input)


def test_terminal_chat_tickets_resolve_and_export(tiny_run: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    lines = "my pin is blocked\n\npizza football holiday\n"
    res = support("chat", str(tiny_run), "--db", db, "--session", "term1", input=lines)
    assert res.exit_code == 0, res.output
    assert res.stdout.count("assistant: ") == 2  # the blank line is not a message
    store = Store(db)
    conv = store.conversation("term1")
    assert [t["message"] for t in conv] == ["my pin is blocked", "pizza football holiday"]
    for turn, block in zip(conv, res.stdout.split("assistant: ")[1:], strict=True):
        assert block.startswith(turn["answer"].split("\n")[0])
        assert ("handed off: ticket #" in block) == turn["handoff"]
    # a hand-off of our own, then the listing, the resolution and the export
    store.log_turn("term2", "is it raining", {**conv[0], "handoff": True, "path": "handoff"})
    [ticket] = [t for t in store.list_tickets() if t["session_id"] == "term2"]
    store.close()
    listed = json.loads(support("tickets", str(tiny_run), "--db", db, "--json").stdout)
    assert ticket["id"] in [t["id"] for t in listed]
    out = tmp_path / "labelled.csv"
    res = support("export", str(tiny_run), "--db", db, "-o", str(out))
    assert res.exit_code == 2 and "support resolve" in res.output  # nothing labelled yet
    resolve = ("resolve", str(tiny_run), str(ticket["id"]), "--db", db)
    res = support(*resolve, "--intent", "top_up")
    assert res.exit_code == 0, res.output
    res = support(*resolve)
    assert res.exit_code == 2 and "no open ticket" in res.output
    res = support("export", str(tiny_run), "--db", db, "-o", str(out))
    assert res.exit_code == 0, res.output
    assert out.read_text().splitlines() == ["text,label", "is it raining,top_up"]
    # the fine-tuning stage accepts it as training data
    from tailorml.config.load import validate_mapping
    from tailorml.recipes.validate import check_inputs

    rows = out.read_text() + "".join(f"top up my card {j},top_up\n" for j in range(4))
    rows += "".join(f"my pin is blocked {j},pin_blocked\n" for j in range(5))
    out.write_text(rows)
    cfg, problems = validate_mapping(
        {
            "output_dir": str(tmp_path / "ft"),
            "data": {"train": str(out)},
            "model": {"base": "tiny"},
            "task": {"type": "classification"},
        }
    )
    assert cfg is not None, problems
    assert check_inputs(cfg) == []


class SupportServer(ProcessServer):
    def __init__(self, run: Path, log: Path, *args: str, env: dict[str, str] | None = None):
        super().__init__(run, log, *args, env=env)
        self.cmd[self.cmd.index("serve")] = "support"
        self.cmd.insert(self.cmd.index("support") + 1, "serve")


@pytest.mark.slow  # a `tailor support serve` process (~10 s); its app is tested in-process above
def test_support_serve_process_answers_and_drains(tiny_run: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    args = ("--db", db, "--threads", "1", "--log-level", "warning")
    with SupportServer(tiny_run, tmp_path / "log", *args, env={"TAILORML_API_KEY": KEY}) as srv:
        assert post(srv.url, {"message": "my pin is blocked"}).status_code == 401
        r = post(srv.url, {"session_id": "p1", "message": "my pin is blocked"}, key=KEY)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) >= {"answer", "intent", "confidence", "sources", "handoff", "ticket_id"}
        assert "Support chat" in httpx.get(srv.url + "/").text  # the page needs no key
        srv.terminate()
        rc = srv.proc.wait(60) if srv.proc else None
    assert rc in (0, -15, 143), srv.output()
    store = Store(db)
    assert [t["message"] for t in store.conversation("p1")] == ["my pin is blocked"]
    store.close()
