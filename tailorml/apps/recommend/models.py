"""The text-aware recommender (torch).

Item tower: the packaged encoder's sentence embedding of the item's text (frozen, computed once),
through a trainable adapter (linear projection + residual MLP), plus a learned id vector for items
that have training events; a cold item is scored through its text alone.
User tower: a small causal transformer (SASRec-like) over the recent history of item vectors.
Training: next-item prediction at every position, cosine scores over a temperature, softmax over
every item (`softmax: full`, the default up to 50,000 items) or over the batch's targets (in-batch
negatives) and uniformly sampled items, each logit corrected by log Q (the log of the expected
count of that item in the candidate set).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from tailorml.apps.recommend.config import FULL_SOFTMAX_MAX_ITEMS, ModelConfig
from tailorml.errors import TailorError


class TwoTower(nn.Module):
    def __init__(self, text: torch.Tensor, has_id: torch.Tensor, cfg: ModelConfig):
        super().__init__()
        n, width = text.shape
        d = cfg.dim
        self.max_history = cfg.max_history
        self.heads = cfg.heads
        self.id_dropout = cfg.id_dropout
        self.register_buffer("text", text.float())
        self.register_buffer("has_id", has_id.float())
        self.proj = nn.Linear(width, d)
        self.adapter = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.n_ids = n  # items with an id row (added items have none: text only)
        self.ids = nn.Embedding(n + 1, d, padding_idx=n) if cfg.id_embeddings else None
        if self.ids is not None:
            nn.init.normal_(self.ids.weight, std=0.02)
            with torch.no_grad():
                self.ids.weight[n].zero_()
        self.pos = nn.Embedding(cfg.max_history, d)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            d, cfg.heads, 2 * d, cfg.dropout, batch_first=True, norm_first=True
        )
        self.blocks = (
            nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
            if cfg.layers
            else None
        )
        self.norm = nn.LayerNorm(d)

    @property
    def n_items(self) -> int:
        return int(self.text.shape[0])

    def item_vectors(
        self, idx: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unnormalised item vectors (the pad index n gives zeros). `text`: the item texts'
        embeddings to use instead of the buffer (an encoder being trained). In training mode
        each id vector is dropped with probability `id_dropout`."""
        n = self.n_items
        if idx is None:
            idx = torch.arange(n, device=self.text.device)
        safe = idx.clamp(max=n - 1)
        z = self.proj((self.text if text is None else text)[safe])
        z = z + self.adapter(z)
        if self.ids is not None:
            id_idx = torch.where(idx < self.n_ids, idx, torch.full_like(idx, self.n_ids))
            keep = self.has_id[safe]
            if self.training and self.id_dropout > 0:
                keep = keep * (torch.rand(keep.shape) >= self.id_dropout).to(keep.dtype)
            z = z + self.ids(id_idx) * keep.unsqueeze(-1)
        return z * (idx < n).unsqueeze(-1).to(z.dtype)

    def extend(self, text: torch.Tensor) -> None:
        """Add items known by their text alone (no id vector)."""
        self.text: torch.Tensor = torch.cat([self.text, text.float()])
        self.has_id: torch.Tensor = torch.cat([self.has_id, torch.zeros(len(text))])

    def users(self, seq: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """(b, L) item indices, left-padded with n -> (b, L, d) states (position t saw <= t)."""
        b, length = seq.shape
        x = self.item_vectors(seq, text) + self.pos(torch.arange(length, device=seq.device))[None]
        x = self.drop(x)
        if self.blocks is not None:
            x = self.blocks(x, mask=self.attention_mask(seq))
        return self.norm(x)

    def attention_mask(self, seq: torch.Tensor) -> torch.Tensor:
        """(b * heads, L, L), True = may not attend: later positions and padding. Each position
        may attend to itself, so no row is fully masked (a fully masked row is NaN in torch's
        fast inference path, and a NaN key poisons every query in the next layer)."""
        b, length = seq.shape
        pad = seq >= self.n_items
        eye = torch.eye(length, dtype=torch.bool)
        allowed = torch.tril(torch.ones(length, length, dtype=torch.bool))[None] & ~pad[:, None, :]
        blocked = ~(allowed | eye[None])
        return blocked.repeat_interleave(self.heads, dim=0)


def pad_left(seqs: list[np.ndarray], length: int, pad: int) -> np.ndarray:
    out = np.full((len(seqs), length), pad, dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            out[r, length - len(s) :] = s
    return out


def windows(seqs: list[np.ndarray], length: int) -> list[np.ndarray]:
    """Each sequence cut into windows of length+1 from its end (inputs [:-1], targets [1:])."""
    out = []
    for s in seqs:
        end = len(s)
        while end >= 2:
            out.append(s[max(0, end - length - 1) : end])
            end -= length
    return out


class TextRecommender:
    """sklearn-style: `fit(train_sequences, item_text, train_counts, valid=...)` returns self;
    `score(hist, seqs)` ranks every item; `user_vectors(seqs)` / `item_vectors_` for serving."""

    name = "text"

    def __init__(self, cfg: ModelConfig, seed: int = 0):
        self.cfg = cfg
        self.seed = seed
        self.net_: TwoTower | None = None
        self.item_vectors_: np.ndarray | None = None
        self.encoder_: Any = None  # the trained ItemTextEncoder (item_encoder lora/finetune)
        self.full_softmax = cfg.softmax == "full"  # set by fit (softmax auto: by catalogue size)

    def _net(self) -> TwoTower:
        if self.net_ is None:
            raise TailorError("TextRecommender is not fitted: call fit() or load() first.")
        return self.net_

    def fit(
        self,
        seqs: list[np.ndarray],
        text: np.ndarray,
        counts: np.ndarray,
        validate: Callable[[TextRecommender], float] | None = None,
        log: Callable[[str], None] = print,
        texts: list[str] | None = None,
    ) -> TextRecommender:
        """Train on next-item prediction with the encoder frozen (`text`: its embedding of each
        item); then, for `item_encoder` lora/finetune, `encoder_epochs` more with the encoder's
        top layers trained too (`texts`: the item texts). Early-stopped on `validate`."""
        cfg = self.cfg
        torch.manual_seed(self.seed)
        self._rng = np.random.default_rng(self.seed)
        has_id = torch.from_numpy(counts >= cfg.id_min_count)
        self.net_ = net = TwoTower(torch.from_numpy(text), has_id, cfg)
        self.full_softmax = cfg.softmax == "full" or (
            cfg.softmax == "auto" and net.n_items <= FULL_SOFTMAX_MAX_ITEMS
        )
        self._wins = windows(seqs, cfg.max_history)
        self._pop = counts / max(1, counts.sum())
        self._validate, self._log = validate, log
        self._best: tuple[float, dict[str, Any]] | None = None
        self.history_: list[dict[str, Any]] = []
        self.encoder_ = None
        self._started = time.time()
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self._epochs(opt, cfg.epochs, cfg.eval_every, None)
        if self._best is not None:
            self._restore(self._best[1])
        if cfg.item_encoder != "frozen":
            self._train_encoder(texts, seqs)
        if cfg.text_only_max_count is not None:
            with torch.no_grad():
                net.has_id[torch.from_numpy(counts <= cfg.text_only_max_count)] = 0.0
        self.train_seconds_ = time.time() - self._started
        self._refresh()
        return self

    def _train_encoder(self, texts: list[str] | None, seqs: list[np.ndarray]) -> None:
        from tailorml.apps.recommend.encoder import ItemTextEncoder

        cfg, net = self.cfg, self._net()
        if texts is None or len(texts) != net.n_items:
            raise TailorError("fit(): item_encoder lora/finetune needs every item's text.")
        t0 = time.time()
        enc = ItemTextEncoder(
            cfg.encoder, texts, cfg.item_encoder, cfg.encoder_layers, cfg.lora_r, cfg.lora_alpha
        )
        self._log(
            f"{cfg.item_encoder} item encoder: lower layers cached ({time.time() - t0:.0f} s)"
        )
        self.encoder_ = enc
        if self._best is not None:  # the frozen phase's best, with the encoder as it was
            self._best[1]["encoder"] = enc.trainable_state()
        if cfg.encoder_windows == "last":
            self._wins = [s[-cfg.max_history - 1 :] for s in seqs if len(s) >= 2]
        # The item tower's text path trains; the user tower and the id vectors stay as learnt.
        params = [*net.proj.parameters(), *net.adapter.parameters(), *enc.trainable()]
        opt = torch.optim.AdamW(params, lr=cfg.encoder_lr, weight_decay=cfg.weight_decay)
        before = self._best
        self._epochs(opt, cfg.encoder_epochs, 1, enc)
        if self._best is not None:
            self._restore(self._best[1])
        if before is not None and self._best is before:
            # The frozen phase stays best: the encoder is back as packaged, so the run keeps
            # the packaged one (no 88 MB copy of it in RUN/encoder; add-items uses the package).
            self._log("encoder phase did not beat the frozen model on valid: frozen kept")
            self.encoder_ = None

    def _epochs(self, opt: Any, epochs: int, every: int, enc: Any) -> None:
        """Train `epochs` passes (the encoder `enc` too, if given), validating every `every`."""
        cfg, net = self.cfg, self._net()
        phase = "" if enc is None else "encoder "
        bad_evals = 0
        for epoch in range(1, epochs + 1):
            net.train()
            order = self._rng.permutation(len(self._wins))
            total = 0.0
            for s in range(0, len(order), cfg.batch_size):
                batch = [self._wins[i] for i in order[s : s + cfg.batch_size]]
                loss = self._loss(batch, enc)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(batch)
            took = time.time() - self._started
            msg = f"{phase}epoch {epoch}: loss {total / len(self._wins):.4f} ({took:.0f} s)"
            if enc is not None:  # every item through the trained encoder
                net.text = enc.encode_all()
            if self._validate is not None and (epoch % every == 0 or epoch == epochs):
                self._refresh()
                ndcg = self._validate(self)
                name = epoch if enc is None else f"encoder {epoch}"
                self.history_.append({"epoch": name, "valid_ndcg": ndcg})
                msg += f", valid ndcg {ndcg:.4f}"
                if self._best is None or ndcg > self._best[0]:
                    self._best = (ndcg, self._snapshot())
                    bad_evals = 0
                else:
                    bad_evals += 1
            self._log(msg)
            if bad_evals >= cfg.patience:
                break

    def _loss(self, batch: list[np.ndarray], enc: Any) -> torch.Tensor:
        cfg, net = self.cfg, self._net()
        n = net.n_items
        # Padded to max_history as at scoring time: the same positions either way.
        arr = torch.from_numpy(pad_left(batch, cfg.max_history + 1, n))
        text = None
        if enc is not None:  # the step's items through the encoder, the others as last encoded
            used = torch.unique(arr[arr < n])
            text = net.text.index_copy(0, used, enc(used))
        inp, tgt = arr[:, :-1], arr[:, 1:]
        keep = (tgt < n) & (inp < n)
        h = nn.functional.normalize(net.users(inp, text)[keep], dim=-1)  # (P, d)
        t = tgt[keep]
        if enc is None and self.full_softmax:  # every item is a candidate: no correction
            v = nn.functional.normalize(net.item_vectors(), dim=-1)
            return nn.functional.cross_entropy(h @ v.T / cfg.temperature, t)
        cand, pos_of = torch.unique(t, return_inverse=True)
        if cfg.negatives:
            extra = torch.from_numpy(self._rng.integers(0, n, cfg.negatives))
            cand = torch.unique(torch.cat([cand, extra]))
            pos_of = torch.searchsorted(cand, t)
        # Expected count of each candidate in the set: batch targets + uniform draws.
        q = len(t) * self._pop[cand.numpy()] + cfg.negatives / n
        log_q = torch.from_numpy(np.log(np.clip(q, 1e-12, None))).float()
        v = nn.functional.normalize(net.item_vectors(cand, text), dim=-1)
        logits = h @ v.T / cfg.temperature - log_q
        return nn.functional.cross_entropy(logits, pos_of)

    def _snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"net": {k: v.clone() for k, v in self._net().state_dict().items()}}
        if self.encoder_ is not None:
            out["encoder"] = self.encoder_.trainable_state()
        return out

    def _restore(self, snap: dict[str, Any]) -> None:
        self._net().load_state_dict(snap["net"])
        if self.encoder_ is not None and "encoder" in snap:
            self.encoder_.load_trainable_state(snap["encoder"])

    @property
    def text_(self) -> np.ndarray:
        """The item texts' embeddings the model was trained to (the trained encoder's, if any)."""
        return self._net().text.numpy().astype(np.float32)

    def _refresh(self) -> None:
        net = self._net()
        net.eval()
        with torch.inference_mode():
            v = nn.functional.normalize(net.item_vectors(), dim=-1)
        self.item_vectors_ = v.numpy().astype(np.float32)

    def user_vectors(self, seqs: list[np.ndarray]) -> np.ndarray:
        net = self._net()
        net.eval()
        arr = torch.from_numpy(pad_left(seqs, self.cfg.max_history, net.n_items))
        with torch.inference_mode():
            h = net.users(arr)[:, -1]
        return nn.functional.normalize(h, dim=-1).numpy().astype(np.float32)

    def score(self, hist: sp.csr_matrix, seqs: list[np.ndarray], times: Any = None) -> np.ndarray:
        assert self.item_vectors_ is not None
        return self.user_vectors(seqs) @ self.item_vectors_.T

    def add_items(self, text: np.ndarray) -> None:
        """Items known by their text alone join the catalogue (and may appear in histories)."""
        self._net().extend(torch.from_numpy(text))
        self._refresh()

    # ---- folder ------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        net = self._net()
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        (folder / "model.json").write_text(
            json.dumps({"model": self.cfg.model_dump(), "n_items": net.n_items}, indent=2)
        )

    @classmethod
    def load(cls, folder: Path) -> TextRecommender:
        from safetensors.torch import load_file

        meta = json.loads((folder / "model.json").read_text())
        cfg = ModelConfig(**meta["model"])
        state = load_file(str(folder / "model.safetensors"))
        self = cls(cfg)
        self.net_ = TwoTower(state["text"], state["has_id"].bool(), cfg)
        self.net_.load_state_dict(state)
        self.net_.eval()
        self._refresh()
        return self


def encode_texts(texts: list[str], encoder: str, threads: int | None = None) -> np.ndarray:
    """Unit-length sentence embeddings of the item texts (the packaged encoder by default)."""
    from tailorml.models.sentence import SentenceEncoder

    return SentenceEncoder(encoder, max_length=64, threads=threads).encode(texts)


def activity_buckets(lengths: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Users split by history length at fixed edges (for the report)."""
    edges = [0, 20, 50, 100, 200, 500, math.inf]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (lengths >= lo) & (lengths < hi)
        if m.any():
            out.append((f"{lo}-{hi - 1:g}" if hi != math.inf else f"{lo}+", m))
    return out
