"""The typed run config. Every field has a type, a default and a one-line doc.

The docstring under each field (``Field(description=...)``) is what ``tailor config schema`` prints,
so keep it to one line that a user can act on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class ModelInit(_Section):
    """A model built from scratch (random weights) for `tailor pretrain`."""

    arch: Literal["bert", "llama"] = Field(
        ...,
        description="`bert` (BertForMaskedLM, objective mlm) or `llama` (LlamaForCausalLM, clm).",
    )
    preset: Literal["tiny", "mini", "small", "base"] = Field(
        "small",
        description="Size: tiny (tests, ~0.1M), mini (~4M), small (~20M), base (~110-125M); "
        "layers/hidden/heads/intermediate override it.",
    )
    layers: int | None = Field(None, ge=1, description="Transformer layers (overrides preset).")
    hidden: int | None = Field(None, ge=8, description="Hidden size (overrides preset).")
    heads: int | None = Field(
        None, ge=1, description="Attention heads; must divide hidden (overrides preset)."
    )
    intermediate: int | None = Field(
        None, ge=8, description="Feed-forward width (overrides preset; default 4 x hidden)."
    )
    max_positions: int = Field(
        512, ge=8, description="Longest sequence the model accepts (position embeddings)."
    )


class ModelConfig(_Section):
    init: ModelInit | None = Field(
        None,
        description="Pretraining from scratch: build a random model of this shape "
        "(instead of `model.base`).",
    )
    base: str = Field(
        "minilm",
        description="`minilm` (packaged all-MiniLM-L6-v2), `mpnet` (packaged all-mpnet-base-"
        "v2, 5x larger: slower, more accurate), `smollm2` (packaged SmolLM2-135M-"
        "Instruct, generation), `tiny` (random, for tests) or a folder; image-classification: "
        "`resnet18`, `resnet-small`, `cnn` or an image run's model folder (its weights as init).",
    )
    widths: list[int] | None = Field(
        None,
        description="Image models: channels of each stage, e.g. [32, 64, 128]; null = the "
        "base's (resnet18 [64,128,256,512], resnet-small [32,64,128], cnn [32,64]).",
    )
    blocks: list[int] | None = Field(
        None,
        description="Image models (resnet): residual blocks per stage, one per width; null = "
        "the base's (resnet18 [2,2,2,2], resnet-small [1,1,1]).",
    )
    dropout: float | None = Field(
        None, ge=0, lt=1, description="Override the encoder's dropout (hidden and attention)."
    )
    pooling: Literal["auto", "cls", "mean"] = Field(
        "auto",
        description="Classifiers: one vector from the token states. `mean` = their average over "
        "the tokens (BERT-family bases), `cls` = the first token through the base's pooler; "
        "`auto` = what a tailorml base folder was trained with, else `cls`.",
    )
    head_init: Literal["auto", "probe", "random"] = Field(
        "random",
        description="Classifiers: `probe` fits the fresh output layer on the frozen encoder's "
        "features before fine-tuning (a linear probe, its L2 chosen on eval); `random` starts "
        "it random; `auto` = `probe` on a pretrained encoder (full fine-tuning, no distillation).",
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
    layer_lr_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Layer-wise learning-rate decay: the output layers train at `lr`, the top "
        "encoder layer at lr x d, the one below at lr x d^2, ..., the embeddings lowest; "
        "null = one rate for all.",
    )
    head_lr_scale: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="The freshly initialised output layer (the task heads) trains at lr x this, "
        "the pretrained body at lr; null = one rate (no effect under LoRA).",
    )
    schedule: Literal["linear", "cosine", "constant", "onecycle"] = Field(
        "linear",
        description="Learning-rate decay after warmup; `onecycle`: cosine up over the warmup "
        "(default 25% of the steps) from lr/25, then cosine down to 0.",
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
        None,
        ge=1,
        description="Stop after N evaluations without improvement (neither a better metric nor "
        "an eval loss `early_stopping_loss_drop` under its lowest); null = never.",
    )
    early_stopping_loss_drop: float | None = Field(
        0.01,
        ge=0,
        lt=1,
        description="An eval loss this share under its lowest also counts as improvement for "
        "early stopping (the model is still learning while the metric wobbles on a small eval "
        "split); null = the metric alone. The best checkpoint is always chosen by the metric.",
    )
    frozen_candidate: Literal["auto", True, False] = Field(
        False,
        description="After fine-tuning, also fit the output layer on the frozen encoder's "
        "mean-pooled features and keep that model instead when it scores strictly higher on "
        "eval; `auto` = on where it applies (a pretrained BERT-family classifier, full "
        "fine-tuning, no distillation). Off by default: measured, it won as often as it lost.",
    )
    contrastive: Literal["auto", True, False] = Field(
        "auto",
        description="Train the encoder with a supervised contrastive loss on class-balanced "
        "batches for a fixed 200 steps, then fit the output layer on its averaged token states, "
        "instead of fine-tuning with the task's loss (SetFit's recipe). `auto` = on for a "
        "pretrained BERT-family single-label classifier with at most 100 training rows per "
        "label and none of train.lr, epochs, max_steps set, where it measured better than "
        "fine-tuning; train.lr, epochs and batch size do not apply to it.",
    )
    cooldown: bool = Field(
        False,
        description="When early stopping fires, go back to the best checkpoint and anneal the "
        "learning rate from its value there to 0 over as many steps as patience waited, "
        "evaluating as before (the best of both phases is kept).",
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
    hidden_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the hidden-state loss: MSE between each student layer's output "
        "and the output of the teacher layer it was copied from (same width); 0 = off. The "
        "teacher then runs beside the student on every batch.",
    )
    attention_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the attention-map loss: KL between the matched layers' attention "
        "distributions (same number of heads); 0 = off.",
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
    heartbeat_s: int = Field(
        60,
        ge=1,
        description="A worker's running trial signals every this many seconds; one silent for "
        "3x as long (the process was killed) is rerun from its last checkpoint.",
    )


class GenerateConfig(_Section):
    samples: int = Field(
        64,
        ge=0,
        description="Generation runs: held-out rows answered greedily and scored in eval.json.",
    )
    max_new_tokens: int = Field(
        96, ge=1, le=4096, description="Generation runs: longest answer generated for samples."
    )


class CorpusSource(_Section):
    path: str = Field(..., description="A file, folder or glob of .txt/.jsonl/.csv/.parquet.")
    weight: float = Field(
        1.0, gt=0, description="Times its blocks are seen per epoch (0.5 = half, 2 = twice)."
    )


class PretrainConfig(_Section):
    objective: Literal["mlm", "clm"] = Field(
        ..., description="`mlm` masked-LM (BERT-style encoder) or `clm` next-token (decoder)."
    )
    corpus: list[str | CorpusSource] = Field(
        default_factory=list,
        description="Unlabeled text: files, folders or globs (.txt, .jsonl, .csv, .parquet), or "
        "{path, weight} entries.",
    )
    text_column: str = Field("text", description="Column holding the text in .jsonl/.csv/.parquet.")
    block_size: int = Field(
        128, ge=8, le=32768, description="Tokens per training block (documents are joined)."
    )
    mask_prob: float = Field(
        0.15,
        gt=0,
        lt=1,
        description="MLM: share of tokens masked (80% [MASK], 10% random, 10% kept).",
    )
    eval_fraction: float = Field(
        0.05, ge=0, lt=0.5, description="Share of documents held out for evaluation."
    )
    max_eval_blocks: int | None = Field(
        200, ge=1, description="Evaluate on at most this many held-out blocks; null = all."
    )
    cache_dir: Path | None = Field(
        None,
        description="Where token shards are cached; null = $TAILORML_CACHE_DIR (else "
        "~/.cache/tailorml)/shards.",
    )
    samples: int = Field(
        4,
        ge=0,
        le=32,
        description="Report: greedy continuations (clm) or masked predictions (mlm).",
    )
    peak_tflops: float | None = Field(
        None,
        gt=0,
        description="Peak dense TFLOPS of one device, for the logged model FLOPs utilisation "
        "(`mfu`); null = known GPUs by name (H100/H200 989, A100 312, ...), none on a CPU.",
    )


class TokenizerConfig(_Section):
    type: Literal["wordpiece", "bpe", "unigram"] | None = Field(
        None,
        description="From scratch only: tokenizer to train; null = wordpiece for mlm, "
        "byte-level bpe for clm.",
    )
    vocab_size: int = Field(8000, ge=1, description="From scratch only: vocabulary size.")
    min_frequency: int = Field(
        2, ge=1, description="From scratch only: a merge/piece must occur this often."
    )


class ImagesConfig(_Section):
    """How image-classification runs read and augment their images (tailorml/data/images.py)."""

    size: list[int] | None = Field(
        None,
        description="[height, width] every image is resized to; null = the first training "
        "image's size (an image of another size is then a bad row).",
    )
    grayscale: bool | None = Field(
        None, description="Read images as 1-channel; null = from the data (grayscale if all are)."
    )
    crop_padding: int = Field(
        2, ge=0, le=16, description="Augment: random crop after padding by N pixels; 0 = off."
    )
    flip: bool = Field(
        False,
        description="Augment: random horizontal flip (off by default: wrong for digits, text).",
    )
    erase: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Augment: random erasing, the share of training images given a rectangle "
        "of noise over 2-25% of their area; 0 = off.",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Training loss: label smoothing (eval loss is plain)."
    )
    tta_flip: bool = Field(
        False,
        description="Test-time augmentation: predict with the mean logits of the image and its "
        "mirror (evaluation, predict, serve, ONNX; twice the inference cost).",
    )
    channels_last: bool = Field(True, description="Run convolutions in channels-last layout.")


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
    images: ImagesConfig = Field(default_factory=ImagesConfig)  # type: ignore[arg-type]
    pretrain: PretrainConfig | None = Field(
        None,
        description="Self-supervised pretraining (`tailor pretrain`); null = not pretraining.",
    )
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)  # type: ignore[arg-type]
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
