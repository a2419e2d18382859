"""What `tailor compress` is asked for: one typed object, every field documented.

The same fields come from flags (`tailor compress RUN --budget 0.5`) or a YAML file
(`tailor compress RUN --config compress.yaml`; flags win), and `tailor config schema compress`
prints them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

# A generation run (a causal LM) is compressed by its own path (tailorml/compress/generation.py):
# the fp32 reference and these variants only.
GENERATION_VARIANTS = ("torch-int8", "torch-int8-mixed")
# Options that apply to one family only: giving one for the other family is an error.
GENERATION_ONLY = ("max_ppl_increase", "prompts", "new_tokens", "ppl_rows")
CLASSIFIER_ONLY = (
    "budget",
    "latency_texts",
    "prune_heads",
    "prune_ffn",
    "recovery_epochs",
    "student_layers",
    "distill_epochs",
    "distill_temperature",
    "distill_alpha",
    "distill_hidden_weight",
    "distill_attention_weight",
    "train_threads",
    "train_limit",
    "keep_work",
    "vocab_margin",
    "prune_steps",
    "prune_target_params",
)

VARIANTS = (
    "torch-int8",
    "onnx-fp32",
    "onnx-int8",
    # static int8: activation ranges calibrated on training texts (tailorml/compress/onnx_export.py)
    "onnx-int8-static",
    "pruned",
    "pruned-onnx-int8",
    "distilled",
    "distilled-onnx-int8",
    # vocabulary trimming (tailorml/compress/vocab.py), alone and combined with int8
    "trimmed",
    "trimmed-onnx-int8",
    "pruned-trimmed-onnx-int8",
    "distilled-trimmed-onnx-int8",
)


class CompressOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    budget: float = Field(
        default=1.0,
        ge=0,
        description="Classifier runs: largest accuracy drop allowed, in points (1.0 = 1%).",
    )
    variants: list[str] | None = Field(
        default=None,
        description="Variants to build, e.g. [onnx-int8] or `onnx-int8,torch-int8`; null = all: "
        + ", ".join(VARIANTS)
        + "; a generation run: "
        + ", ".join(GENERATION_VARIANTS)
        + ".",
    )
    threads: int = Field(default=1, ge=1, description="Threads for every measurement (pinned).")
    repeats: int = Field(default=3, ge=1, description="Timed repetitions (medians are reported).")
    latency_texts: int = Field(default=100, ge=1, description="Eval texts timed per repetition.")
    data: Path | None = Field(
        default=None,
        description="Labeled eval file (generation runs: rows with the run's prompt and "
        "response columns); null = the run's own eval split.",
    )
    prune_heads: float = Field(
        default=0.25, ge=0, lt=1, description="Share of attention heads removed per layer (pruned)."
    )
    prune_ffn: float = Field(
        default=0.5, ge=0, lt=1, description="Share of FFN neurons removed per layer (pruned)."
    )
    recovery_epochs: float = Field(
        default=1.0,
        gt=0,
        description="Fine-tuning epochs after pruning (pruned); with several prune steps, "
        "shared between them.",
    )
    prune_steps: int = Field(
        default=1,
        ge=1,
        description="Pruned: reach the shares in this many steps (prune a little, recover, "
        "recompute importance, repeat); each step keeps the same share of what is left and "
        "recovers for recovery_epochs / prune_steps epochs. 1 = one shot.",
    )
    prune_target_params: int | None = Field(
        default=None,
        ge=1,
        description="Pruned: the parameter count to reach (the whole model's); sets one share "
        "of heads and FFN neurons to remove in every layer, in place of prune_heads and "
        "prune_ffn.",
    )
    student_layers: int | None = Field(
        default=None,
        ge=1,
        description="Layers of the distilled student; null = a third of the teacher's (at "
        "least 1): 2 of MiniLM's 6.",
    )
    distill_epochs: float = Field(default=6.0, gt=0, description="Distillation epochs (distilled).")
    distill_temperature: float = Field(
        default=2.0,
        gt=0,
        description="Softmax temperature of the teacher's soft labels (distilled).",
    )
    distill_alpha: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Weight of the soft-label loss; the rest on gold labels.",
    )
    distill_hidden_weight: float = Field(
        default=1.0,
        ge=0,
        description="Distilled: weight of the hidden-state loss (MSE between each student "
        "layer's output and its teacher layer's); 0 = off (soft and gold labels only).",
    )
    distill_attention_weight: float = Field(
        default=1.0,
        ge=0,
        description="Distilled: weight of the attention-map loss (KL between the matched "
        "layers' attention distributions); 0 = off.",
    )
    train_threads: int | None = Field(
        default=None,
        ge=1,
        description="Threads for recovery/distillation training; null = all cores.",
    )
    train_limit: int | None = Field(
        default=None,
        ge=1,
        description="Train pruned/distilled on the first N rows only (quick runs).",
    )
    vocab_margin: int = Field(
        default=5000,
        ge=0,
        description="Trimmed variants: besides the tokens of the training texts, every special "
        "token and every single character, keep the first N ids of the base vocabulary (BERT's "
        "WordPiece lists its most frequent words first).",
    )
    keep_work: bool = Field(
        default=False, description="Keep compressed/.work (the recovery and distillation runs)."
    )
    # Generation runs (a causal LM): the budget is on perplexity, speed is in tokens/s.
    max_ppl_increase: float = Field(
        default=5.0,
        ge=0,
        allow_inf_nan=False,
        description="Generation runs: largest rise in eval perplexity allowed, in percent of "
        "fp32's (5.0 = 5%; 0 = no rise).",
    )
    prompts: int = Field(
        default=8,
        ge=1,
        description="Generation runs: eval prompts timed (batch 1: each alone; batch 8: in "
        "groups of 8).",
    )
    new_tokens: int = Field(
        default=32,
        ge=1,
        description="Generation runs: tokens generated per prompt when timing (greedy; the end "
        "of turn is suppressed, so every variant generates as many).",
    )
    ppl_rows: int | None = Field(
        default=None,
        ge=1,
        description="Generation runs: perplexity on the first N eval rows only; null = all.",
    )

    @field_validator("variants", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        """`onnx-int8,torch-int8` (a flag) or a list, possibly of comma-joined items."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            flat = [n.strip() for item in value for n in str(item).split(",") if n.strip()]
            return flat or None
        return value
