"""The support assistant's knowledge base and retrieval: loading, every bad-input error, BM25 /
dense / hybrid on a few written articles, the sklearn contract, save/load, the scores.

Fast: the dense retriever runs on a hashed bag-of-words encoder (numpy, no weights); one test
marked slow runs the packaged MiniLM."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tailorml.apps.support.evaluate import retrieval_scores
from tailorml.apps.support.knowledge import (
    Document,
    Passage,
    load_documents,
    load_passages,
    split_passages,
)
from tailorml.apps.support.retrieval import (
    BM25Retriever,
    DenseRetriever,
    Hit,
    HybridRetriever,
    NotFittedError,
    load_retriever,
)
from tailorml.errors import ConfigError

from .conftest import REPO

ARTICLES = {
    "card_arrival.md": "# Where is my card?\n\nCards are posted within 5 to 10 working days. "
    "Follow the delivery status in the app; if the envelope never reaches you, order a "
    "replacement.",
    "pin_blocked.md": "# Your PIN is blocked\n\nThree wrong PIN attempts block it. Unblock the "
    "PIN at a cash machine under PIN services.",
    "exchange/fees.md": "# Currency exchange fees\n\nExchanging currencies is free up to your "
    "allowance; above it a small percentage fee applies, and a markup at weekends.",
    "close_account.txt": "Closing your account\n\nMove your balance out, then close the account "
    "from Profile. Cards stop working at once.",
}


def write_kb(root: Path, files: dict[str, str | bytes] | None = None) -> Path:
    for name, content in (ARTICLES if files is None else files).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


class HashEncoder:
    """A bag of hashed words as a unit vector: dense retrieval's mechanics without a model."""

    def __init__(self, dim: int = 256):
        self.dim = dim
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


# ------------------------------------------------------------------------------------ loading


def test_documents_get_ids_from_paths_and_titles_from_headings(tmp_path: Path) -> None:
    docs = load_documents(write_kb(tmp_path))
    by_id = {d.doc_id: d for d in docs}
    assert sorted(by_id) == ["card_arrival", "close_account", "exchange/fees", "pin_blocked"]
    assert by_id["card_arrival"].title == "Where is my card?"
    assert by_id["card_arrival"].text.startswith("Cards are posted")  # the title line is not text
    assert by_id["close_account"].title == "close_account"  # no `# ` heading: the file name
    assert by_id["close_account"].text.startswith("Closing your account")


def test_long_articles_split_into_passages_that_keep_id_and_title() -> None:
    paras = [f"## Part {i}\n\n" + " ".join(f"w{i}x{j}" for j in range(60)) for i in range(5)]
    doc = Document("guide", "A long guide", "\n\n".join(paras))
    short = Document("short", "Short", "Just one line.")
    passages = split_passages([doc, short], max_words=150)
    long = [p for p in passages if p.doc_id == "guide"]
    assert [p.passage_id for p in long] == [f"guide#{i}" for i in range(len(long))]
    assert len(long) == 3  # 5 blocks of 63 words: two per passage under 150
    assert all(p.title == "A long guide" and len(p.text.split()) <= 150 for p in long)
    assert long[0].text.startswith("## Part 0")  # a heading travels with its paragraph
    # nothing lost, nothing repeated
    assert " ".join(p.text for p in long).split() == doc.text.split()
    assert [p.text for p in passages if p.doc_id == "short"] == ["Just one line."]
    # one paragraph longer than the limit is cut at sentence ends
    run_on = Document("r", "R", " ".join(f"Sentence {i} has five words." for i in range(30)))
    cut = split_passages([run_on], max_words=40)
    assert len(cut) == 4 and all(len(p.text.split()) <= 40 for p in cut)
    assert all(p.text.endswith(".") for p in cut)
    assert len(split_passages([doc], max_words=None)) == 1


