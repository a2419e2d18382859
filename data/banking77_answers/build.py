"""Build the SFT pairs of this demo: each Banking77 question -> the answer written for its intent.

    python data/banking77_answers/build.py        # rewrites train.jsonl and test.jsonl here

A seeded sample per intent keeps the files small (CPU fine-tuning in minutes): 26 questions per
intent from Banking77's train.csv and 3 per intent from its test.csv. Rows keep the intent, so
a reader can check which answer each question was given.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "banking77"
PER_INTENT = {"train": 26, "test": 3}
SEED = 0


def build(split: str, answers: dict[str, str]) -> list[dict[str, str]]:
    with (SOURCE / f"{split}.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by_intent: dict[str, list[str]] = {}
    for r in rows:
        by_intent.setdefault(r["category"], []).append(r["text"].strip())
    rng = random.Random(SEED)
    out = []
    for intent in sorted(by_intent):
        questions = sorted(set(by_intent[intent]))
        rng.shuffle(questions)
        for q in questions[: PER_INTENT[split]]:
            out.append({"prompt": q, "response": answers[intent], "intent": intent})
    rng.shuffle(out)
    return out


def main() -> None:
    answers = json.loads((HERE / "answers.json").read_text(encoding="utf-8"))
    for split in ("train", "test"):
        rows = build(split, answers)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (HERE / f"{split}.jsonl").write_text(text, encoding="utf-8")
        print(f"{split}.jsonl: {len(rows)} rows")


if __name__ == "__main__":
    main()
