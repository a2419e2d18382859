"""Sentence embeddings from an encoder: mean pooling over the tokens, then L2 normalisation.

This is sentence-transformers' recipe for all-MiniLM-L6-v2 (the packaged encoder's modules.json:
Transformer (max_seq_length 256) -> Pooling (mean of the token states, padding masked out) ->
Normalize), written with transformers alone, so that cosine similarity is a dot product.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tailorml.models.base import load_tokenizer, quiet_transformers, resolve_base

# all-MiniLM-L6-v2's sentence_bert_config.json: longer inputs are cut, as in sentence-transformers.
MAX_LENGTH = 256


class SentenceEncoder:
    """`encode(texts) -> (n, hidden) float32`, each row of unit length.

    `base`: `minilm` (the packaged encoder), a local Hugging Face folder, or `tiny` (a random
    2-layer BERT for tests: fast, meaningless vectors). Weights load on the first `encode`.
    `threads`: torch's intra-op threads (None: leave as set by the process)."""

    def __init__(
        self,
        base: str = "minilm",
        max_length: int = MAX_LENGTH,
        batch_size: int = 64,
        threads: int | None = None,
        tiny_hidden_size: int = 32,
    ):
        self.base = base
        self.max_length = max_length
        self.batch_size = batch_size
        self.threads = threads
        self.tiny_hidden_size = tiny_hidden_size
        self._model: Any = None
        self._tok: Any = None

    def spec(self) -> dict[str, Any]:
        """What rebuilds this encoder (stored next to an index built with it)."""
        return {"base": self.base, "max_length": self.max_length}

    @property
    def dim(self) -> int:
        self._load()
        return int(self._model.config.hidden_size)

    def modules(self) -> tuple[Any, Any]:
        """(tokenizer, model), loaded on first use: for a caller that trains the encoder."""
        self._load()
        return self._tok, self._model

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModel, BertConfig, BertModel

        quiet_transformers()
        path = resolve_base(self.base)
        self._tok = load_tokenizer(path)
        if path is None:
            torch.manual_seed(0)  # the same random `tiny` encoder in every process
            h = self.tiny_hidden_size
            config = BertConfig(
                vocab_size=len(self._tok),
                hidden_size=h,
                num_hidden_layers=2,
                num_attention_heads=max(1, h // 16),
                intermediate_size=h * 2,
                pad_token_id=self._tok.pad_token_id,
            )
            self._model = BertModel(config, add_pooling_layer=False)
        else:
            self._model = AutoModel.from_pretrained(str(path))
        self._model.eval()

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        self._load()
        if self.threads:
            torch.set_num_threads(self.threads)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Similar lengths share a batch: padding a short text to a long one wastes its compute.
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                idx = order[i : i + self.batch_size]
                batch = self._tok(
                    [texts[j] for j in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                out[idx] = embed(self._model, batch).float().numpy()
        return out


def embed(model: Any, batch: Any) -> Any:
    """Unit-length mean-pooled sentence vectors (batch, hidden) of a tokenized batch; keeps the
    autograd graph (a trainer calls it too; `encode` runs it under inference mode)."""
    import torch

    states = model(**batch).last_hidden_state  # (batch, seq, hidden)
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)  # (batch, seq, 1)
    mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (batch, hidden)
    return torch.nn.functional.normalize(mean, p=2, dim=1)