def test_missing_folder_file_and_empty_folder_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"knowledge.documents.*does not exist.*\.md or \.txt"):
        load_documents(tmp_path / "nope")
    (tmp_path / "a.md").write_text("# A\n\nx", encoding="utf-8")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        load_documents(tmp_path / "a.md")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"no \.md or \.txt articles\. It is empty"):
        load_documents(empty)
    write_kb(empty, {"manual.pdf": b"%PDF-1.4", "notes.docx": b"PK"})
    with pytest.raises(ConfigError, match=r"It holds only manual\.pdf, notes\.docx.*convert PDF"):
        load_documents(empty)


def test_binary_non_utf8_and_duplicate_files_are_all_named_at_once(tmp_path: Path) -> None:
    write_kb(tmp_path)
    write_kb(
        tmp_path,
        {
            "scan.md": b"%PDF-1.7\x00\x01\x02binary",
            "old/latin.txt": "Caf\xe9 hours".encode("latin-1"),
            "pin_blocked.txt": "also pin",  # same id as pin_blocked.md
        },
    )
    with pytest.raises(ConfigError) as err:
        load_documents(tmp_path)
    problems = err.value.problems
    assert len(problems) == 3, problems
    text = str(err.value)
    assert "scan.md is a binary file" in text and "Save it as plain text" in text
    assert "old/latin.txt is not UTF-8 text (byte 0xe9 at offset 3)" in text
    assert "iconv" in text
    assert "pin_blocked.md and pin_blocked.txt have the same id 'pin_blocked'" in text


def test_empty_articles_and_other_files_are_warnings_naming_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_kb(tmp_path, {**ARTICLES, "draft.md": "  \n", "logo.png": b"\x89PNG", ".DS_Store": b""})
    with caplog.at_level(logging.WARNING, logger="tailorml.support"):
        docs = load_documents(tmp_path)
    assert "draft" not in {d.doc_id for d in docs} and len(docs) == 4
    assert "draft.md is empty; skipped. Write it or remove it" in caplog.text
    assert "skipped 1 file(s) that are not .md or .txt: logo.png" in caplog.text
    assert ".DS_Store" not in caplog.text
    only_empty = tmp_path / "only"
    write_kb(only_empty, {"a.md": "", "b.txt": "\n"})
    with pytest.raises(ConfigError, match="every article is empty"):
        load_documents(only_empty)


# ---------------------------------------------------------------------------------- retrieval


def test_bm25_finds_the_article_for_clearly_worded_questions(tmp_path: Path) -> None:
    r = BM25Retriever().fit(load_passages(write_kb(tmp_path)))
    assert r.search("my PIN is blocked after wrong attempts", k=1)[0].doc_id == "pin_blocked"
    assert r.search("fees for currency exchange at weekends", k=2)[0].doc_id == "exchange/fees"
    hit = r.search("how do I close my account", k=3)[0]
    assert isinstance(hit, Hit) and hit.doc_id == "close_account"
    assert hit.passage_id == "close_account#0" and hit.title == "close_account"
    # only documents sharing a word score; a query of stopwords and unseen words finds nothing
    assert r.search("the and of zebra", k=3) == []
    batch = r.search_many(["card delivery envelope", "unblock the PIN"], k=2)
    assert [hits[0].doc_id for hits in batch] == ["card_arrival", "pin_blocked"]


def test_results_are_per_document_best_passage_first() -> None:
    docs = [
        Document("fees", "Fees", "\n\n".join(["atm fee fee fee " * 10, "card fee " * 10])),
        Document("atm", "ATM", "atm machine cash"),
    ]
    passages = split_passages(docs, max_words=40)
    assert sum(p.doc_id == "fees" for p in passages) == 2
    for r in (BM25Retriever(), DenseRetriever(encoder=HashEncoder())):
        hits = r.fit(passages).search("atm fee", k=5)
        assert [h.doc_id for h in hits] == ["fees", "atm"]  # "fees" once, by its best passage
        assert hits[0].passage_id == "fees#0"
        assert hits[0].score >= hits[1].score


