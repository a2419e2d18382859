"""Check the help-centre articles in articles/: one per Banking77 intent, a `# ` title,
80-200 words of body, and no run of 6 words shared with any Banking77 question (train or
test), so that retrieval figures are not inflated by customer questions pasted into them.

    python data/banking77_help/check.py      # exit 1 and a list of problems if any
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARTICLES = HERE / "articles"
BANKING77 = HERE.parent / "banking77"
NGRAM = 6


def file_stem(intent: str) -> str:
    """The article's file name for an intent: the intent itself, less characters that some file
    systems refuse (Banking77 has one intent ending in `?`: reverted_card_payment?)."""
    return re.sub(r'[<>:"/\\|?*]', "", intent)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def ngrams(ws: list[str]) -> set[tuple[str, ...]]:
    return {tuple(ws[i : i + NGRAM]) for i in range(len(ws) - NGRAM + 1)}


def main() -> int:
    intents = json.loads((BANKING77 / "categories.json").read_text(encoding="utf-8"))
    problems = []
    questions: set[tuple[str, ...]] = set()
    for split in ("train", "test"):
        with open(BANKING77 / f"{split}.csv", encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                questions |= ngrams(words(row["text"]))
    stems = {file_stem(i) for i in intents}
    found = {p.stem for p in ARTICLES.glob("*.md")}
    problems += [f"no article for intent {s!r}" for s in sorted(stems - found)]
    problems += [f"{s}.md is not a Banking77 intent" for s in sorted(found - stems)]
    for stem in sorted(stems & found):
        text = (ARTICLES / f"{stem}.md").read_text(encoding="utf-8")
        title, _, body = text.partition("\n")
        if not title.startswith("# "):
            problems.append(f"{stem}.md: the first line is not a `# ` title")
        n = len(re.findall(r"\S+", body))
        if not 80 <= n <= 200:
            problems.append(f"{stem}.md: {n} words of body, outside 80-200")
        shared = ngrams(words(text)) & questions
        problems += [f"{stem}.md shares {' '.join(g)!r} with a question" for g in sorted(shared)]
    for p in problems:
        print(p)
    print(f"{len(found)} articles, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
