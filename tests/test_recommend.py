"""The recommender app: the protocol on hand-computed cases, the data checks, the models on a
tiny generated data set, the CLI, and the service on a real server on 127.0.0.1."""

from __future__ import annotations

import csv
import json
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tailorml.apps.recommend import baselines as bl
from tailorml.apps.recommend.config import DataConfig, load_recommend_config
from tailorml.apps.recommend.data import Events, load, read_events, read_items
from tailorml.apps.recommend.evaluate import (
    evaluate,
    metrics_from_ranks,
    rank_of,
    split_leave_one_out,
    top_k,
)
from tailorml.errors import ConfigError, DataError

from .conftest import REPO
from .serve_helpers import AppServer, free_port

GENRES = ["Action", "Comedy", "Drama", "Horror"]


def write(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def make_data(tmp: Path, users: int = 40, items: int = 60) -> tuple[Path, Path]:
    """Each user likes one genre and walks through its items in order (so the next item is
    predictable from the history: a sequence signal the models can learn)."""
    rng = random.Random(0)
    it = write(
        tmp / "items.csv",
        ["item", "title", "genres"],
        [[f"i{i}", f"{GENRES[i % 4]} film number {i}", GENRES[i % 4]] for i in range(items)],
    )
    rows = []
    for u in range(users):
        g, start, t = u % 4, rng.randrange(10), 1000 * u
        for j in range(12):
            t += rng.randint(1, 100)
            rows.append([f"u{u}", f"i{g + 4 * ((start + j) % 15)}", t, rng.choice([3, 4, 5])])
    ev = write(tmp / "events.csv", ["user", "item", "time", "rating"], rows)
    return ev, it


def data_cfg(ev: Path, it: Path, **kw: Any) -> DataConfig:
    return DataConfig(
        interactions=ev, items=it, user_column="user", item_column="item", time_column="time",
        rating_column="rating", text_columns=["title", "genres"], genre_column="genres", **kw,
    )  # fmt: skip


# ---- the protocol, by hand ----------------------------------------------------------------


def test_metrics_of_known_ranks() -> None:
    # ranks 0, 2 and 10 (0-based) at k=10: NDCG = (1 + 1/log2(4) + 0)/3, hits 2 of 3,
    # MRR = (1 + 1/3 + 0)/3.
    m = metrics_from_ranks(np.array([0, 2, 10]), 10)
    assert m["ndcg@10"] == pytest.approx(0.5)
    assert m["recall@10"] == pytest.approx(2 / 3)
    assert m["mrr@10"] == pytest.approx(4 / 9)


def test_rank_and_top_k_break_ties_by_item_order() -> None:
    s = np.array([[0.5, 0.9, 0.5, 0.5, 0.1]])
    assert rank_of(s, np.array([2])).tolist() == [2]  # 0.9 first, then item 0 (tie), then 2
    assert rank_of(s, np.array([0])).tolist() == [1]
    assert rank_of(s, np.array([1])).tolist() == [0]
    assert top_k(s, 4).tolist() == [[1, 0, 2, 3]]


class FixedScores:
    """Every history gets the same scores (higher item index = better)."""

    def __init__(self, n: int):
        self.s = np.arange(n, dtype=float)

    def score(self, hist: Any, seqs: Any, times: Any = None) -> np.ndarray:
        return np.tile(self.s, (hist.shape[0], 1))


def events(rows: list[tuple[int, int, float]], users: int) -> Events:
    u, i, t = (np.array(c) for c in zip(*rows, strict=True))
    order = np.lexsort((np.arange(len(u)), t, u))
    return Events(u[order], i[order], t[order].astype(float), [f"u{n}" for n in range(users)])


def test_split_and_earlier_items_excluded() -> None:
    # user 0: items 3, 9, 5, 7 in time order -> train {3, 9}, valid 5, test 7.
    # user 1: two events only -> training only, no targets.
    e = events([(0, 9, 2.0), (0, 3, 1.0), (0, 7, 4.0), (0, 5, 3.0), (1, 1, 1.0), (1, 2, 2.0)], 2)
    sp_ = split_leave_one_out(e, 10)
    users, targets, hist, times = sp_.targets("test")
    assert users.tolist() == [0] and targets.tolist() == [7]
    assert hist[0].tolist() == [3, 9, 5] and times.tolist() == [3.0]
    assert [s.tolist() for s in sp_.train_sequences()] == [[3, 9], [1, 2]]
    # Scores rank 9 > 8 > 7 > ...; 9 and 5 are in the test history, so 7 ranks second (after 8).
    m = evaluate(FixedScores(10), sp_, "test", k=10, cold_max_train=0, detail=True)
    assert m["_ranks"].tolist() == [1]
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert m["mrr@10"] == pytest.approx(0.5)
    # valid: history {3, 9}; target 5 is beaten by 8, 7, 6 -> rank 3.
    v = evaluate(FixedScores(10), sp_, "valid", k=3, cold_max_train=0, detail=True)
    assert v["_ranks"].tolist() == [3] and v["recall@3"] == 0.0
    # item 5 and 7 have no training events: both targets are cold (at most 0 training events)
    assert m["cold_targets"] == 1 and m["cold_ndcg@10"] == pytest.approx(m["ndcg@10"])
    # coverage: the one top-10 list holds 10 - 3 history items... of 10 items: 7 distinct
    assert m["coverage@10"] == pytest.approx(0.7)


def test_time_ties_keep_file_order(tmp_path: Path) -> None:
    rows = [["a", "i2", 5, 4], ["a", "i0", 5, 4], ["a", "i1", 1, 4], ["a", "i3", 5, 4]]
    ev = write(tmp_path / "e.csv", ["user", "item", "time", "rating"], rows)
    _, it = make_data(tmp_path)
    d = data_cfg(ev, it)
    items = read_items(d)
    e = read_events(d, items)
    assert [items.ids[i] for i in e.item] == ["i1", "i2", "i0", "i3"]


# ---- data checks -----------------------------------------------------------------------------


def test_bad_rows_are_listed_with_file_and_line(tmp_path: Path) -> None:
    _, it = make_data(tmp_path)
    ev = write(tmp_path / "bad.csv", ["user", "item", "time", "rating"],
               [["u1", "i1", 10, 4], ["u1", "nope", 11, 4], ["", "i2", 12, 4],
                ["u2", "i3", "yesterday", 4], ["u2", "i4", "2024-01-02T03:04:05", "x"],
                ["u2", "i5", "2024-01-02T03:04:05", 5]])  # fmt: skip
    d = data_cfg(ev, it)
    with pytest.raises(DataError) as err:
        load(d)
    msg = str(err.value)
    assert "4 bad row(s)" in msg
    assert f"{ev}:3: unknown item 'nope'" in msg
    assert f"{ev}:4: missing user" in msg
    assert f"{ev}:5: unparsable time 'yesterday'" in msg
    assert f"{ev}:6: unparsable rating 'x'" in msg
    items, e = load(data_cfg(ev, it, on_bad_rows="skip"))
    assert len(e) == 2 and len(e.bad) == 4  # the ISO time of line 7 parsed


def test_min_rating_keeps_events_at_or_above(tmp_path: Path) -> None:
    ev, it = make_data(tmp_path)
    all_ = load(data_cfg(ev, it))[1]
    kept = load(data_cfg(ev, it, min_rating=4))[1]
    ratings = [int(r["rating"]) for r in csv.DictReader(ev.open())]
    assert len(all_) == len(ratings)
    assert len(kept) == sum(r >= 4 for r in ratings)
    assert kept.dropped_by_rating == sum(r < 4 for r in ratings)


def test_config_problems_at_once(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "kind": "recommend",
        "data": {"interactions": "missing.csv", "items": "gone.csv", "min_rating": 3},
        "model": {"dim": 30, "heads": 4, "epochz": 3},
    }))  # fmt: skip
    with pytest.raises(ConfigError) as err:
        load_recommend_config(cfg)
    msg = str(err.value)
    assert "epochz" in msg and "data.interactions" in msg and "data.items" in msg