def test_dense_and_hybrid_on_a_stand_in_encoder(tmp_path: Path) -> None:
    passages = load_passages(write_kb(tmp_path))
    enc = HashEncoder()
    dense = DenseRetriever(encoder=enc).fit(passages)
    hits = dense.search("PIN blocked unblock", k=4)
    assert hits[0].doc_id == "pin_blocked" and len(hits) == 4  # dense ranks every document
    assert 0.0 < hits[0].score <= 1.0 + 1e-6  # cosine
    calls = enc.calls
    dense.search_many(["a", "b", "c"], k=2)
    assert enc.calls == calls + 1  # the queries are encoded in one batch
    hybrid = HybridRetriever(dense=DenseRetriever(encoder=HashEncoder()), rrf_k=60).fit(passages)
    top = hybrid.search("exchange fee allowance", k=4)
    assert top[0].doc_id == "exchange/fees"
    # ranked first by both: 2 / (60 + 1)
    assert top[0].score == pytest.approx(2 / 61)
    assert [h.doc_id for h in hybrid.search("my card is not here, where is the envelope", 1)] == [
        "card_arrival"
    ]


def test_rrf_fuses_ranks_not_scores() -> None:
    """Hand-built lists: BM25 ranks a > b > c, dense ranks c > b > a; with rrf_k = 0 the fused
    scores are a: 1 + 1/3, b: 1/2 + 1/2, c: 1/3 + 1: a and c tie above b."""
    passages = [Passage(d, f"{d}#0", d, t) for d, t in (("a", "x"), ("b", "y"), ("c", "z"))]

    class Fixed:
        def __init__(self, order: list[int]):
            self.order = order

        def fit(self, passages: list[Passage]) -> Fixed:
            self.passages_ = passages
            return self

        def rank_many(self, queries):  # type: ignore[no-untyped-def]
            return lambda which, n: [[(i, 1.0) for i in self.order][:n] for _ in which]

    h = HybridRetriever(Fixed([0, 1, 2]), Fixed([2, 1, 0]), rrf_k=0)  # type: ignore[arg-type]
    hits = h.fit(passages).search("q", k=3)
    assert [round(x.score, 4) for x in hits] == [round(1 + 1 / 3, 4)] * 2 + [1.0]
    assert {hits[0].doc_id, hits[1].doc_id} == {"a", "c"} and hits[2].doc_id == "b"


def test_search_before_fit_and_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    for r in (BM25Retriever(), DenseRetriever(encoder=HashEncoder()), HybridRetriever()):
        with pytest.raises(NotFittedError, match=r"not fitted yet: call \.fit\(passages\)"):
            r.search("anything")
        with pytest.raises(NotFittedError):
            r.save(tmp_path / "idx")
    r = BM25Retriever(k1=1.2)
    assert r.fit(load_passages(write_kb(tmp_path))) is r  # fit returns self
    assert r.k1 == 1.2 and not hasattr(BM25Retriever(), "passages_")
    with pytest.raises(ConfigError, match="k >= 1"):
        r.search("pin", k=0)
    with pytest.raises(ConfigError, match="No passages"):
        BM25Retriever().fit([])


def test_save_and_load_give_the_same_results_without_pickle(tmp_path: Path) -> None:
    passages = load_passages(write_kb(tmp_path / "kb"))
    queries = ["PIN blocked", "exchange fee weekend", "where is my card", "close account"]
    for r in (
        BM25Retriever(k1=1.2, b=0.5),
        DenseRetriever(encoder=HashEncoder()),
        HybridRetriever(dense=DenseRetriever(encoder=HashEncoder()), rrf_k=10),
    ):
        folder = tmp_path / f"idx-{type(r).__name__}"
        r.fit(passages).save(folder)
        r.save(folder)  # saving over an existing index replaces it
        files = sorted(p.name for p in folder.iterdir())
        assert files in (
            ["passages.json", "retriever.json"],
            ["dense.faiss", "passages.json", "retriever.json"],
        )
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
        for p in folder.iterdir():
            assert not p.read_bytes().startswith(b"\x80")  # a pickle stream starts with PROTO
        back = load_retriever(folder, encoder=HashEncoder())
        assert type(back) is type(r)
        assert back.search_many(queries, k=3) == r.search_many(queries, k=3)
    with pytest.raises(ConfigError, match="custom encoder object. Pass it again"):
        load_retriever(tmp_path / "idx-DenseRetriever")
    with pytest.raises(ConfigError, match="not a saved retriever"):
        load_retriever(tmp_path / "kb")


