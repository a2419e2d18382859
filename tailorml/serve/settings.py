"""Every knob of a serving process, in one typed object (passed to worker processes as JSON)."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

ENV_SETTINGS = "TAILORML_SERVE_SETTINGS"
ENV_API_KEY = "TAILORML_API_KEY"


class ServeSettings(BaseModel):
    """What `tailor serve` was asked for. Field docs double as `--help` text."""

    # A mistyped key in a --config file is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field(
        description="Model folder: a run folder, RUN_DIR/model or RUN_DIR/compressed/<variant>."
    )
    host: str = Field(
        "127.0.0.1", description="Interface to bind; 0.0.0.0 exposes it to the network."
    )
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    api_key: str | None = Field(
        None,
        description="Require `Authorization: Bearer KEY` (or `X-API-Key`) on /v1/* and /metrics.",
    )
    max_batch_size: int = Field(
        32, ge=1, le=1024, description="Most inputs run together; 1 = no batching."
    )
    max_wait_ms: float = Field(
        5.0, ge=0, le=10_000, description="Longest an input waits for others to fill a batch."
    )
    max_queue: int = Field(
        1024, ge=1, description="Inputs waiting for the model before new requests get 429."
    )
    timeout_s: float = Field(
        30.0, gt=0, description="Per-request deadline; past it the answer is 504."
    )
    max_inputs: int = Field(64, ge=1, description="Most inputs in one request (else 413).")
    max_chars: int = Field(20_000, ge=1, description="Most characters in one input (else 413).")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body in bytes (else 413)."
    )
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request line + headers in bytes (else 431 and the connection closes).",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a request's headers, counted from connecting "
        "(or from its first byte on a kept-alive connection); else 408 and close.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a request's body once its headers are in; "
        "else 408 and close.",
    )
    keepalive_timeout_s: float = Field(
        5.0, gt=0, le=3600, description="Seconds an idle kept-alive connection stays open."
    )
    max_connections: int = Field(
        256,
        ge=1,
        description="Most open connections per worker; one more is answered 503 at once and "
        "closed. Each may hold up to max_body_bytes while its body is read.",
    )
    max_new_tokens: int = Field(
        512,
        ge=1,
        le=100_000,
        description="Generation models: most new tokens one request may ask for (else 413); a "
        "request that names none gets min(128, this).",
    )
    max_prompt_tokens: int = Field(
        2048,
        ge=1,
        le=1_000_000,
        description="Generation models: most tokens in a templated prompt (else 413).",
    )
    workers: int = Field(1, ge=1, le=64, description="Worker processes sharing the port.")
    threads: int | None = Field(
        None, ge=1, description="Inference threads per worker; default: cores // workers."
    )

    def worker_threads(self) -> int:
        if self.threads:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.workers)

    def to_env(self) -> str:
        # The API key travels separately (TAILORML_API_KEY) so it is never written into a JSON blob.
        return self.model_dump_json(exclude={"api_key"})

    @classmethod
    def from_env(cls) -> ServeSettings:
        raw = os.environ.get(ENV_SETTINGS)
        if not raw:
            raise RuntimeError(f"{ENV_SETTINGS} is not set; start the service with `tailor serve`.")
        settings = cls.model_validate_json(raw)
        settings.api_key = os.environ.get(ENV_API_KEY) or None
        return settings
