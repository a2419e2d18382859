"""The support assistant's config (`tailor support train CONFIG`): typed, every field documented,
every problem reported at once with its field and fix.

    kind: support                 # marks the file as an app config (not a run config)
    output_dir: runs/support
    intents: {train, eval, test, text_column, label_column, out_of_scope_label, held_out}
    knowledge: {documents, retriever}    # optional
    generation: {run, max_new_tokens}    # optional: answers written by a causal LM
    answers: configs/support-answers.yaml  # optional: intent -> template
    support: {target_oos_recall, min_retrieval_score, ...}
    model: {...}  train: {...}    # the run config's sections, as `tailor finetune` reads them
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tailorml.config.schema import ModelConfig, TrainConfig
from tailorml.errors import ConfigError

# Slots a template may hold, each filled from the customer's message (assistant.fill_slots).
SLOTS = ("amount", "currency")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class IntentsConfig(_Section):
    train: Path = Field(description="Labelled questions (.csv, .jsonl or .parquet).")
    eval: Path | None = Field(
        None,
        description="Eval file (thresholds are calibrated on it); absent: a stratified "
        "`eval_fraction` of train, out-of-scope rows included.",
    )
    test: Path | None = Field(None, description="Test file; absent: the engine splits train.")
    text_column: str = Field("text", description="Column holding the customer's message.")
    label_column: str = Field("label", description="Column holding the intent.")
    out_of_scope_label: str = Field(
        "out_of_scope",
        description="Label of out-of-scope rows: not a class; used to calibrate and evaluate.",
    )
    held_out: list[str] = Field(
        default_factory=list,
        description="Intents treated as out of scope in every split (to simulate unknown "
        "questions on a data set with none, e.g. Banking77).",
    )
    eval_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="Share of train held out as eval when `eval` is absent."
    )
    max_length: int = Field(64, ge=8, le=8192, description="Tokens per message.")
    doc_column: str | None = Field(
        None,
        description="Column naming the article (knowledge document id) that answers each "
        "message, if the data has one: `support evaluate` then reports retrieval recall@k. "
        "Absent: the intent is used when the articles are named after the intents.",
    )


class QueryTuningConfig(_Section):
    """Contrastive fine-tuning of the question side of dense retrieval (query_tuning.py)."""

    epochs: float = Field(2.0, gt=0, le=100, description="Passes over the training questions.")
    lr: float = Field(3e-5, gt=0, le=1, description="AdamW learning rate (linear decay).")
    batch_size: int = Field(32, ge=1, le=4096, description="Questions a step.")
    temperature: float = Field(
        0.05, gt=0, le=10, description="Softmax temperature over the passages' cosine scores."
    )
    mix: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A question's vector: mix x the tuned encoder's + (1 - mix) x the untuned "
        "one's (1 = tuned alone, best when every article has labelled questions; lower keeps "
        "more of what the untuned encoder finds; 0.5 chosen on Banking77's validation "
        "questions, docs/support.md).",
    )


class KnowledgeConfig(_Section):
    documents: Path = Field(description="Folder of .md / .txt help articles.")
    retriever: Literal["bm25", "dense", "hybrid"] = Field(
        "dense",
        description="Retriever of the index (dense measured best on Banking77, docs/support.md).",
    )
    encoder: str = Field(
        "minilm", description="Dense encoder: `minilm` (packaged), a local folder, `tiny` (tests)."
    )
    max_words: int = Field(200, ge=10, description="Longest passage in words.")
    tune_queries: QueryTuningConfig | None = Field(
        None,
        description="Fine-tune a query encoder on the in-scope training questions, each toward "
        "its intent's article (articles named after the intents; dense and hybrid only); the "
        "passages keep the encoder's vectors; it hurts articles it was not tuned toward "
        "(docs/support.md). null = off; {} = the defaults.",
    )


class GenerationConfig(_Section):
    run: str = Field(
        description="A causal-LM run folder, its model/ folder, or `smollm2`: it writes "
        "retrieval answers from the retrieved passages, citing them."
    )
    max_new_tokens: int = Field(96, ge=1, le=2048, description="Longest generated answer.")


class SupportSettings(_Section):
    target_oos_recall: float | None = Field(
        0.8,
        gt=0,
        le=1,
        description="Out-of-scope recall the confidence threshold is calibrated for on the eval "
        "split; null = no calibration (`confidence_threshold` is used).",
    )
    confidence_threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Used only when target_oos_recall is null: below it, the intent is "
        "not trusted.",
    )
    min_retrieval_score: float = Field(
        0.45,
        description="An article is answered only when its retrieval score reaches this (dense: "
        "cosine similarity; bm25: BM25 score; hybrid: fused reciprocal rank).",
    )
    sources: int = Field(3, ge=1, le=20, description="Most sources returned with an answer.")
    handoff_message: str = Field(
        "I could not find an answer to that. I am passing you to a colleague who will reply here.",
        description="The answer given with a hand-off.",
    )


class SupportConfig(_Section):
    kind: Literal["support"] = Field("support", description="Marks the app config.")
    name: str = Field("support", description="Name of the run.")
    output_dir: Path = Field(Path("runs/support"), description="Run folder to write.")
    intents: IntentsConfig = Field(description="The labelled questions.")
    knowledge: KnowledgeConfig | None = Field(None, description="The help articles (optional).")
    answers: Path | None = Field(None, description="YAML file: intent -> answer template.")
    generation: GenerationConfig | None = Field(
        None, description="Grounded generated answers (optional; extractive without it)."
    )
    support: SupportSettings = Field(default_factory=SupportSettings)  # type: ignore[arg-type]
    model: ModelConfig = Field(default_factory=ModelConfig)  # type: ignore[arg-type]
    train: TrainConfig = Field(default_factory=TrainConfig)  # type: ignore[arg-type]


SUPPORT_KEYS_HINT = "The keys are in configs/support.yaml and docs/support.md."


def load_support_config(path: str | Path, overrides: list[str] | None = None) -> SupportConfig:
    """Read, validate and check the config's files; every problem in one ConfigError (a
    mistyped key does not hide a missing file: the files are checked on the raw mapping)."""
    from tailorml.config.load import apply_overrides, describe_validation_error, read_yaml

    raw = apply_overrides(read_yaml(Path(path)), overrides or [])
    problems: list[str] = []
    cfg = None
    try:
        cfg = SupportConfig(**raw)
    except ValidationError as exc:
        problems += describe_validation_error(exc, SupportConfig, SUPPORT_KEYS_HINT)
    problems += file_problems(raw)
    if problems or cfg is None:
        raise ConfigError([f"{path}: {p}" for p in problems])
    return cfg


def _section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def file_problems(raw: dict[str, Any]) -> list[str]:
    """Files named by the (raw) config that are missing or malformed; values of the wrong type
    are left to the schema's message. The templates' intents are checked against the train
    file's labels later (`answer_problems`)."""
    out = []
    intents = _section(raw, "intents")
    for key in ("train", "eval", "test"):
        f = intents.get(key)
        if isinstance(f, str | Path) and not Path(f).is_file():
            out.append(
                f"`intents.{key}`: file not found: {f}. Check the path (relative to the cwd)."
            )
    docs = _section(raw, "knowledge").get("documents")
    if isinstance(docs, str | Path) and not Path(docs).is_dir():
        out.append(
            f"`knowledge.documents`: {docs} is not a folder. Point it at the folder of .md / "
            ".txt articles, or remove `knowledge`."
        )
    answers = raw.get("answers")
    if isinstance(answers, str | Path):
        if not Path(answers).is_file():
            out.append(f"`answers`: file not found: {answers}. Check the path.")
        else:
            try:
                read_answers(answers)
            except ConfigError as exc:
                out.extend(exc.problems)
    gen = _section(raw, "generation").get("run")
    if isinstance(gen, str | Path) and str(gen) != "smollm2":
        from tailorml.predictors.generator import is_causal_lm

        if not is_causal_lm(gen):
            out.append(
                f"`generation.run` = {str(gen)!r} is not a causal language model (no "
                "config.json naming a *ForCausalLM, in it or in its model/). Give a generation "
                "run (`tailor finetune` with task.type generation), a causal-LM folder or "
                "`smollm2`, or remove `generation` for extractive answers."
            )
    oos = intents.get("out_of_scope_label", "out_of_scope")
    held = intents.get("held_out")
    if isinstance(held, list) and oos in held:
        out.append(
            f"`intents.held_out` lists the out-of-scope label {oos!r}; "
            "remove it (it is out of scope already)."
        )
    return out


