"""Build the authorship set (`data/gutenberg_authors/`): which of six authors wrote a passage of
32 words. A text-classification set that no default of tailorml was designed or tuned with, for
judging the chosen defaults on data nobody looked at first (issue 15).

Source: the NLTK selection of Project Gutenberg texts (public domain), as kept in the project's
shared data folder. Six authors with at least ~68,000 words each: Austen (Emma, Persuasion, Sense
and Sensibility), Chesterton (The Ball and the Cross, The Wisdom of Father Brown, The Man Who Was
Thursday), Melville (Moby Dick), Milton (Paradise Lost), Shakespeare (Julius Caesar, Hamlet,
Macbeth), Whitman (Leaves of Grass). Blake's poems (6,845 words) are too few and are left out.

How: each book without its first line (the bracketed title, which names the author) and without
heading lines (CHAPTER/VOLUME/BOOK/ACT/FINIS lines, lines in capitals) and without the Project
Gutenberg licence that ends one of them, as one stream of words cut into
consecutive passages of 32 words. The first 80% of each book's passages may go to train, the last
20% to test (one passage skipped between them), so a test passage never shares a sentence with a
training one. Then per author, seeded: 1,200 train and 300 test passages, drawn evenly over the
author's books. Deterministic: the same source gives the same files.

    python benchmarks/make_authors.py --source ../shared/data/gutenberg_nltk \\
        --out data/gutenberg_authors
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from pathlib import Path

import numpy as np

from tailorml.files import atomic_write_text

AUTHORS = {
    "austen": ["austen-emma.txt", "austen-persuasion.txt", "austen-sense.txt"],
    "chesterton": ["chesterton-ball.txt", "chesterton-brown.txt", "chesterton-thursday.txt"],
    "melville": ["melville-moby_dick.txt"],
    "milton": ["milton-paradise.txt"],
    "shakespeare": ["shakespeare-caesar.txt", "shakespeare-hamlet.txt", "shakespeare-macbeth.txt"],
    "whitman": ["whitman-leaves.txt"],
}
WORDS = 32
TRAIN_PER_AUTHOR, TEST_PER_AUTHOR = 1200, 300
TEST_SHARE = 0.2
HEADING = re.compile(
    r"^\s*(CHAPTER|VOLUME|BOOK|ACT|SCENE|ACTUS|SCENA|SCOENA|FINIS|THE END|\[THE END\])\b",
    re.IGNORECASE,
)
TRAILER = re.compile(r"^\s*End of (the )?Project Gutenberg", re.IGNORECASE)  # licence text follows


def passages(path: Path) -> list[str]:
    """The book as consecutive 32-word passages, without its title line and headings."""
    lines = path.read_bytes().decode("latin-1").replace("\r\n", "\n").split("\n")[1:]
    kept = []
    for line in lines:
        s = line.strip()
        if TRAILER.match(s):
            break
        letters = [c for c in s if c.isalpha()]
        if HEADING.match(s) or (letters and all(c.isupper() for c in letters)):
            continue
        kept.append(s)
    words = " ".join(kept).split()
    return [" ".join(words[i : i + WORDS]) for i in range(0, len(words) - WORDS + 1, WORDS)]


def draw(pools: list[list[str]], n: int, rng: np.random.Generator) -> list[str]:
    """n passages drawn evenly over the books (a book with too few gives all it has)."""
    out: list[str] = []
    left = list(pools)
    while left and len(out) < n:
        share = -(-(n - len(out)) // len(left))
        small = [p for p in left if len(p) <= share]
        if not small:
            for p in left:
                idx = rng.choice(len(p), size=min(share, n - len(out)), replace=False)
                out += [p[i] for i in sorted(idx)]
            break
        for p in small:
            out += p
            left.remove(p)
    return out[:n]


def build(source: Path, out: Path, seed: int = 0) -> dict[str, dict[str, int]]:
    rng = np.random.default_rng(seed)
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    counts: dict[str, dict[str, int]] = {}
    for author, books in AUTHORS.items():
        train_pools, test_pools = [], []
        for book in books:
            ps = passages(source / book)
            cut = int(len(ps) * (1 - TEST_SHARE))
            train_pools.append(ps[:cut])
            test_pools.append(ps[cut + 1 :])
        train = draw(train_pools, TRAIN_PER_AUTHOR, rng)
        test = draw(test_pools, TEST_PER_AUTHOR, rng)
        rows["train"] += [(t, author) for t in train]
        rows["test"] += [(t, author) for t in test]
        counts[author] = {"train": len(train), "test": len(test)}
    out.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        order = rng.permutation(len(items))
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["text", "author"])
        w.writerows(items[i] for i in order)
        atomic_write_text(out / f"{split}.csv", buf.getvalue())
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--source", type=Path, required=True, help="the NLTK gutenberg folder")
    ap.add_argument("--out", type=Path, default=Path("data/gutenberg_authors"))
    args = ap.parse_args()
    missing = [b for books in AUTHORS.values() for b in books if not (args.source / b).is_file()]
    if missing:
        raise SystemExit(f"--source {args.source} lacks {', '.join(missing)}")
    for author, n in build(args.source, args.out).items():
        print(f"{author:<12} train {n['train']:>5}  test {n['test']:>5}")


if __name__ == "__main__":
    main()
