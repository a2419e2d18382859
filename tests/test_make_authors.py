"""The authorship set's builder (benchmarks/make_authors.py) on small made-up books: no title line,
heading or licence text reaches a passage, train and test come from separate parts of each book,
and the same source gives the same files. The shipped files are checked for their shape."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _builder():
    path = REPO / "benchmarks/make_authors.py"
    spec = importlib.util.spec_from_file_location("make_authors", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_authors"] = mod
    spec.loader.exec_module(mod)
    return mod


def _book(author: str, title: str, n_words: int) -> str:
    lines = [f"[{title} by {author.title()} 1800]", "", "CHAPTER I", ""]
    words = [f"{author}{i}" for i in range(n_words)]
    for i in range(0, n_words, 10):
        lines.append(" ".join(words[i : i + 10]))
        if i % 500 == 0:
            lines += ["", "VOLUME II", "A HEADING IN CAPITALS", ""]
    lines += ["FINIS.", "End of Project Gutenberg's book", "licence licence licence " * 20]
    return "\n".join(lines)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_passages_split_by_position_without_titles_or_licence(tmp_path: Path, monkeypatch) -> None:
    mod = _builder()
    src = tmp_path / "src"
    src.mkdir()
    monkeypatch.setattr(mod, "AUTHORS", {"ann": ["a1.txt", "a2.txt"], "bob": ["b.txt"]})
    monkeypatch.setattr(mod, "TRAIN_PER_AUTHOR", 40)
    monkeypatch.setattr(mod, "TEST_PER_AUTHOR", 10)
    (src / "a1.txt").write_text(_book("ann", "First", 32 * 40))
    (src / "a2.txt").write_text(_book("ann", "Second", 32 * 40))
    (src / "b.txt").write_text(_book("bob", "Only", 32 * 80))

    counts = mod.build(src, tmp_path / "out")
    assert counts == {"ann": {"train": 40, "test": 10}, "bob": {"train": 40, "test": 10}}
    train, test = _rows(tmp_path / "out/train.csv"), _rows(tmp_path / "out/test.csv")
    for r in train + test:
        words = r["text"].split()
        assert len(words) == 32
        assert all(w.startswith(r["author"]) for w in words), r  # no title, heading or licence
    # test passages come after every training passage of the same book (word numbers grow)
    last_train = max(int(w[3:]) for r in train if r["author"] == "bob" for w in r["text"].split())
    first_test = min(int(w[3:]) for r in test if r["author"] == "bob" for w in r["text"].split())
    assert first_test > last_train + 32  # one passage skipped between the parts
    assert not {r["text"] for r in train} & {r["text"] for r in test}

    again = tmp_path / "again"
    mod.build(src, again)
    for name in ("train.csv", "test.csv"):
        assert (again / name).read_bytes() == (tmp_path / "out" / name).read_bytes()


def test_the_shipped_set_has_its_documented_shape() -> None:
    folder = REPO / "data/gutenberg_authors"
    train, test = _rows(folder / "train.csv"), _rows(folder / "test.csv")
    assert (len(train), len(test)) == (7200, 1800)
    authors = {"austen", "chesterton", "melville", "milton", "shakespeare", "whitman"}
    for rows, n in ((train, 1200), (test, 300)):
        counts = {a: sum(r["author"] == a for r in rows) for a in authors}
        assert counts == dict.fromkeys(authors, n)
    assert not {r["text"] for r in train} & {r["text"] for r in test}
    assert all("gutenberg" not in r["text"].lower() for r in train + test)
