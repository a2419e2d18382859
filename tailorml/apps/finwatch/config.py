"""The finwatch config: one YAML file (configs/finwatch*.yaml), typed, every field documented."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tailorml.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DetectorParams(_Section):
    alpha: float = Field(0.1, gt=0, le=1, description="EWMA weight of the newest window.")
    z_on: float = Field(3.5, gt=0, description="z-score at which a surge starts (an alert fires).")
    z_off: float = Field(1.0, ge=0, description="z-score below which a surge ends (hysteresis).")
    z_count_on: float = Field(
        5.0, ge=0, description="z of the negative count that also starts a surge; 0 = share only."
    )
    min_volume: int = Field(10, ge=1, description="Fewest events in a window to judge it.")
    min_negative: int = Field(6, ge=1, description="Fewest negative events in a window to alert.")
    cooldown: int = Field(4, ge=0, description="Windows after an alert during which none fires.")
    warmup: int = Field(6, ge=0, description="Judged windows needed before any alert.")
    min_std: float = Field(0.03, gt=0, description="Floor of the baseline std of negative share.")
    prior_windows: float = Field(
        3.0,
        ge=0,
        description="Weight, in judged windows, of the pooled baseline (all topics) in a topic's "
        "own baseline: the prior of a topic with little history.",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> DetectorParams:
        if self.z_off > self.z_on:
            raise ValueError(
                f"detector.z_off ({self.z_off}) is above detector.z_on ({self.z_on}); "
                "a surge must end below where it starts. Lower z_off."
            )
        return self


class WebhookConfig(_Section):
    url: str | None = Field(None, description="POST each alert here as JSON; null = no webhook.")
    timeout_s: float = Field(5.0, gt=0, description="Seconds to wait for the receiver.")
    backoff_s: float = Field(1.0, gt=0, description="First retry delay; doubles per attempt.")
    backoff_max_s: float = Field(300.0, gt=0, description="Longest delay between retries.")
    max_attempts: int = Field(1000, ge=1, description="Give up on an alert after this many.")


class ModelsConfig(_Section):
    scorer: Literal["model", "labels"] = Field(
        "model",
        description="`model` scores texts with the model(s); `labels` trusts the `labels` field "
        "of each event (replayed labeled streams, to test the detector alone).",
    )
    model: Path | None = Field(
        None,
        description="One multi-task model folder with a topic and a sentiment head "
        "(`tailor finwatch train` writes it; RUN_DIR/model or RUN_DIR/compressed/<variant>).",
    )
    url: str | None = Field(
        None,
        description="Or score through a `tailor serve` service of such a model, e.g. "
        "http://127.0.0.1:8000 (API key from $TAILORML_API_KEY).",
    )
    topic_head: str = Field("topic", description="Head of `model` that gives the topic.")
    sentiment_head: str = Field("sentiment", description="Head of `model` giving the sentiment.")
    topic: Path | None = Field(
        None, description="Or two models: a topic model folder (used when `model` is not set)."
    )
    sentiment: Path | None = Field(None, description="... and a sentiment model folder.")
    negative_label: str = Field("Bearish", description="Sentiment label counted as negative.")
    positive_label: str = Field("Bullish", description="Sentiment label counted as positive.")
    threads: int | None = Field(None, ge=1, description="Inference threads; null = all cores.")
    parallel: bool = Field(
        True,
        description="Split the work over the threads: length-sorted chunks side by side "
        "(one model) or the two models side by side.",
    )
    chunk_size: int = Field(
        4, ge=1, description="Texts per model call: a micro-batch is sorted by length and cut."
    )
    calibrated: bool = Field(
        True,
        description="Divide the sentiment logits by the temperature in the model folder's "
        "calibration.json (`tailor finwatch calibrate`); false = the raw softmax.",
    )


class FinwatchConfig(_Section):
    db: str = Field("sqlite:///runs/finwatch/finwatch.db", description="SQLAlchemy database URL.")
    models: ModelsConfig = Field(default_factory=ModelsConfig)  # type: ignore[arg-type]
    windows: list[int] = Field(
        [900, 3600], description="Trend window lengths in seconds (e.g. 15 min and 1 h)."
    )
    detect_window: int = Field(900, gt=0, description="Window length (s) the surge detector uses.")
    detect_on: Literal["probability", "label"] = Field(
        "label",
        description="`label` (default): the count of events whose top sentiment is negative "
        "(argmax); `probability`: the expected negative count and share (sums of the model's "
        "p_negative, with their variance) — measured worse on a real model "
        "(docs/benchmarks-finwatch.md). Replayed labels give the same either way.",
    )
    lateness_s: float = Field(
        60.0, ge=0, description="A window closes this long after the newest event passes its end."
    )
    batch_size: int = Field(64, ge=1, description="Events scored per micro-batch.")
    batch_wait_s: float = Field(0.2, ge=0, description="Longest wait to fill a micro-batch.")
    max_future_s: float | None = Field(
        86400.0,
        ge=0,
        description="Dead-letter events timed this far past the clock (they would close windows "
        "early); null = accept any time.",
    )
    max_text_chars: int = Field(4000, ge=1, description="Longer texts are dead-lettered.")
    detector: DetectorParams = Field(default_factory=DetectorParams)  # type: ignore[arg-type]
    per_topic: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Detector overrides per topic, e.g. {Macro: {z_on: 4}}."
    )
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)  # type: ignore[arg-type]
    evidence_events: int = Field(50, ge=1, description="Most event ids attached to an alert.")
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest HTTP request body (POST /v1/events) in bytes; larger gets 413.",
    )

    @model_validator(mode="after")
    def _windows(self) -> FinwatchConfig:
        if self.detect_window not in self.windows:
            raise ValueError(
                f"detect_window ({self.detect_window}) is not one of windows {self.windows}; "
                "add it to windows."
            )
        m = self.models
        two = m.topic is not None and m.sentiment is not None
        if m.scorer == "model" and m.model is None and m.url is None and not two:
            raise ValueError(
                "models.scorer is `model` but no model is set: give models.model (the multi-task "
                "folder `tailor finwatch train` writes), models.url (a `tailor serve` service of "
                "it), or models.topic and models.sentiment; or use scorer: labels."
            )
        for topic, over in self.per_topic.items():
            try:
                DetectorParams(**{**self.detector.model_dump(), **over})
            except ValidationError as exc:
                from tailorml.config.load import describe_validation_error

                found = describe_validation_error(exc, DetectorParams, hint="")
                raise ValueError(f"per_topic.{topic}: {' '.join(found)}") from None
        return self

    def params_for(self, topic: str) -> DetectorParams:
        over = self.per_topic.get(topic)
        return DetectorParams(**{**self.detector.model_dump(), **over}) if over else self.detector


FINWATCH_KEYS_HINT = "The keys are in configs/finwatch.yaml and docs/finwatch.md (Config)."


def load_finwatch_config(
    path: str | Path | None, overrides: list[str] | None = None
) -> FinwatchConfig:
    from tailorml.config.load import apply_overrides, describe_validation_error, read_yaml

    raw: dict[str, Any] = read_yaml(Path(path)) if path else {}
    raw = raw.get("finwatch", raw)  # configs/ nest it under `finwatch:` (not a run config)
    raw = apply_overrides(raw, overrides or [])
    try:
        return FinwatchConfig(**raw)
    except ValidationError as exc:
        # The run config's wording, suggestions included (`Unknown key detector.z_onn. Did you
        # mean detector.z_on?`); keys are shown as overrides spell them, without `finwatch.`.
        raise ConfigError(
            describe_validation_error(exc, FinwatchConfig, FINWATCH_KEYS_HINT)
        ) from None
