"""What `tailor compress` is asked for: one typed object, every field documented.

The same fields come from flags (`tailor compress RUN --budget 0.5`) or a YAML file
(`tailor compress RUN --config compress.yaml`; flags win), and `tailor config schema compress`
prints them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

VARIANTS = (
    "torch-int8",
    "onnx-fp32",
    "onnx-int8",
    "pruned",
    "pruned-onnx-int8",
    "distilled",
    "distilled-onnx-int8",
)


class CompressOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    budget: float = Field(
        default=1.0, ge=0, description="Largest accuracy drop allowed, in points (1.0 = 1%)."
    )
    variants: list[str] | None = Field(
        default=None,
        description="Variants to build, e.g. [onnx-int8] or `onnx-int8,torch-int8`; null = all: "
        + ", ".join(VARIANTS)
        + ".",
    )
    threads: int = Field(default=1, ge=1, description="Threads for every measurement (pinned).")
    repeats: int = Field(default=3, ge=1, description="Timed repetitions (medians are reported).")
    latency_texts: int = Field(default=100, ge=1, description="Eval texts timed per repetition.")
    data: Path | None = Field(
        default=None, description="Labeled eval file; null = the run's own eval split."
    )
    prune_heads: float = Field(
        default=0.25, ge=0, lt=1, description="Share of attention heads removed per layer (pruned)."
    )
    prune_ffn: float = Field(
        default=0.5, ge=0, lt=1, description="Share of FFN neurons removed per layer (pruned)."
    )
    recovery_epochs: float = Field(
        default=1.0, gt=0, description="Fine-tuning epochs after pruning (pruned)."
    )
    student_layers: int | None = Field(
        default=None,
        ge=1,
        description="Layers of the distilled student; null = half the teacher's.",
    )
    distill_epochs: float = Field(default=3.0, gt=0, description="Distillation epochs (distilled).")
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
    keep_work: bool = Field(
        default=False, description="Keep compressed/.work (the recovery and distillation runs)."
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