# Questions in two wordings: the query encoder trains on the first, is judged on the second.
TOPICS = {
    "card_arrival": (["card", "post", "envelope", "delivery"], ["still waiting", "not arrived"]),
    "pin_blocked": (["pin", "code", "attempts", "unblock"], ["locked out", "blocked"]),
    "exchange/fees": (["exchange", "currency", "rate", "markup"], ["fee", "charged"]),
    "close_account": (["close", "account", "leave", "profile"], ["want to", "how do i"]),
}


def _questions(which: int) -> tuple[list[str], list[str]]:
    """(questions, their articles): every keyword of a topic with each of its phrases, in the
    training wording (0) or another one (1)."""
    texts, docs = [], []
    for doc, (words, phrases) in TOPICS.items():
        for w in words:
            for p in phrases:
                texts.append(f"{p} my {w} please" if which == 0 else f"hello, {w} - {p}?")
                docs.append(doc)
    return texts, docs


def test_tuned_query_encoder_finds_the_articles_and_is_saved_with_the_index(
    tmp_path: Path,
) -> None:
    import json

    from tailorml.apps.support.query_tuning import tune_query_encoder

    passages = load_passages(write_kb(tmp_path / "kb"))
    train_q, train_d = _questions(0)
    test_q, test_d = _questions(1)
    before = retrieval_scores(DenseRetriever(base="tiny").fit(passages), test_q, test_d)
    info = tune_query_encoder(
        "tiny", passages, [*train_q, "not about anything"], [*train_d, None],
        tmp_path / "qenc", epochs=25, lr=2e-3, batch_size=8, threads=1,
    )  # fmt: skip
    assert info["questions"] == len(train_q) and info["skipped"] == 1
    assert info["loss_last"] < 0.5 * info["loss_first"], info
    tuned = DenseRetriever(base="tiny", query_base=str(tmp_path / "qenc")).fit(passages)
    after = retrieval_scores(tuned, test_q, test_d)
    # A random tiny encoder ranks by chance; tuned on one wording, it finds the other's articles.
    assert after["recall@1"] >= 0.9 and after["recall@1"] >= before["recall@1"] + 0.3, (
        before, after
    )  # fmt: skip
    # Only the queries changed: the passages' vectors are the untuned encoder's.
    plain = DenseRetriever(base="tiny").fit(passages)
    assert np.array_equal(plain.index_.reconstruct_n(0, 4), tuned.index_.reconstruct_n(0, 4))
    # Saved with the index (safetensors, no pickle); the loaded index searches the same way,
    # also after the tuned folder it was trained into is gone.
    for r in (tuned, HybridRetriever(dense=tuned).fit(passages)):
        folder = tmp_path / f"idx-{r.kind}"
        r.save(folder)
        manifest = json.loads((folder / "retriever.json").read_text())
        dense = manifest.get("dense", manifest)
        assert dense["query_encoder"] == "query-encoder"
        assert (folder / "query-encoder" / "model.safetensors").is_file()
        assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    # query_mix: 0 searches as the untuned encoder does; a mix is saved with the index.
    qenc = str(tmp_path / "qenc")
    none = DenseRetriever(base="tiny", query_base=qenc, query_mix=0.0).fit(passages)
    assert none.search_many(test_q, k=4) == plain.search_many(test_q, k=4)
    half = DenseRetriever(base="tiny", query_base=qenc, query_mix=0.5).fit(passages)
    scores = [h.score for h in half.search("hello, pin - blocked?", k=4)]
    t, p = (r.search("hello, pin - blocked?", k=4) for r in (tuned, plain))
    assert scores != [h.score for h in t] and scores != [h.score for h in p]
    half.save(tmp_path / "idx-half")
    expected = tuned.search_many(test_q, k=3)
    shutil.rmtree(tmp_path / "qenc")
    back = load_retriever(tmp_path / "idx-dense")
    assert back.search_many(test_q, k=3) == expected
    half_back = load_retriever(tmp_path / "idx-half")
    assert half_back.query_mix == 0.5
    assert [h.score for h in half_back.search("hello, pin - blocked?", k=4)] == pytest.approx(
        scores
    )
    with pytest.raises(ConfigError, match="query_mix = 1.5"):
        DenseRetriever(base="tiny", query_mix=1.5).fit(passages)
    with pytest.raises(ConfigError, match="no training question maps to an article"):
        tune_query_encoder("tiny", passages, ["x"], ["nowhere"], tmp_path / "q2", threads=1)


