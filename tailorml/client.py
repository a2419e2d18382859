"""A small client for `tailor serve`.

    from tailorml.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as c:
        c.predict(["$TSLA misses deliveries", "Fed holds rates"])
        # [{"label": "negative", "score": 0.93, "scores": {...}}, ...]

Long lists are split into requests of at most the server's `max_inputs`. Answers that mean "try
again" (429 queue full, 503 loading or draining, a connection refused or closed before any answer
came) are retried with backoff (doubling, capped at `backoff_max_s`) — a prediction is a pure
function, so retrying never duplicates an effect. Every other refusal raises `ServiceError`
carrying the server's message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from tailorml.errors import TailorError
from tailorml.retry import Backoff, call_with_retry, parse_retry_after

RETRY_STATUS = {429, 503}


class ServiceError(TailorError):
    """The service refused a request (status and its message) or could not be reached."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Client:
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        backoff_s: float = 0.1,
        chunk_size: int | None = None,
        backoff_max_s: float = 5.0,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._chunk = chunk_size
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._model: dict[str, Any] | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- endpoints -------------------------------------------------------------------------------

    def model(self) -> dict[str, Any]:
        """The served model's card: task, labels, variant, version, max_length, pair, limits."""
        if self._model is None:
            self._model = dict(self._request("GET", "/v1/models")["models"][0])
        return self._model

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def predict(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """One prediction per text, in order."""
        return list(self.iter_predict(texts, pairs))

    def iter_predict(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        if pairs is not None and len(pairs) != len(texts):
            raise ServiceError(f"{len(texts)} texts but {len(pairs)} pairs; give one pair per text")
        size = self._chunk or int(self.model()["limits"]["max_inputs"])
        for start in range(0, len(texts), size):
            chunk: list[Any] = list(texts[start : start + size])
            if pairs is not None:
                chunk = [
                    {"text": t, "text_pair": p}
                    for t, p in zip(chunk, pairs[start : start + size], strict=True)
                ]
            yield from self._request("POST", "/v1/predict", json={"inputs": chunk})["predictions"]

    # -- transport -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        def once() -> Any:
            try:
                resp = self._http.request(method, path, **kw)
            except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                # Refused, or closed before any response (a draining replica): safe to retry.
                raise _TryAgain(f"cannot reach {self.url}{path}: {exc}") from None
            except httpx.TimeoutException:
                # Not retried: the server may still be working on it, and a second copy would
                # only queue behind the first.
                raise ServiceError(f"{self.url}{path}: no answer in time") from None
            if resp.status_code in RETRY_STATUS:
                after = parse_retry_after(resp.headers.get("retry-after"))
                raise _TryAgain(_message(resp), resp.status_code, after)
            if resp.status_code >= 400:
                raise ServiceError(_message(resp), resp.status_code)
            return resp.json()

        return call_with_retry(
            once,
            retry_on=_TryAgain,
            policy=Backoff(first_s=self.backoff_s, max_s=self.backoff_max_s),
            retries=self.retries,
            wait_for=lambda exc: getattr(exc, "retry_after", None),
        )


class _TryAgain(ServiceError):
    """A refusal that means "try again" (429, 503, no connection); after the last retry it
    reaches the caller as the ServiceError it is."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message, status)
        self.retry_after = retry_after


def _message(resp: httpx.Response) -> str:
    try:
        err = resp.json()["error"]
        return f"{resp.status_code} {err['type']}: {err['message']}"
    except Exception:
        return f"{resp.status_code}: {resp.text[:200]}"


def to_local_format(pred: dict[str, Any], top_k: int = 3) -> dict[str, Any]:
    """A served prediction in `tailor predict`'s local JSONL shape (label, score, top_k)."""
    if "scores" not in pred:
        return {k: v for k, v in pred.items() if v is not None}
    ranked = sorted(pred["scores"].items(), key=lambda kv: -kv[1])[:top_k]
    out = {
        "label": pred["label"],
        "score": pred["score"],
        "top_k": [{"label": k, "score": v} for k, v in ranked],
    }
    if "labels" in pred:
        out["labels"] = pred["labels"]
    return out
