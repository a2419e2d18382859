"""`tailor support train CONFIG`: the intent model through the fine-tuning engine, the retrieval
index, and the confidence threshold calibrated for a target out-of-scope recall.

    OUTPUT_DIR/
      intent/          a normal run folder (model/, eval.json, report.md): compress/serve work on it
      data/            the splits the engine trained on (in-scope rows) and the full eval split
      index/           the retriever (retrieval.py's save format), when `knowledge` is set;
                       index/query-encoder/ with `knowledge.tune_queries`
      answers.json     the checked templates, when `answers` is set
      support.json     threshold, paths and settings: what the Assistant loads
      report.md        what a person reads
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tailorml.apps.support.config import SupportConfig, answer_problems, read_answers
from tailorml.errors import ConfigError, DataError
from tailorml.files import atomic_json, atomic_write_text

FORMAT = 1


def calibrate_threshold(oos_confidence: np.ndarray | list[float], target_recall: float) -> float:
    """The lowest confidence threshold at which at least `target_recall` of the out-of-scope
    rows are handed off (a row is handed off when its confidence is *below* the threshold).

    The lowest such threshold hands off the fewest in-scope rows, since in-scope rows are only
    handed off below it. With n out-of-scope confidences sorted ascending, the k = ceil(target*n)
    lowest must fall below: the threshold is the next float above the k-th."""
    conf = np.sort(np.asarray(oos_confidence, dtype=np.float64))  # float64: see max_softmax
    if conf.size == 0:
        raise ValueError("calibrate_threshold needs at least one out-of-scope confidence")
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    k = math.ceil(target_recall * conf.size - 1e-9)
    return float(np.nextafter(conf[k - 1], np.inf))


def max_softmax(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmax index, max softmax probability) per row of logits (n, classes), in float64 as
    the Assistant computes them: a float32 confidence compared with a float64 threshold is
    compared in float32 (numpy 2), which would round the threshold onto a calibration point."""
    logits = np.asarray(logits, dtype=np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p.argmax(axis=1), p.max(axis=1)


def read_intent_rows(
    path: Path | str, text_column: str, label_column: str, oos: str, held_out: list[str], key: str
) -> list[dict[str, str]]:
    """Rows {text, label} of an intents file; a held-out intent's rows are labelled `oos`."""
    from tailorml.data.readers import is_missing, read_table

    table = read_table(path, key=key)
    table.require_columns(
        {f"{key}: text_column": text_column, f"{key}: label_column": label_column}
    )
    rows, bad = [], []
    held = set(held_out)
    for line, r in zip(table.lines, table.rows, strict=True):
        text, label = r.get(text_column), r.get(label_column)
        if is_missing(text) or not str(text).strip() or is_missing(label):
            bad.append(line)
            continue
        label = str(label)
        rows.append({"text": str(text), "label": oos if label in held else label})
    lines = bad + [b.line for b in table.bad]
    if lines:
        raise DataError(
            f"`{key}`: {path}: rows with an empty or unreadable text or label at line(s) "
            f"{', '.join(map(str, lines[:10]))}{' ...' if len(lines) > 10 else ''}. "
            "Fill or remove them."
        )
    return rows


def split_eval(
    rows: list[dict[str, str]], fraction: float, seed: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, eval): a stratified `fraction` of each label (out of scope included) to eval."""
    by: dict[str, list[int]] = defaultdict(list)
    for j, r in enumerate(rows):
        by[r["label"]].append(j)
    rng = random.Random(seed)
    to_eval: set[int] = set()
    for idx in by.values():
        rng.shuffle(idx)
        n = round(len(idx) * fraction) if len(idx) > 1 else 0
        to_eval.update(idx[:n])
    return (
        [r for j, r in enumerate(rows) if j not in to_eval],
        [r for j, r in enumerate(rows) if j in to_eval],
    )


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["text", "label"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return path


def train_support(
    cfg: SupportConfig, config_path: str | Path, overwrite: bool = False
) -> dict[str, Any]:
    """Run the whole build; returns support.json's content."""
    from tailorml.config.schema import RunConfig
    from tailorml.predictors import load_predictor
    from tailorml.recipes.finetune import finetune

    i, s = cfg.intents, cfg.support
    oos = i.out_of_scope_label
    out = Path(cfg.output_dir)

    # ---- every check on the inputs before anything is written or trained -----------------
    cols = (i.text_column, i.label_column, oos, i.held_out)
    train_rows = read_intent_rows(i.train, *cols, key="intents.train")
    eval_rows = read_intent_rows(i.eval, *cols, key="intents.eval") if i.eval else None
    test_rows = read_intent_rows(i.test, *cols, key="intents.test") if i.test else None
    if eval_rows is None:
        train_rows, eval_rows = split_eval(train_rows, i.eval_fraction, cfg.train.seed)
    intents = sorted({r["label"] for r in train_rows} - {oos})
    problems = []
    if len(intents) < 2:
        problems.append(
            f"`intents.train` ({i.train}): {len(intents)} in-scope intent(s); an intent model "
            "needs at least 2. Check `intents.label_column` and `intents.held_out`."
        )
    n_oos_eval = sum(r["label"] == oos for r in eval_rows)
    if s.target_oos_recall is not None and n_oos_eval == 0:
        where = f"`intents.eval` ({i.eval})" if i.eval else f"the eval split of {i.train}"
        problems.append(
            f"{where} has no out-of-scope rows (label {oos!r}) but `support.target_oos_recall` "
            f"is {s.target_oos_recall}: the threshold cannot be calibrated. Add rows labelled "
            f"{oos!r} to it, list intents to treat as out of scope in `intents.held_out`, or set "
            "`support.target_oos_recall: null` (then `support.confidence_threshold` is used)."
        )
    unseen = sorted({r["label"] for r in eval_rows} - set(intents) - {oos})
    if unseen:
        problems.append(
            f"the eval split has intents not in train: {', '.join(map(repr, unseen[:10]))}. "
            f"Add them to `intents.train`, label them {oos!r}, or list them in `intents.held_out`."
        )
    answers: dict[str, str] = {}
    if cfg.answers is not None:
        answers = read_answers(cfg.answers)
        problems += answer_problems(answers, intents, cfg.answers)
        warn_unfilled_slots(answers, train_rows, cfg.answers)
    passages = None
    if cfg.knowledge is not None:
        from tailorml.apps.support.knowledge import load_passages

        try:
            passages = load_passages(cfg.knowledge.documents, cfg.knowledge.max_words)
        except ConfigError as exc:
            problems += exc.problems
        if passages is not None:
            problems += _tuning_problems(cfg, train_rows, oos, passages)
    if problems:
        raise ConfigError([f"{config_path}: {p}" for p in problems])
    if cfg.answers is None and cfg.knowledge is None:
        from tailorml.train.progress import console

        console.print(
            f"[yellow]{config_path}: no `answers` and no `knowledge`: the assistant has nothing "
            "to answer with, so it hands every message off (with its intent). Add templates "
            "(`answers`) or help articles (`knowledge.documents`).[/]"
        )

    # ---- the intent model: an ordinary single-task run of the engine -------------------------
    if (out / "support.json").exists() and not overwrite:
        raise ConfigError(
            f"`output_dir` {out} already holds a support run (support.json). Pass --overwrite "
            "to replace it, or set another output_dir."
        )
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    data.mkdir(exist_ok=True)
    files = {
        "train": _write_csv(data / "train.csv", [r for r in train_rows if r["label"] != oos]),
        "eval": _write_csv(data / "eval.csv", [r for r in eval_rows if r["label"] != oos]),
    }
    _write_csv(data / "eval_all.csv", eval_rows)
    if test_rows is not None:
        files["test"] = _write_csv(data / "test.csv", [r for r in test_rows if r["label"] != oos])
        _write_csv(data / "test_all.csv", test_rows)
    run = RunConfig.model_validate(
        {
            "name": f"{cfg.name}-intent",
            "output_dir": out / "intent",
            "data": {**files, "max_length": i.max_length},
            "model": cfg.model.model_dump(),
            "task": {"type": "classification"},
            "train": cfg.train.model_dump(),
        }
    )
    res = finetune(run, overwrite=overwrite)

    # ---- the retrieval index --------------------------------------------------------------
    index = retriever = tuned = None
    if passages is not None and cfg.knowledge is not None:
        from tailorml.apps.support.retrieval import BM25Retriever, DenseRetriever, HybridRetriever

        k = cfg.knowledge
        tuned = _tune_queries(cfg, train_rows, oos, passages, out / "query-encoder")
        query_base = str(out / "query-encoder") if tuned else None
        mix = k.tune_queries.mix if tuned and k.tune_queries else 1.0
        dense = DenseRetriever(base=k.encoder, query_base=query_base, query_mix=mix)
        retriever = (
            BM25Retriever()
            if k.retriever == "bm25"
            else dense
            if k.retriever == "dense"
            else HybridRetriever(dense=dense)
        )
        retriever.fit(passages)
        retriever.save(out / "index")  # the tuned query encoder is copied into it
        index = "index"
        if tuned:
            import shutil

            from tailorml.apps.support.retrieval import load_retriever

            shutil.rmtree(out / "query-encoder")
            retriever = load_retriever(out / "index")
    if answers:
        atomic_json(out / "answers.json", answers)

    # ---- both thresholds, calibrated on the whole eval split (out-of-scope rows included) --
    from tailorml.apps.support.assistant import Assistant
    from tailorml.apps.support.calibrate import calibrate

    predictor = load_predictor(out / "intent")
    labels = list(predictor.labels or [])
    bot = Assistant(
        predictor,
        threshold=s.confidence_threshold,
        answers=answers,
        retriever=retriever,
        min_retrieval_score=s.min_retrieval_score,
        sources=s.sources,
    )
    cal = calibrate(bot, eval_rows, oos, s.target_oos_recall)

    summary = {
        "format": FORMAT,
        "name": cfg.name,
        "intent_model": "intent",
        "index": index,
        "retriever": cfg.knowledge.retriever if cfg.knowledge else None,
        "answers": "answers.json" if answers else None,
        "generation": _generation(cfg),
        "intents": labels,
        "out_of_scope_label": oos,
        "held_out": i.held_out,
        "text_column": i.text_column,
        "label_column": i.label_column,
        "doc_column": i.doc_column,
        "confidence_threshold": cal.pop("confidence_threshold"),
        "retrieval_threshold": cal.pop("retrieval_threshold"),
        "target_oos_recall": s.target_oos_recall,
        "min_retrieval_score": s.min_retrieval_score,
        "sources": s.sources,
        "handoff_message": s.handoff_message,
        "calibration": cal,
        "query_tuning": tuned,
        "intent_eval": {k: v for k, v in res.get("eval", {}).items() if isinstance(v, int | float)},
    }
    write_summary(out, summary)
    return summary


def _tuning_problems(
    cfg: SupportConfig, rows: list[dict[str, str]], oos: str, passages: list[Any]
) -> list[str]:
    k = cfg.knowledge
    if k is None or k.tune_queries is None:
        return []
    if k.retriever == "bm25":
        return [
            "`knowledge.tune_queries` tunes the dense encoder's queries, but "
            "`knowledge.retriever` is bm25. Use dense or hybrid, or remove tune_queries."
        ]
    from tailorml.apps.support.evaluate import intent_documents

    labels = sorted({r["label"] for r in rows} - {oos})
    if not any(intent_documents(labels, {p.doc_id for p in passages})):
        return [
            f"`knowledge.tune_queries`: no intent of `intents.train` has an article named after "
            f"it in {k.documents} (e.g. {labels[0]!r} -> {labels[0]}.md), so there is nothing "
            "to tune toward. Name the articles after the intents, or remove tune_queries."
        ]
    return []


def _tune_queries(
    cfg: SupportConfig, rows: list[dict[str, str]], oos: str, passages: list[Any], folder: Path
) -> dict[str, Any] | None:
    """Contrastive tuning of the query encoder on the in-scope training questions (each toward
    its intent's article); None when `knowledge.tune_queries` is off."""
    k = cfg.knowledge
    if k is None or k.tune_queries is None or k.retriever == "bm25":
        return None
    from tailorml.apps.support.evaluate import intent_documents
    from tailorml.apps.support.query_tuning import tune_query_encoder
    from tailorml.train.progress import console

    rows = [r for r in rows if r["label"] != oos]
    docs = intent_documents([r["label"] for r in rows], {p.doc_id for p in passages})
    q = k.tune_queries
    console.print(f"Tuning the query encoder on {sum(d is not None for d in docs):,} questions")
    return tune_query_encoder(
        k.encoder, passages, [r["text"] for r in rows], docs, folder,
        epochs=q.epochs, lr=q.lr, batch_size=q.batch_size, temperature=q.temperature,
        seed=cfg.train.seed, threads=cfg.train.threads,
        log=lambda line: console.print(line, highlight=False),
    )  # fmt: skip


def _tuning_line(t: dict[str, Any] | None) -> str:
    if not t:
        return "- Query encoder: the passages' encoder (not tuned)."
    return (
        f"- Query encoder: tuned on {t['questions']:,} training questions toward their intents' "
        f"articles ({t['steps']} steps, {t['train_seconds']:.0f} s; loss {t['loss_first']:.3f} -> "
        f"{t['loss_last']:.3f}), in `index/query-encoder/`."
    )


def _generation(cfg: SupportConfig) -> dict[str, Any] | None:
    """support.json's `generation`: its run as an absolute path (the run is used from anywhere)."""
    if cfg.generation is None:
        return None
    g = cfg.generation.model_dump()
    if g["run"] != "smollm2":
        g["run"] = str(Path(g["run"]).resolve())
    return g


def warn_unfilled_slots(
    answers: dict[str, str], rows: list[dict[str, str]], path: Path | str
) -> list[str]:
    """Warn (and return the intents) when a template's slots are filled by none of its intent's
    training messages: the assistant would never use that template (a message that does not
    fill a slot goes to retrieval)."""
    import logging

    from tailorml.apps.support.assistant import fill_slots
    from tailorml.apps.support.config import template_slots

    never = []
    for intent, template in sorted(answers.items()):
        slots = sorted(set(template_slots(template)))
        texts = [r["text"] for r in rows if r["label"] == intent]
        if slots and texts and not any(fill_slots(template, t) is not None for t in texts):
            never.append(intent)
            logging.getLogger("tailorml.support").warning(
                "`answers` (%s): the template of %r has %s, which none of its %d training "
                "messages fills, so it will rarely if ever be used. Write it without the slot, "
                "or check the slot (amount: a number; currency: a symbol, code or name).",
                path,
                intent,
                ", ".join("{" + s + "}" for s in slots),
                len(texts),
            )
    return never


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """support.json (what the Assistant loads) and report.md (what a person reads)."""
    atomic_json(out / "support.json", summary)
    atomic_write_text(out / "report.md", _report(summary))


def intent_scores(
    gold: list[str], predicted: list[str], confident: np.ndarray | list[bool], oos: str
) -> dict[str, float | None]:
    """The hand-off decision judged against the gold labels. An in-scope row is right when it
    gets its intent and is not handed off; an out-of-scope row when it is handed off."""
    conf = np.asarray(confident, dtype=bool)
    is_oos = np.array([g == oos for g in gold], dtype=bool)
    handed = ~conf
    right = np.array([g == p for g, p in zip(gold, predicted, strict=True)]) & conf
    n_in, n_oos, n_hand = int((~is_oos).sum()), int(is_oos.sum()), int(handed.sum())

    def share(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    return {
        "in_scope_accuracy": share(int((right & ~is_oos).sum()), n_in),
        "oos_recall": share(int((handed & is_oos).sum()), n_oos),
        "oos_precision": share(int((handed & is_oos).sum()), n_hand),
        "handoff_rate": share(n_hand, len(gold)),
    }


def _report(summary: dict[str, Any]) -> str:
    c = summary["calibration"]
    target = summary.get("target_oos_recall")
    how = (
        f"calibrated on the eval split for out-of-scope recall {target} of the whole assistant"
        if target is not None
        else "set by hand (support.confidence_threshold, support.min_retrieval_score)"
    )
    index = f"`index/` ({summary.get('retriever')})" if summary.get("index") else "none"
    keys = ("in_scope_accuracy", "oos_recall", "oos_precision", "handoff_rate")
    whole = c.get("assistant", {})
    lines = [
        f"# Support assistant: {summary['name']}",
        "",
        f"- Intent model: `intent/` ({len(summary['intents'])} intents), trained by the engine "
        "(its own report: intent/report.md).",
        f"- Thresholds, {how}: intent confidence (max softmax probability) "
        f"{summary['confidence_threshold']:.4f}; best article's retrieval score when the intent "
        f"is not confident {summary.get('retrieval_threshold', summary['min_retrieval_score']):.4f}"
        f", when it is {summary['min_retrieval_score']:.4f} (`support.min_retrieval_score`).",
        f"- Knowledge index: {index}.",
        _tuning_line(summary.get("query_tuning")),
        f"- Answer templates: {'answers.json' if summary.get('answers') else 'none'}.",
        f"- Generated answers: {summary.get('generation') or 'no (extractive: the best passage)'}.",
        "",
        f"## On the eval split ({c['rows']} rows, {c['oos_rows']} out of scope)",
        "",
        "| judged | in-scope accuracy | out-of-scope recall | out-of-scope precision | "
        "hand-off rate |",
        "|---|---|---|---|---|",
        "| whole assistant | " + " | ".join(str(whole.get(k)) for k in keys) + " |",
        f"| intent threshold alone ({c.get('intent_threshold', 0):.4f}) | "
        + " | ".join(str(c[k]) for k in keys)
        + " |",
        "",
        "In-scope accuracy counts a row right when it gets its intent and is not handed off. "
        "The eval split chose the thresholds, so these figures are optimistic: measure on "
        "held-out data with `tailor support evaluate`.",
    ]
    return "\n".join(lines) + "\n"