# ---- models ----------------------------------------------------------------------------------


def test_baselines_learn_the_sequences(tmp_path: Path) -> None:
    ev, it = make_data(tmp_path)
    items, e = load(data_cfg(ev, it))
    sp_ = split_leave_one_out(e, len(items))
    x = sp_.train_matrix()
    pop = evaluate(bl.Popularity().fit(x), sp_, "test")["ndcg@10"]
    for model in (bl.ItemKNN(20), bl.EASE(10.0), bl.ImplicitALS(8, 1.0, 10.0, 5)):
        got = evaluate(model.fit(x), sp_, "test")["ndcg@10"]
        assert got > pop + 0.2, (model.name, got, pop)
    with pytest.raises(Exception, match="not fitted"):
        bl.EASE().score(x)


# ---- the app: train, evaluate, serve, add-items --------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from typer.testing import CliRunner

    from tailorml.cli import app

    tmp = tmp_path_factory.mktemp("recommend")
    ev, it = make_data(tmp)
    cfg = {
        "kind": "recommend",
        "output_dir": str(tmp / "run"),
        "data": {"interactions": str(ev), "items": str(it), "user_column": "user",
                 "item_column": "item", "time_column": "time", "rating_column": "rating",
                 "text_columns": ["title", "genres"], "genre_column": "genres"},
        "eval": {"cold_max_train": 2},
        "baselines": {"ease_lambdas": [10.0], "knn_neighbours": [20], "als_factors": 8,
                      "als_regs": [1.0], "als_iterations": 3},
        "model": {"encoder": "tiny", "dim": 16, "layers": 1, "max_history": 10, "epochs": 40,
                  "eval_every": 10, "negatives": 16, "lr": 0.005},
        "ranker": {"candidates": 20},
        "train": {"threads": 1},
    }  # fmt: skip
    path = tmp / "rec.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["recommend", "train", str(path)])
    assert res.exit_code == 0, res.output
    assert "| ease |" in res.output and "| text+fusion |" in res.output
    again = CliRunner().invoke(app, ["recommend", "train", str(path)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    return tmp / "run"


def test_run_folder_and_eval(run: Path) -> None:
    from typer.testing import CliRunner

    from tailorml.cli import app

    plots = ["plots/metric_by_model.png", "plots/by_activity.png", "plots/cold_vs_warm.png"]
    saved = ["model/model.safetensors", "index.faiss", "ranker.json", "report.md", *plots]
    for name in [*saved, "cf.npz", "next.npz", "prev.npz"]:
        assert (run / name).is_file(), name
    ev = json.loads((run / "eval.json").read_text())
    for key in ("ndcg@10", "recall@10", "mrr@10", "coverage@10", "cold_ndcg@10"):
        assert key in ev["test"] and key in ev["valid"]
    assert set(ev["baselines"]) == {"pop", "itemknn", "ease", "als"}
    assert "test" in ev["baselines"]["ease"]
    # The model learned the sequences (popularity scores 0 on this data).
    assert ev["models"]["text"]["test"]["ndcg@10"] > ev["baselines"]["pop"]["test"]["ndcg@10"]
    before = {m: ev["models"][m]["test"] for m in ("text", "text+fusion")}
    res = CliRunner().invoke(app, ["recommend", "evaluate", str(run)])
    assert res.exit_code == 0, res.output
    assert "| text+fusion |" in res.output
    after = json.loads((run / "eval.json").read_text())["models"]
    # The saved model, ranker and item-to-item matrices score as they did in training.
    for m in ("text", "text+fusion"):
        assert after[m]["test"] == pytest.approx(before[m]), m


def test_ranker_ablation_reproduces_the_runs_fusion_figure(run: Path, tmp_path: Path) -> None:
    """benchmarks/recommend_ranker_ablation.py: its "every feature" test figure is the run's
    own text+fusion one, and it leaves out each feature once."""
    from tailorml.apps.recommend.ranker import FEATURES

    out = tmp_path / "ablation.json"
    script = REPO / "benchmarks" / "recommend_ranker_ablation.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(run), "--record", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {r["features"]: r for r in json.loads(out.read_text())["table"]}
    assert set(rows) == {"text model alone (no ranker)", "every feature"} | {
        f"without {f}" for f in FEATURES
    }
    ev = json.loads((run / "eval.json").read_text())["models"]
    assert rows["every feature"]["test"] == pytest.approx(ev["text+fusion"]["test"]["ndcg@10"],
                                                          abs=1e-4)  # fmt: skip
    assert rows["text model alone (no ranker)"]["test"] == pytest.approx(
        ev["text"]["test"]["ndcg@10"], abs=1e-4
    )


def test_service_answers_known_and_new_users(run: Path, tmp_path: Path) -> None:
    from tailorml.apps.recommend.server import create_app
    from tailorml.apps.recommend.service import Recommender

    rec = Recommender(run)
    with AppServer(create_app(rec, api_key="k3y")) as srv:
        h = {"Authorization": "Bearer k3y"}
        assert httpx.get(f"{srv.url}/v1/recommend?user_id=u1").status_code == 401
        r = httpx.get(f"{srv.url}/v1/recommend", params={"user_id": "u1", "k": 5}, headers=h)
        assert r.status_code == 200, r.text
        got = r.json()["items"]
        assert len(got) == 5
        assert set(got[0]) == {"item_id", "score", "title", "because"}
        seen = {rec.ids[i] for i in rec.user_history("u1")[0]}  # type: ignore[index]
        assert not seen & {g["item_id"] for g in got}
        assert all(b["item_id"] in seen for g in got for b in g["because"])
        assert [g["score"] for g in got] == sorted((g["score"] for g in got), reverse=True)
        r = httpx.get(f"{srv.url}/v1/recommend", params={"user_id": "nobody"}, headers=h)
        assert r.status_code == 404 and r.json()["error"]["type"] == "unknown_user"
        r = httpx.post(f"{srv.url}/v1/recommend", json={"history": ["i1", "i5"], "k": 3},
                       headers=h)  # fmt: skip
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        assert {"i1", "i5"}.isdisjoint(g["item_id"] for g in r.json()["items"])
        r = httpx.post(f"{srv.url}/v1/recommend", json={"history": ["i1", "zz"]}, headers=h)
        assert r.status_code == 422 and "'zz'" in r.json()["error"]["message"]
        r = httpx.post(f"{srv.url}/v1/recommend", json={"history": [], "k": 2}, headers=h)
        assert r.status_code == 200 and len(r.json()["items"]) == 2  # popular items
        for k in (0, 101):
            r = httpx.get(f"{srv.url}/v1/recommend", params={"user_id": "u1", "k": k}, headers=h)
            assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request"
        r = httpx.post(f"{srv.url}/v1/recommend", json={"history": ["i1"] * 2001}, headers=h)
        assert r.status_code == 422
        r = httpx.post(f"{srv.url}/v1/recommend", content=b"{", headers=h)
        assert r.status_code == 422
        assert "tailorml_requests_total" in httpx.get(f"{srv.url}/metrics", headers=h).text

        # New items, known only by their text, join the running service's catalogue.
        rows = [["n1", "Horror film number 900", "Horror"], ["n2", "Comedy film", "Comedy"]]
        new = write(tmp_path / "new.csv", ["item", "title", "genres"], rows)
        from typer.testing import CliRunner

        from tailorml.cli import app

        res = CliRunner().invoke(app, ["recommend", "add-items", str(run), str(new)])
        assert res.exit_code == 0, res.output
        r = httpx.post(f"{srv.url}/v1/recommend", json={"history": ["n1"], "k": 100}, headers=h)
        assert r.status_code == 200, r.text
        ids = [g["item_id"] for g in r.json()["items"]]
        assert "n2" in ids and "n1" not in ids
        dup = CliRunner().invoke(app, ["recommend", "add-items", str(run), str(new)])
        assert dup.exit_code == 2 and "already in the run" in dup.output


def test_serve_command_ends_on_sigterm(run: Path, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tailorml.cli", "recommend", "serve", str(run), "--port",
         str(port), "--threads", "1"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        r = httpx.get(f"http://127.0.0.1:{port}/v1/recommend", params={"user_id": "u2"})
        assert r.status_code == 200 and len(r.json()["items"]) == 10
        # As `tailor serve`: drains, then ends by the SIGTERM it was sent (no traceback).
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == -signal.SIGTERM
        assert "Traceback" not in (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def test_shipped_config_parses_and_its_data_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    cfg = load_recommend_config("configs/recommend-movielens.yaml", ["data.limit_users=5"])
    items = read_items(cfg.data)
    e = read_events(cfg.data, items)
    assert len(items) == 9742 and len(e.user_ids) == 5 and not e.bad


def test_user_tower_reads_padded_histories_the_same_in_training_and_scoring() -> None:
    # torch's inference fast path answers NaN for a fully masked attention row, and a NaN key
    # poisons every query of the next layer: a left-padded history must still score.
    import torch

    from tailorml.apps.recommend.config import ModelConfig
    from tailorml.apps.recommend.models import TwoTower

    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, heads=2, layers=2, max_history=6, dropout=0.0)
    net = TwoTower(torch.randn(20, 8), torch.ones(20, dtype=torch.bool), cfg)
    seq = torch.tensor([[20, 20, 20, 1, 2, 3], [4, 5, 6, 7, 8, 9]])
    net.eval()
    with torch.inference_mode():
        scored = net.users(seq)
    net.train()
    trained = net.users(seq).detach()
    assert not torch.isnan(scored).any()
    torch.testing.assert_close(scored[:, 3:], trained[:, 3:])


@pytest.mark.parametrize(("softmax", "limit", "full"), [("auto", 1000, True), ("auto", 50, False)])
def test_text_model_learns_the_sequences_with_either_softmax(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, softmax: str, limit: int, full: bool
) -> None:
    from tailorml.apps.recommend import models
    from tailorml.apps.recommend.config import ModelConfig

    monkeypatch.setattr(models, "FULL_SOFTMAX_MAX_ITEMS", limit)  # 60 items: above 50
    ev, it = make_data(tmp_path)
    items, e = load(data_cfg(ev, it))
    sp_ = split_leave_one_out(e, len(items))
    text = np.random.default_rng(0).normal(size=(len(items), 8)).astype(np.float32)
    cfg = ModelConfig(
        dim=16, layers=1, max_history=10, epochs=30, eval_every=10, negatives=16, lr=0.005,
        softmax=softmax,
    )  # fmt: skip
    m = models.TextRecommender(cfg).fit(
        sp_.train_sequences(), text, sp_.train_counts(), log=lambda s: None
    )
    assert m.full_softmax is full
    pop = evaluate(bl.Popularity().fit(sp_.train_matrix()), sp_, "test")["ndcg@10"]
    got = evaluate(m, sp_, "test")["ndcg@10"]
    assert got > pop + 0.2, (got, pop)


def test_full_softmax_loss_is_cross_entropy_over_every_item_at_every_position() -> None:
    import torch

    from tailorml.apps.recommend.config import ModelConfig
    from tailorml.apps.recommend.models import TextRecommender, TwoTower

    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, heads=2, layers=1, max_history=4, dropout=0.0, softmax="full")
    m = TextRecommender(cfg)
    m.net_ = net = TwoTower(torch.randn(12, 8), torch.ones(12, dtype=torch.bool), cfg)
    m.full_softmax = True
    net.train()
    got = m._loss([np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8])], None)
    # By hand: each history's states, the next item as target at every position, 12 classes.
    v = torch.nn.functional.normalize(net.item_vectors(), dim=-1)
    terms = []
    for seq in ([12, 12, 1, 2], [4, 5, 6, 7]):
        h = torch.nn.functional.normalize(net.users(torch.tensor([seq]))[0], dim=-1)
        nxt = seq[1:] + [3 if seq[-1] == 2 else 8]
        for pos in range(4):
            if seq[pos] < 12:
                logits = h[pos] @ v.T / cfg.temperature
                terms.append(-torch.log_softmax(logits, -1)[nxt[pos]])
    assert len(terms) == 6
    torch.testing.assert_close(got, torch.stack(terms).mean())


