"""The item tower's text encoder trained with the two-tower loss (`model.item_encoder`).

`frozen` (the default) embeds every item text once. `lora` adds LoRA adapters (peft, on every
Linear layer of the top `encoder_layers` transformer layers, as the engine's
`model.lora.target_modules: null` does for a whole encoder) and `finetune` trains those top
layers in full. Either way the lower layers stay frozen: they run once over every item text and
their token states are kept, so a training step runs only the top layers, on the texts of the
step's items; every item is re-encoded (batched, no grad) for validation and the index.
Mean pooling and L2 normalisation as `tailorml.models.sentence` (the same vectors as the frozen
encoder before any training). `save` writes a plain Hugging Face folder (LoRA merged), which
`add-items` reads to embed new items the way training did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tailorml.errors import ConfigError

MAX_LENGTH = 64  # as encode_texts: item texts are short


class ItemTextEncoder(nn.Module):
    def __init__(
        self,
        base: str,
        texts: list[str],
        mode: str,
        layers: int = 1,
        lora_r: int = 8,
        lora_alpha: float = 16.0,
        batch_size: int = 128,
    ):
        super().__init__()
        from tailorml.models.sentence import SentenceEncoder

        tok, model = SentenceEncoder(base, max_length=MAX_LENGTH).modules()
        blocks = getattr(getattr(model, "encoder", None), "layer", None)
        if not isinstance(blocks, nn.ModuleList) or not hasattr(model, "embeddings"):
            raise ConfigError(
                f"`model.item_encoder: {mode}` needs a BERT-style encoder (embeddings + "
                f"encoder.layer); {base!r} is a {type(model).__name__}. Use `item_encoder: "
                "frozen` with it."
            )
        self.tok, self.model, self.mode = tok, model, mode
        self.batch_size = batch_size
        k = min(layers, len(blocks))
        self.n_lower = len(blocks) - k
        model.eval()
        model.requires_grad_(False)
        if mode == "lora":
            from peft import LoraConfig, get_peft_model

            from tailorml.models.lora import _quiet, resolve_targets

            top = [f"encoder.layer.{i}" for i in range(self.n_lower, len(blocks))]
            targets = [
                t for t in resolve_targets(model, None, []) if any(t.startswith(p) for p in top)
            ]
            config = LoraConfig(
                r=lora_r,
                lora_alpha=lora_alpha,  # type: ignore[arg-type]  # annotated int; used as alpha / r
                lora_dropout=0.0,
                target_modules=targets,
            )
            with _quiet():
                self.peft = get_peft_model(model, config)
        elif mode == "finetune":
            for block in blocks[self.n_lower :]:
                block.requires_grad_(True)
        else:
            raise ConfigError(f"`model.item_encoder`: {mode!r} is not lora or finetune.")
        self.top = blocks[self.n_lower :]
        self._cache(texts)

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, v in state.items():
                params[n].copy_(v)

    @torch.no_grad()
    def _cache(self, texts: list[str]) -> None:
        """The lower layers' token states of every text (padding dropped), kept flat."""
        from transformers.masking_utils import create_bidirectional_mask

        chunks: list[torch.Tensor] = [torch.zeros(0)] * len(texts)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for s in range(0, len(texts), self.batch_size):
            idx = order[s : s + self.batch_size]
            batch = self.tok(
                [texts[j] for j in idx],
                padding=True,
                truncation=True,
                max_length=MAX_LENGTH,
                return_tensors="pt",
            )
            h = self.model.embeddings(
                input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids")
            )
            mask = create_bidirectional_mask(
                config=self.model.config, inputs_embeds=h, attention_mask=batch["attention_mask"]
            )
            for block in self.model.encoder.layer[: self.n_lower]:
                h = block(h, mask)
            for row, j in enumerate(idx):
                chunks[j] = h[row, : int(batch["attention_mask"][row].sum())].clone()
        self.lengths = torch.tensor([len(c) for c in chunks])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])
        self.states = torch.cat(chunks)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(len(idx), hidden) unit-length embeddings of the items `idx`, through the top layers."""
        from transformers.masking_utils import create_bidirectional_mask

        lengths = self.lengths[idx]
        width = int(lengths.max())
        mask2d = torch.arange(width)[None, :] < lengths[:, None]
        rows = torch.arange(len(idx)).repeat_interleave(lengths)
        starts = (lengths.cumsum(0) - lengths).repeat_interleave(lengths)
        cols = torch.arange(int(lengths.sum())) - starts  # each token's place in its text
        src = self.offsets[idx].repeat_interleave(lengths) + cols  # and in the cache
        h = self.states.new_zeros(len(idx), width, self.states.shape[1])
        h[rows, cols] = self.states[src]
        mask = create_bidirectional_mask(
            config=self.model.config, inputs_embeds=h, attention_mask=mask2d.long()
        )
        for block in self.top:
            h = block(h, mask)
        m = mask2d.unsqueeze(-1).to(h.dtype)
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(mean, p=2, dim=1)

    @torch.no_grad()
    def encode_all(self) -> torch.Tensor:
        """Every item, batched by similar length, no grad."""
        n = len(self.lengths)
        out = torch.zeros(n, self.states.shape[1])
        order = torch.from_numpy(np.argsort(self.lengths.numpy(), kind="stable"))
        for s in range(0, n, self.batch_size):
            idx = order[s : s + self.batch_size]
            out[idx] = self(idx)
        return out

    def save(self, folder: Path) -> None:
        """A plain Hugging Face folder (LoRA merged into the weights) with its tokenizer."""
        model: Any = self.model
        if self.mode == "lora":
            import copy

            model = copy.deepcopy(self.peft).merge_and_unload()
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(folder))
        self.tok.save_pretrained(str(folder))
