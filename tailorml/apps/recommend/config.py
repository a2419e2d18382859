"""The recommender's config (`tailor recommend train CONFIG`): typed, every field documented,
every problem reported at once with its field and fix.

    kind: recommend
    output_dir: runs/recommend
    data: {interactions, items, user_column, item_column, time_column, rating_column,
           min_rating, text_columns, title_column, tags, tag_column, on_bad_rows}
    eval: {k, cold_max_train}
    baselines: {ease_lambdas, knn_neighbours, als_factors, ...}
    model: {encoder, dim, max_history, epochs, ...}      # the text-aware model
    ranker: {enabled, candidates}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tailorml.errors import ConfigError

FULL_SOFTMAX_MAX_ITEMS = 50_000  # softmax auto: a full softmax up to this many items


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    interactions: Path = Field(description="Events, one row each (.csv, .tsv or .parquet).")
    items: Path = Field(description="Items, one row each (.csv, .tsv or .parquet).")
    user_column: str = Field("user_id", description="Column of the user id (interactions).")
    item_column: str = Field(
        "item_id", description="Column of the item id (interactions, items and tags)."
    )
    time_column: str = Field(
        "timestamp", description="Column of the event time: a number (epoch) or an ISO date."
    )
    rating_column: str | None = Field(None, description="Column of a rating (optional).")
    min_rating: float | None = Field(
        None,
        description="Keep only events rated at or above this (needs `rating_column`); "
        "null: every event counts.",
    )
    text_columns: list[str] = Field(
        default_factory=lambda: ["title"],
        min_length=1,
        description="Item columns joined into the item's text, e.g. [title, genres].",
    )
    title_column: str | None = Field(
        None, description="Item column shown as the title (default: the first text column)."
    )
    genre_column: str | None = Field(
        None,
        description="Item column of `|`-separated categories (the ranker's genre-match feature).",
    )
    tags: Path | None = Field(
        None, description="Optional extra file of (item, tag) rows added to the item's text."
    )
    tag_column: str = Field("tag", description="Column of the tag in `tags`.")
    max_tags: int = Field(10, ge=0, description="Most distinct tags added to an item's text.")
    limit_users: int | None = Field(
        None, ge=1, description="Use only the first N users of the interactions file (a quick try)."
    )
    on_bad_rows: Literal["error", "skip"] = Field(
        "error",
        description="`error` stops on bad rows (listed with file:line); `skip` counts them.",
    )


class EvalConfig(_Section):
    k: int = Field(10, ge=1, le=1000, description="Cut-off of the ranking metrics.")
    cold_max_train: int = Field(
        5,
        ge=0,
        description="The cold subset: targets whose item has at most this many training events.",
    )


class BaselinesConfig(_Section):
    ease_lambdas: list[float] = Field(
        default_factory=lambda: [50.0, 200.0, 500.0],
        description="EASE's L2 weights tried on the validation targets (empty: no EASE).",
    )
    knn_neighbours: list[int] = Field(
        default_factory=lambda: [50, 200], description="Item-kNN neighbour counts tried."
    )
    als_factors: int = Field(64, ge=2, le=1024, description="Implicit ALS factors.")
    als_regs: list[float] = Field(
        default_factory=lambda: [1.0, 10.0], description="Implicit ALS L2 weights tried."
    )
    als_alpha: float = Field(10.0, gt=0, description="Implicit ALS confidence weight.")
    als_iterations: int = Field(10, ge=1, le=200, description="Implicit ALS sweeps.")


class ModelConfig(_Section):
    encoder: str = Field(
        "minilm",
        description="Item-text encoder: `minilm` (packaged), a local folder, `tiny` (tests).",
    )
    item_encoder: Literal["frozen", "lora", "finetune"] = Field(
        "frozen",
        description="`frozen`: item texts embedded once; `lora` / `finetune`: after the frozen "
        "training, `encoder_epochs` more with LoRA adapters on (or full training of) the "
        "encoder's top `encoder_layers` layers, the two-tower loss through the encoder.",
    )
    encoder_layers: int = Field(
        1, ge=1, le=48, description="Top transformer layers of the encoder that train."
    )
    encoder_epochs: int = Field(
        1, ge=1, le=100, description="Epochs of the encoder phase (lora / finetune)."
    )
    encoder_lr: float = Field(
        5e-4,
        gt=0,
        description="AdamW learning rate of the encoder phase (it trains the encoder "
        "and the adapter; the user tower and the id vectors stay as learnt).",
    )
    encoder_windows: Literal["last", "all"] = Field(
        "last",
        description="What the encoder phase trains on: each user's most recent `max_history` "
        "events (`last`: one window a user, what 2 CPU cores afford) or every window (`all`).",
    )
    lora_r: int = Field(8, ge=1, le=256, description="LoRA rank (item_encoder: lora).")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scale alpha (update x alpha / r).")
    dim: int = Field(64, ge=8, le=1024, description="Width of item and user vectors.")
    layers: int = Field(2, ge=0, le=8, description="Transformer layers of the user tower.")
    heads: int = Field(2, ge=1, le=16, description="Attention heads of the user tower.")
    max_history: int = Field(
        100, ge=2, le=2000, description="Most recent events the user tower reads."
    )
    id_embeddings: bool = Field(
        True, description="Add a learned id vector to items with training events."
    )
    id_min_count: int = Field(
        1,
        ge=1,
        description="Training events an item needs for an id vector; items with fewer are "
        "scored through their text alone, in training as at serving (the cold items' path).",
    )
    id_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of id vectors dropped at random in each training step, so that "
        "the text path learns to carry the score alone.",
    )
    text_only_max_count: int | None = Field(
        None,
        ge=0,
        description="After training, items with at most this many training events are scored "
        "through their text alone (their id vector, learnt from a few events, is dropped); "
        "null: every item keeps its id vector.",
    )
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout of the user tower.")
    epochs: int = Field(60, ge=1, le=10_000, description="Passes over the training sequences.")
    batch_size: int = Field(16, ge=1, description="Sequences per step.")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    softmax: Literal["auto", "full", "sampled"] = Field(
        "auto",
        description="Next-item loss: `full` scores every item at every position; `sampled` "
        "scores the batch's targets plus `negatives` uniform draws, log-Q corrected; `auto`: "
        f"full up to {FULL_SOFTMAX_MAX_ITEMS:,} items, sampled above. The encoder phase "
        "(item_encoder lora/finetune) is always sampled.",
    )
    negatives: int = Field(
        256,
        ge=0,
        description="Uniformly sampled negatives a step, plus the in-batch ones (softmax: "
        "sampled).",
    )
    temperature: float = Field(0.1, gt=0, description="Softmax temperature on cosine scores.")
    patience: int = Field(
        5, ge=1, description="Stop after this many evaluations without a better valid NDCG."
    )
    eval_every: int = Field(5, ge=1, description="Evaluate on the valid targets every N epochs.")


class RankerConfig(_Section):
    enabled: bool = Field(True, description="Train the fusion ranker on the valid targets.")
    candidates: int = Field(
        100, ge=10, le=5000, description="Candidates per user (the model's top) the ranker orders."
    )
    sequence_window: int = Field(
        3,
        ge=1,
        le=50,
        description="The order features (next_after_recent, prev_of_recent) count an event as "
        "following (preceding) an item when it comes within this many events after (before) "
        "it in a training history.",
    )
    sequence_recent: int = Field(
        10,
        ge=1,
        le=200,
        description="The user's latest items the order features read.",
    )


class TrainSettings(_Section):
    seed: int = Field(0, description="Seed of every random choice.")
    threads: int | None = Field(None, ge=1, description="Torch threads (default: all cores).")


class RecommendConfig(_Section):
    kind: Literal["recommend"] = Field("recommend", description="Marks the app config.")
    name: str = Field("recommend", description="Name of the run.")
    output_dir: Path = Field(Path("runs/recommend"), description="Run folder to write.")
    data: DataConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)  # type: ignore[arg-type]
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)  # type: ignore[arg-type]
    model: ModelConfig = Field(default_factory=ModelConfig)  # type: ignore[arg-type]
    ranker: RankerConfig = Field(default_factory=RankerConfig)  # type: ignore[arg-type]
    train: TrainSettings = Field(default_factory=TrainSettings)  # type: ignore[arg-type]


KEYS_HINT = "The keys are in configs/recommend-movielens.yaml and docs/recommend.md."


def load_recommend_config(path: str | Path, overrides: list[str] | None = None) -> RecommendConfig:
    """Read and validate; every problem in one ConfigError."""
    from tailorml.config.load import apply_overrides, describe_validation_error, read_yaml

    raw = apply_overrides(read_yaml(Path(path)), overrides or [])
    problems: list[str] = []
    cfg = None
    try:
        cfg = RecommendConfig(**raw)
    except ValidationError as exc:
        problems += describe_validation_error(exc, RecommendConfig, KEYS_HINT)
    problems += file_problems(raw)
    if cfg is not None:
        d = cfg.data
        if d.min_rating is not None and d.rating_column is None:
            problems.append(
                "`data.min_rating` is set but `data.rating_column` is not. Name the rating "
                "column, or remove `data.min_rating`."
            )
        if cfg.model.dim % cfg.model.heads:
            problems.append(
                f"`model.dim` ({cfg.model.dim}) is not a multiple of `model.heads` "
                f"({cfg.model.heads}). Change one of them."
            )
    if problems or cfg is None:
        raise ConfigError([f"{path}: {p}" for p in problems])
    return cfg


def file_problems(raw: dict[str, Any]) -> list[str]:
    data = raw.get("data")
    if not isinstance(data, dict):
        return []
    out = []
    for key in ("interactions", "items", "tags"):
        f = data.get(key)
        if isinstance(f, str | Path) and not Path(f).is_file():
            out.append(f"`data.{key}`: file not found: {f}. Check the path (relative to the cwd).")
    return out