def read_answers(path: str | Path) -> dict[str, str]:
    """The answers file: a YAML mapping intent -> template (a non-empty string whose `{slot}`s
    are among SLOTS)."""
    from tailorml.config.load import read_yaml

    raw = read_yaml(path)
    problems, out = [], {}
    for intent, template in raw.items():
        if not isinstance(template, str) or not template.strip():
            problems.append(
                f"`answers` ({path}): intent {intent!r} has {template!r}, not a template. "
                "Give it a non-empty string."
            )
            continue
        bad = sorted(set(template_slots(template)) - set(SLOTS))
        if bad:
            problems.append(
                f"`answers` ({path}): the template of {intent!r} has slot(s) "
                f"{', '.join('{' + b + '}' for b in bad)} that cannot be filled from a message. "
                f"Use only {', '.join('{' + s + '}' for s in SLOTS)}, or write `{{{{` for a brace."
            )
            continue
        out[str(intent)] = template
    if problems:
        raise ConfigError(problems)
    return out


def template_slots(template: str) -> list[str]:
    """`{name}` slots of a template (`{{` / `}}` are literal braces)."""
    return re.findall(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})", template)


def answer_problems(answers: dict[str, str], intents: list[str], path: Path | str) -> list[str]:
    """Templates for intents the model does not know: each named, with the fix."""
    unknown = sorted(set(answers) - set(intents))
    if not unknown:
        return []
    import difflib

    hints = []
    for u in unknown:
        close = difflib.get_close_matches(u, intents, n=1)
        hints.append(f"{u!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return [
        f"`answers` ({path}) names intents that are not in `intents.train` (or are out of "
        f"scope / held out): {', '.join(hints)}. Rename them to trained intents or remove them."
    ]