def test_order_features_read_the_followers_and_predecessors_of_the_latest_items() -> None:
    from tailorml.apps.recommend.ranker import FEATURES, ItemStats, features, order_matrices

    seqs = [np.array([0, 1, 2]), np.array([0, 2])]
    nxt, prv = order_matrices(seqs, 4, window=2)
    m = nxt.toarray()
    # Item 0 is followed by 1 (1 step), 2 (2 steps: counts 1/2) and 2 (1 step): 1 + 0.5 + 1.
    np.testing.assert_allclose(m[0], [0, 1 / 2.5, 1.5 / 2.5, 0], rtol=1e-6)
    np.testing.assert_allclose(m[1], [0, 0, 1, 0])
    assert not m[2].any() and not m[3].any()
    p = prv.toarray()  # item 2 is preceded by 1 (1 step), 0 (2 steps) and 0 (1 step)
    np.testing.assert_allclose(p[2], [1.5 / 2.5, 1 / 2.5, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(p[1], [1, 0, 0, 0])
    assert not p[0].any() and not p[3].any()
    stats = ItemStats.build(
        np.ones(4), np.zeros(4), [[]] * 4, np.zeros((4, 2)), None, nxt, prv, recent=2
    )
    cands = np.array([[2, 1, 0, 3], [1, 2, 0, 3]])
    hists = [np.array([3, 1, 0]), np.array([], dtype=np.int64)]
    x = features(stats, cands, np.zeros((2, 4)), hists, np.zeros(2))
    # User 0's latest item 0 weighs 1, the one before (1) 1/2, item 3 is past `recent`.
    nxt_want = [[0.6 + 0.5 * 1.0, 0.4, 0.0, 0.0], [0.0] * 4]
    prv_want = [[0.0, 0.0, 0.5 * 1.0, 0.0], [0.0] * 4]  # 0 precedes 1; nothing precedes 0
    col = FEATURES.index("next_after_recent")
    np.testing.assert_allclose(x[..., col], np.log(1e-4 + np.array(nxt_want)), rtol=1e-5)
    col = FEATURES.index("prev_of_recent")
    np.testing.assert_allclose(x[..., col], np.log(1e-4 + np.array(prv_want)), rtol=1e-5)
