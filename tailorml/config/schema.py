"""The typed run config. Every field has a type, a default and a one-line doc.

The docstring under each field (``Field(description=...)``) is what ``tailor config schema`` prints,
so keep it to one line that a user can act on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from tailorml.tasks.base import TaskInfo

OnBadRows = Literal["error", "skip"]


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    train: Path | None = Field(None, description="Training file (.csv, .jsonl or .parquet).")
    eval: Path | None = Field(
        None, description="Evaluation file; when absent a stratified split of train is used."
    )
    test: Path | None = Field(
        None, description="Test file; when absent a stratified split of train is used."
    )
    text_column: str = Field("text", description="Column holding the input text.")
    text_pair_column: str | None = Field(
        None, description="Column holding the second text (pair tasks only)."
    )
    label_column: str = Field("label", description="Column holding the label (or target value).")
    label_names: list[str] | None = Field(
        None, description="Names for integer labels 0..K-1, e.g. [Bearish, Bullish, Neutral]."
    )
    label_separator: str = Field(
        ";", description="Separator between labels of one row in csv files (multilabel only)."
    )
    eval_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="Share of train held out as eval when data.eval is absent."
    )
    test_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="Share of train held out as test when data.test is absent."
    )
    max_length: int = Field(
        128,
        ge=8,
        le=8192,
        description="Tokens per example; longer texts are truncated and counted.",
    )
    on_bad_rows: OnBadRows = Field(
        "error", description="`error` stops on the first bad rows; `skip` drops and counts them."
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="Use only the first N rows of each file (beware files sorted by label).",
    )
    prompt_column: str | None = Field(
        None, description="Generation: column holding the prompt (with data.response_column)."
    )
    response_column: str | None = Field(
        None, description="Generation: column holding the wanted answer (with prompt_column)."
    )
    messages_column: str | None = Field(
        None,
        description="Generation: column holding a chat, a list of {role, content} (jsonl); "
        "the model learns the assistant turns.",
    )
    packing: bool = Field(
        True,
        description="Generation: pack short examples into blocks of data.max_length tokens "
        "(no attention across examples); false = one padded example per row.",
    )


class LoraSettings(_Section):
    r: int = Field(8, ge=1, description="Rank of each low-rank update (more = more capacity).")
    alpha: float = Field(
        16.0, gt=0, description="Scale of the update: it is multiplied by alpha / r."
    )
    dropout: float = Field(
        0.05, ge=0, lt=1, description="Dropout on the adapters' input (training only)."
    )
    target_modules: list[str] | None = Field(
        None,
        description="Layers that get adapters: names or name endings, e.g. [query, value]; "
        "null = every Linear layer of the encoder (attention and feed-forward), not the head.",
    )


class ModelConfig(_Section):
    base: str = Field(
        "minilm",
        description="`minilm` (packaged all-MiniLM-L6-v2), `smollm2` (packaged SmolLM2-135M-"
        "Instruct, generation), `tiny` (random, for tests) or a folder.",
    )
    dropout: float | None = Field(
        None, ge=0, lt=1, description="Override the encoder's dropout (hidden and attention)."
    )
    tiny_hidden_size: int = Field(32, ge=8, description="Hidden size of the `tiny` model.")
    tiny_layers: int = Field(2, ge=1, description="Layers of the `tiny` model.")
    lora: LoraSettings | None = Field(
        None,
        description="LoRA: train low-rank adapters and the task head, the base frozen; "
        "null = full fine-tuning.",
    )


class TaskConfig(_Section):
    type: str = Field(
        "classification",
        description="What the model predicts: a registered task type (`tailor tasks` lists them).",
    )


class TrainConfig(_Section):
    epochs: float | None = Field(
        None,
        gt=0,
        description="Passes over the training data; null = until eval stops improving, within "
        "~3,000 steps (chosen from the data size, early stopping on).",
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(
        32, ge=1, description="Examples per optimizer step across all processes (before accum.)."
    )
    eval_batch_size: int = Field(128, ge=1, description="Examples per evaluation batch.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches accumulated per step.")
    lr: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate of AdamW; null = chosen from the encoder's width "
        "(1e-4 for MiniLM-sized, 5e-5 for BERT-base-sized).",
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on bias/norm).")
    schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate decay after warmup."
    )
    warmup_steps: int | None = Field(None, ge=0, description="Warmup steps (or warmup_ratio).")
    warmup_ratio: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Warmup as a share of all steps (or warmup_steps); neither = 6% of the steps.",
    )
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip gradients to this norm; null disables clipping."
    )
    seed: int = Field(42, description="Seed for splits, initialisation, shuffling and dropout.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="`auto` = bf16 autocast on CUDA and on CPUs with native bf16 (AMX, "
        "AVX-512 BF16), else fp32.",
    )
    compile: bool = Field(False, description="Wrap the model in torch.compile.")
    bucket_by_length: bool = Field(
        True, description="Group examples of similar length into batches (less padding)."
    )
    eval_every_steps: int | None = Field(
        None, ge=1, description="Evaluate every N steps; null = at the end of each epoch."
    )
    save_every_steps: int | None = Field(
        None, ge=1, description="Checkpoint every N steps; null = at each evaluation."
    )
    keep_checkpoints: int = Field(2, ge=1, description="How many step checkpoints to keep.")
    metric_for_best: str | None = Field(
        None, description="Eval metric that picks the best checkpoint; null = the task's default."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after N evaluations without improvement; null = never."
    )
    threads: int | None = Field(
        None, ge=1, description="Torch intra-op threads; null = all cores of this process."
    )
    log_every_steps: int = Field(10, ge=1, description="Log loss and lr every N steps.")


class DistillConfig(_Section):
    teacher: Path | None = Field(
        None,
        description="Teacher model folder (RUN_DIR/model) whose soft labels the model learns "
        "(knowledge distillation); null = none.",
    )
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the soft labels.")
    alpha: float = Field(
        0.5, ge=0, le=1, description="Weight of the soft-label loss; the rest on gold labels."
    )


class ParamRange(_Section):
    low: int | float | None = Field(None, description="Lowest value (with high).")
    high: int | float | None = Field(None, description="Highest value (with low).")
    log: bool = Field(False, description="Sample on a log scale (learning rates).")
    step: int | float | None = Field(None, description="Grid step between low and high.")
    choices: list[Any] | None = Field(None, description="Or a list of values to choose from.")


class TuneConfig(_Section):
    space: dict[str, ParamRange] = Field(
        default_factory=dict,
        description="Config key -> range, e.g. `train.lr: {low: 1.0e-5, high: 5.0e-4, log: true}`"
        " or `train.batch_size: {choices: [16, 32]}`.",
    )
    trials: int = Field(20, ge=1, description="Trials of the study (finished or pruned).")
    metric: str | None = Field(
        None, description="Eval metric to optimise; null = the run's metric_for_best."
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="null = from the metric (loss, mse, mae, rmse, perplexity: minimize)."
    )
    storage: str | None = Field(
        None,
        description="Optuna storage; null = a SQLite file in output_dir; a PostgreSQL URL lets "
        "workers on several machines share the study.",
    )
    pruner: Literal["median", "asha", "none"] = Field(
        "median", description="Stop unpromising trials early on their eval metric."
    )
    timeout_s: float | None = Field(
        None, gt=0, description="Stop starting trials after this many seconds."
    )
    seed: int = Field(0, description="Seed of the sampler (TPE).")


class GenerateConfig(_Section):
    samples: int = Field(
        64,
        ge=0,
        description="Generation runs: held-out rows answered greedily and scored in eval.json.",
    )
    max_new_tokens: int = Field(
        96, ge=1, le=4096, description="Generation runs: longest answer generated for samples."
    )


class HeadConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)  # type: ignore[arg-type]
    task: TaskConfig = Field(default_factory=TaskConfig)  # type: ignore[arg-type]
    loss_weight: float = Field(1.0, gt=0, description="Weight of this head's loss in the sum.")


class RunConfig(_Section):
    name: str = Field("run", description="Name of the run (used in reports).")
    output_dir: Path = Field(Path("runs/run"), description="Run folder to write.")
    data: DataConfig = Field(default_factory=DataConfig)  # type: ignore[arg-type]
    model: ModelConfig = Field(default_factory=ModelConfig)  # type: ignore[arg-type]
    task: TaskConfig = Field(default_factory=TaskConfig)  # type: ignore[arg-type]
    train: TrainConfig = Field(default_factory=TrainConfig)  # type: ignore[arg-type]
    distill: DistillConfig = Field(default_factory=DistillConfig)  # type: ignore[arg-type]
    tune: TuneConfig = Field(default_factory=TuneConfig)  # type: ignore[arg-type]
    generate: GenerateConfig = Field(default_factory=GenerateConfig)  # type: ignore[arg-type]
    heads: dict[str, HeadConfig] | None = Field(
        None,
        description="Multi-task: one shared encoder, one head per entry (own data and task); "
        "replaces top-level data/task.",
    )

    def head_views(self) -> dict[str, RunConfig]:
        """name -> a single-task view of this config (its data and task, shared model/train).
        A single-task config is one head named ``""``."""
        if self.heads is None:
            return {"": self}
        return {
            name: self.model_copy(update={"data": h.data, "task": h.task, "heads": None})
            for name, h in self.heads.items()
        }


def _get(raw: dict, dotted: str, default: object = None) -> object:
    node: object = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def task_of(view: dict, prefix: str, problems: list[str]) -> TaskInfo | None:
    """The registered task a (head's) raw config names; an unknown name is added to `problems`."""
    from tailorml.errors import ConfigError
    from tailorml.tasks import find_task

    name = _get(view, "task.type", "classification")
    try:
        return find_task(str(name), f"{prefix}task.type")
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


def cross_field_problems(raw: dict) -> list[str]:
    """Checks that involve several fields, run on the raw (merged) mapping so that they are
    reported together with field errors. Each message names the fields and the fix."""
    out: list[str] = []
    if _get(raw, "train.warmup_steps") is not None and _get(raw, "train.warmup_ratio") is not None:
        out.append("Both `train.warmup_steps` and `train.warmup_ratio` are set. Choose one.")
    heads = _get(raw, "heads")
    views: dict[str, dict] = {"": raw}
    if isinstance(heads, dict):
        views = {f"heads.{k}.": v for k, v in heads.items() if isinstance(v, dict)}
        if not heads:
            out.append("`heads` is empty. Give at least one head, or remove `heads`.")
        for name in heads:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
                out.append(
                    f"`heads.{name}`: head names may hold letters, digits, `_` and `-` only."
                )
        if _get(raw, "data.train"):
            out.append(
                "`data.train` is set at the top level and `heads` is set too. In a multi-task "
                "config each head has its own data: move it under `heads.<name>.data`."
            )
    for prefix, view in views.items():
        task = task_of(view, prefix, out)
        data = _get(view, "data", {})
        if task is not None and isinstance(data, dict):
            out.extend(task.config_problems(prefix, data))
        if not _get(view, "data.train"):
            out.append(f"`{prefix}data.train` is not set. Give the path of the training file.")
    bs, acc = _get(raw, "train.batch_size", 32), _get(raw, "train.grad_accum_steps", 1)
    if isinstance(bs, int) and isinstance(acc, int) and acc > 0 and bs % acc:
        out.append(
            f"`train.batch_size` ({bs}) is not divisible by `train.grad_accum_steps` ({acc}). "
            "Pick values that divide."
        )
    return out