def test_retrieval_scores_on_a_hand_computed_case() -> None:
    class Canned:
        """Query i answers the documents listed for it."""

        answers = {"q1": ["a", "b"], "q2": ["b", "c", "d", "a"], "q3": ["x"] * 5 + ["a"]}

        def search_many(self, queries: list[str], k: int) -> list[list[Hit]]:
            return [[Hit(d, d, 1.0, d, "") for d in self.answers[q][:k]] for q in queries]

    # gold a: rank 1, rank 4, rank 6 -> recall@1 1/3, recall@5 2/3, MRR (1 + 1/4 + 1/6) / 3
    s = retrieval_scores(Canned(), ["q1", "q2", "q3"], ["a", "a", "a"], k=10)
    assert s == {
        "recall@1": pytest.approx(1 / 3),
        "recall@5": pytest.approx(2 / 3),
        "mrr@10": pytest.approx((1 + 0.25 + 1 / 6) / 3),
        "queries": 3,
    }
    assert retrieval_scores(Canned(), ["q3"], ["a"], k=5)["mrr@5"] == 0.0  # rank 6 > k
    with pytest.raises(ConfigError, match="one per query"):
        retrieval_scores(Canned(), ["q1"], ["a", "b"])


def test_the_demo_articles_cover_every_banking77_intent() -> None:
    import json

    intents = json.loads((REPO / "data/banking77/categories.json").read_text(encoding="utf-8"))
    docs = load_documents(REPO / "data/banking77_help/articles")
    assert {d.doc_id for d in docs} == {i.rstrip("?") for i in intents}
    assert all(80 <= len(d.text.split()) <= 200 for d in docs)


def test_sentence_encoder_pools_over_real_tokens_only() -> None:
    """Mean pooling masks the padding: a text's vector is the same alone and batched with a
    longer one (the random `tiny` encoder; MiniLM is the same code)."""
    from tailorml.models.sentence import SentenceEncoder

    enc = SentenceEncoder("tiny", batch_size=8)
    short, long = "pin blocked", "my card has not arrived after two weeks of waiting at home"
    alone = enc.encode([short])
    both = enc.encode([long, short])
    assert both.shape == (2, 32) and both.dtype == np.float32
    assert np.allclose(both[1], alone[0], atol=1e-5)
    assert np.allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(both[0], both[1])


@pytest.mark.slow
def test_packaged_minilm_dense_and_hybrid_find_the_right_articles(tmp_path: Path) -> None:
    from tailorml.models.sentence import SentenceEncoder

    enc = SentenceEncoder("minilm", threads=2)
    v = enc.encode(["The card has not arrived.", "My parcel with the card is late", "PIN"])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]  # paraphrases are closer than unrelated text
    passages = load_passages(write_kb(tmp_path / "kb"))
    dense = DenseRetriever(encoder=enc).fit(passages)
    # no word in common with the article: BM25 cannot find it, the encoder can
    assert dense.search("my plastic has not been delivered yet", k=1)[0].doc_id == "card_arrival"
    hybrid = HybridRetriever(dense=DenseRetriever(encoder=enc)).fit(passages)
    assert hybrid.search("cash machine PIN services", k=1)[0].doc_id == "pin_blocked"
    hybrid.save(tmp_path / "idx")
    back = load_retriever(tmp_path / "idx")  # rebuilds MiniLM from the saved spec
    assert back.search_many(["exchange fee"], 2) == hybrid.search_many(["exchange fee"], 2)
