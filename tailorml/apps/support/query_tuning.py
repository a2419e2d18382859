"""Contrastive fine-tuning of the dense retriever's *query* encoder on labelled questions.

The knowledge base's passage vectors stay as the index holds them (the packaged encoder, frozen);
a copy of the encoder learns to map each training question next to its article's passages:

    logits = question_vector · passage_vectors^T / temperature          (every passage of the base)
    loss   = -log( sum over the article's passages of softmax(logits) )  (several positives allowed)

Every passage of the knowledge base is a negative at every step (a help centre holds hundreds,
not millions: one (batch, passages) product), so there are no in-batch false negatives when two
questions of a batch share an article. Only the question side runs through the network, which
keeps a step as cheap as classifying a batch of short texts.

Why only the queries: the index is not rebuilt, and an article added later is embedded by the
same frozen encoder, in the space the tuned queries were trained to point into. The tuned
encoder is saved as an ordinary transformers folder (safetensors + tokenizer) that
`SentenceEncoder(folder)` loads; `DenseRetriever(query_encoder=...)` searches with it.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tailorml.apps.support.knowledge import Passage
from tailorml.errors import ConfigError


def tune_query_encoder(
    base: str,
    passages: Sequence[Passage],
    questions: Sequence[str],
    doc_ids: Sequence[str | None],
    out_dir: str | Path,
    *,
    epochs: float = 2.0,
    lr: float = 3e-5,
    batch_size: int = 32,
    temperature: float = 0.05,
    max_length: int = 64,
    seed: int = 0,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train a query encoder from `base` (`minilm`, a folder, `tiny`) so that each question
    ranks its article (`doc_ids`, one per question; None: not used) first among `passages`.
    Writes the encoder to `out_dir` (atomically: a temporary folder renamed) and returns what
    happened: questions used and skipped, steps, seconds, the first and last logged loss."""
    import torch

    from tailorml.apps.support.retrieval import _indexed
    from tailorml.models.sentence import SentenceEncoder, embed

    if len(questions) != len(doc_ids):
        raise ValueError(f"{len(questions)} questions but {len(doc_ids)} article ids")
    if epochs <= 0 or lr <= 0 or batch_size < 1 or temperature <= 0:
        raise ConfigError(
            f"query tuning: epochs = {epochs}, lr = {lr}, batch_size = {batch_size}, "
            f"temperature = {temperature}: all must be positive."
        )
    doc_rows: dict[str, list[int]] = {}
    for j, p in enumerate(passages):
        doc_rows.setdefault(p.doc_id, []).append(j)
    used = [(q, d) for q, d in zip(questions, doc_ids, strict=True) if d in doc_rows]
    if not used:
        raise ConfigError(
            "query tuning: no training question maps to an article of the knowledge base. "
            "Name each article after the intent it answers (the file `card_arrival.md` for the "
            "intent `card_arrival`), or turn query tuning off."
        )
    if threads:
        torch.set_num_threads(threads)

    # The passages' vectors, from the encoder as the index uses it (before any step: frozen).
    encoder = SentenceEncoder(base, threads=threads)
    targets = torch.from_numpy(encoder.encode([_indexed(p) for p in passages]))  # (P, dim)
    positive = torch.zeros(len(used), len(passages), dtype=torch.bool)  # (questions, P)
    for i, (_, d) in enumerate(used):
        positive[i, doc_rows[str(d)]] = True

    torch.manual_seed(seed)
    tok, model = encoder.modules()  # the same weights learn from here on
    model.train()
    steps_per_epoch = math.ceil(len(used) / batch_size)
    total = max(1, math.ceil(epochs * steps_per_epoch))
    warmup = max(1, round(0.06 * total))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    step, t0 = 0, time.perf_counter()
    while step < total:
        order = rng.permutation(len(used))
        for start in range(0, len(order), batch_size):
            if step >= total:
                break
            idx = order[start : start + batch_size]
            batch = tok(
                [used[i][0] for i in idx],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            logits = embed(model, batch) @ targets.T / temperature  # (batch, P)
            pos = positive[torch.as_tensor(idx)]
            loss = (
                torch.logsumexp(logits, dim=1)
                - torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
            ).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            losses.append(float(loss.detach()))
            if log and (step % 50 == 0 or step == total):
                log(f"  query tuning step {step}/{total}: loss {np.mean(losses[-50:]):.4f}")
    seconds = time.perf_counter() - t0

    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.eval()
    model.save_pretrained(str(tmp))  # safetensors
    tok.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    head = min(len(losses), 20)
    return {
        "base": base,
        "questions": len(used),
        "skipped": len(questions) - len(used),
        "passages": len(passages),
        "epochs": epochs,
        "steps": total,
        "lr": lr,
        "batch_size": batch_size,
        "temperature": temperature,
        "train_seconds": round(seconds, 2),
        "loss_first": round(float(np.mean(losses[:head])), 4),
        "loss_last": round(float(np.mean(losses[-head:])), 4),
    }
