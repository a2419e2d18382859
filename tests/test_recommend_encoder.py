"""The recommender's trained item encoder (`model.item_encoder: lora | finetune`) and its cold
path (id vectors only for items with enough events, id dropout, rare items scored by text), on the
tiny encoder and generated data: seconds each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tailorml.apps.recommend.config import ModelConfig
from tailorml.apps.recommend.data import load
from tailorml.apps.recommend.evaluate import evaluate, split_leave_one_out
from tailorml.apps.recommend.models import TextRecommender, encode_texts

from .test_recommend import data_cfg, make_data

TEXTS = [f"{g} film number {i}. {g}" for i, g in enumerate(["Action", "Comedy", "Drama"] * 7)]


@pytest.mark.parametrize("mode", ["lora", "finetune"])
def test_untrained_encoder_gives_the_frozen_vectors(mode: str) -> None:
    # The lower layers' cached token states + the top layers = the whole encoder's output.
    from tailorml.apps.recommend.encoder import ItemTextEncoder

    torch.set_num_threads(1)
    frozen = encode_texts(TEXTS, "tiny")
    enc = ItemTextEncoder("tiny", TEXTS, mode, layers=1)
    np.testing.assert_allclose(enc.encode_all().numpy(), frozen, atol=1e-5)
    idx = torch.tensor([5, 0, 17])
    np.testing.assert_allclose(enc(idx).detach().numpy(), frozen[[5, 0, 17]], atol=1e-5)
    names = {n for n, p in enc.model.named_parameters() if p.requires_grad}
    assert names and all("layer.1." in n for n in names)  # only the top layer trains
    assert all(("lora_" in n) == (mode == "lora") for n in names)


def fitted(tmp: Path, **model: object) -> tuple[TextRecommender, object, list[str]]:
    torch.set_num_threads(1)
    ev, it = make_data(tmp, users=24)
    items, events = load(data_cfg(ev, it))
    split = split_leave_one_out(events, len(items))
    text = encode_texts(items.texts, "tiny")
    cfg = ModelConfig(
        encoder="tiny", dim=16, layers=1, max_history=8, epochs=2, eval_every=1,
        negatives=8, batch_size=8, lr=0.01, encoder_lr=0.01, **model,  # type: ignore[arg-type]
    )  # fmt: skip
    m = TextRecommender(cfg, seed=0).fit(
        split.train_sequences(), text, split.train_counts(), log=lambda _: None,
        texts=items.texts,
    )  # fmt: skip
    return m, split, items.texts


@pytest.mark.parametrize("mode", ["lora", "finetune"])
def test_encoder_phase_trains_the_encoder_and_saves_what_it_trained(
    mode: str, tmp_path: Path
) -> None:
    from tailorml.models.sentence import SentenceEncoder

    m, split, texts = fitted(tmp_path, item_encoder=mode, encoder_epochs=2)
    assert m.encoder_ is not None
    frozen = encode_texts(texts, "tiny")
    # The two-tower loss moved the encoder: the model's item texts are no longer the frozen ones.
    assert np.abs(m.text_ - frozen).max() > 1e-3
    m.encoder_.save(tmp_path / "encoder")
    again = SentenceEncoder(str(tmp_path / "encoder"), max_length=64).encode(texts)
    np.testing.assert_allclose(again, m.text_, atol=1e-4)  # what add-items will embed with
    assert evaluate(m, split, "test")["ndcg@10"] >= 0  # it scores


def test_encoder_phase_is_deterministic_and_keeps_the_best_on_valid(tmp_path: Path) -> None:
    def run(sub: str) -> tuple[list[dict[str, object]], np.ndarray]:
        (tmp_path / sub).mkdir()
        torch.set_num_threads(1)
        ev, it = make_data(tmp_path / sub, users=24)
        items, events = load(data_cfg(ev, it))
        split = split_leave_one_out(events, len(items))
        cfg = ModelConfig(
            encoder="tiny", dim=16, layers=1, max_history=8, epochs=2, eval_every=1,
            negatives=8, batch_size=8, item_encoder="lora", encoder_epochs=2,
        )  # fmt: skip
        m = TextRecommender(cfg, seed=0).fit(
            split.train_sequences(), encode_texts(items.texts, "tiny"), split.train_counts(),
            validate=lambda r: float(evaluate(r, split, "valid")["ndcg@10"]),
            log=lambda _: None, texts=items.texts,
        )  # fmt: skip
        best = max(float(h["valid_ndcg"]) for h in m.history_)
        assert float(evaluate(m, split, "valid")["ndcg@10"]) == pytest.approx(best)
        return m.history_, m.text_

    h1, t1 = run("a")
    h2, t2 = run("b")
    assert [h["epoch"] for h in h1] == [1, 2, "encoder 1", "encoder 2"]
    assert h1 == h2
    np.testing.assert_array_equal(t1, t2)


def test_items_below_id_min_count_get_no_id_vector(tmp_path: Path) -> None:
    m, split, _ = fitted(tmp_path, id_min_count=6, id_dropout=0.3)
    counts = split.train_counts()
    net = m._net()
    np.testing.assert_array_equal(net.has_id.numpy() > 0, counts >= 6)
    assert 0 < int((counts >= 6).sum()) < len(counts)
    net.eval()
    with torch.no_grad():  # an item without an id vector is its text path alone
        i = int(np.flatnonzero(counts < 6)[0])
        z = net.proj(net.text[[i]])
        torch.testing.assert_close(net.item_vectors(torch.tensor([i])), z + net.adapter(z))
        net.train()  # id dropout acts in training only
        torch.manual_seed(0)
        dropped = net.item_vectors(torch.arange(len(counts)))
        net.eval()
        assert not torch.allclose(dropped, net.item_vectors(torch.arange(len(counts))))


def test_text_only_max_count_scores_rare_items_by_their_text(tmp_path: Path) -> None:
    m, split, _ = fitted(tmp_path, text_only_max_count=4)
    counts = split.train_counts()
    net = m._net()
    rare = counts <= 4
    assert rare.any() and (~rare).any()
    np.testing.assert_array_equal(net.has_id.numpy() > 0, ~rare & (counts >= 1))
    # The served vectors of rare items are their text path's; the others keep their id vector.
    net.eval()
    with torch.no_grad():
        z = net.proj(net.text)
        text_only = torch.nn.functional.normalize(z + net.adapter(z), dim=-1).numpy()
    assert m.item_vectors_ is not None
    np.testing.assert_allclose(m.item_vectors_[rare], text_only[rare], atol=1e-6)
    assert np.abs(m.item_vectors_[~rare] - text_only[~rare]).max() > 1e-3


@pytest.mark.parametrize("encoder_wins", [True, False])
def test_the_encoder_is_kept_only_when_it_beats_the_frozen_model(
    encoder_wins: bool, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    ev, it = make_data(tmp_path, users=24)
    items, events = load(data_cfg(ev, it))
    split = split_leave_one_out(events, len(items))
    cfg = ModelConfig(
        encoder="tiny", dim=16, layers=1, max_history=8, epochs=2, eval_every=1,
        negatives=8, batch_size=8, item_encoder="lora", encoder_epochs=2,
    )  # fmt: skip
    scores = iter([0.1, 0.2, 0.3, 0.4] if encoder_wins else [0.1, 0.2, 0.15, 0.05])
    logged: list[str] = []
    m = TextRecommender(cfg, seed=0).fit(
        split.train_sequences(), encode_texts(items.texts, "tiny"), split.train_counts(),
        validate=lambda r: next(scores), log=logged.append, texts=items.texts,
    )  # fmt: skip
    frozen_kept = any("frozen kept" in line for line in logged)
    assert (m.encoder_ is not None) == encoder_wins and frozen_kept != encoder_wins
    if not encoder_wins:  # the frozen phase's best is back: the packaged encoder's vectors
        np.testing.assert_allclose(m.text_, encode_texts(items.texts, "tiny"), atol=1e-5)


def test_run_with_a_lora_encoder_adds_items_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tailorml.apps.recommend.config import RecommendConfig
    from tailorml.apps.recommend.service import Recommender, add_items
    from tailorml.apps.recommend.train import train_recommend
    from tailorml.models.sentence import SentenceEncoder

    torch.set_num_threads(1)
    # Validation improves at every call, so the encoder phase wins and RUN/encoder is written
    # (on this tiny data the frozen model can win, and then the packaged encoder is used).
    fit = TextRecommender.fit

    def improving_fit(self: TextRecommender, *a: object, **kw: object) -> TextRecommender:
        calls = iter(range(1, 1000))
        return fit(self, *a, **{**kw, "validate": lambda m: float(next(calls))})  # type: ignore[arg-type]

    monkeypatch.setattr(TextRecommender, "fit", improving_fit)
    ev, it = make_data(tmp_path, users=24)
    cfg = RecommendConfig(
        output_dir=tmp_path / "run",
        data=data_cfg(ev, it),
        baselines={"ease_lambdas": [10.0], "knn_neighbours": [], "als_regs": []},
        model={"encoder": "tiny", "dim": 16, "layers": 1, "max_history": 8, "epochs": 2,
               "eval_every": 1, "negatives": 8, "item_encoder": "lora", "encoder_epochs": 1,
               "text_only_max_count": 1},
        ranker={"candidates": 20},
    )  # type: ignore[arg-type]  # fmt: skip
    res = train_recommend(cfg, log=lambda _: None)
    run = tmp_path / "run"
    assert res["text_model"]["item_encoder"] == "lora"
    assert (run / "encoder" / "config.json").is_file()
    new = tmp_path / "new.csv"
    new.write_text("item,title,genres\nn1,Horror film number 99,Horror\n")
    assert add_items(run, new) == 1
    text = np.load(run / "item_text.npy")
    want = SentenceEncoder(str(run / "encoder"), max_length=64).encode(
        ["Horror film number 99. Horror"]
    )
    np.testing.assert_allclose(text[-1:], want, atol=1e-5)  # the trained encoder's vector
    rec = Recommender(run)
    assert rec.ids[-1] == "n1" and len(rec.recommend(np.array([0, 4, 8]), None, 5)) == 5
