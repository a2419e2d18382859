"""A contrastive stage in place of fine-tuning, for a few labeled rows per class.

With a few dozen rows per label, fine-tuning the whole classifier with the task's loss learns
from very little signal per step and stops on an eval split too small to judge it. Here the
encoder is trained instead for a fixed budget of steps with a supervised contrastive loss
(Khosla et al., 2020) on class-balanced batches (up to 16 labels, the same number of rows of
each): texts with the same label are pulled together, the others pushed apart, on the averaged
token states. The output layer is then fitted on the trained encoder's features as a regularised
linear model (train/probe.py, its L2 strength chosen on the eval split by the task's loss), and
that is the model: no fine-tuning with the task's loss follows. It is SetFit's recipe (Tunstall
et al., 2022: contrastive pairs, then a linear head) with in-batch positives and negatives.

Measured on four few-shot sets x 3 seeds (9 to 90 training rows per label), the stage with a
fitted output layer beat fine-tuning with the chosen defaults on all four, and the frozen-encoder
floor on every set and seed; on full Banking77 (~117 rows per label) it was level with
fine-tuning, and with a thousand rows per label the floor was 10 points under fine-tuning
(docs/benchmarks.md, "A contrastive stage before the output layer"). So `auto` turns it on at up
to 100 training rows per label. Measured in the engine afterwards ("The contrastive stage in the
engine"), on those four sets and two fresh draws (4.5 and 9 rows per label): ahead of
fine-tuning on five of six, by 3.9 points on the mean; behind on one (tweet topic, 10 per topic:
-0.8), and level with the floor, not above it, at 4-5 rows per label.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from tailorml.errors import ConfigError

STEPS = 200  # a fixed budget: a few hundred training rows see each row 20-50 times
LR = 2e-5
TEMPERATURE = 0.05
BATCH = 64
PER_LABEL = 4  # rows of each label in a batch (more when there are fewer than 16 labels)
MAX_ROWS_PER_LABEL = 100  # `auto`: on at up to this many training rows per label (mean)
LOG_EVERY = 10


def resolve(
    setting: bool | str, *, pretrained: bool, lora: bool, distill: bool, model_type: str | None,
    heads: list[Any], train_labels: dict[str, list[Any]], processes: int, pooling: str,
    set_keys: tuple[str, ...] = (),
) -> tuple[bool, str]:  # fmt: skip
    """(run the stage?, why) for `train.contrastive: setting`. `train_labels`: per head, the
    training rows' labels; `pooling`: `model.pooling` as set in the config; `set_keys`: the
    fine-tuning keys the config sets (`train.lr`, ...), which `auto` takes as asking to
    fine-tune. The stage fits the output layer itself, whatever `model.head_init` says."""
    reasons = []  # each rules the stage out
    if lora:
        reasons.append("LoRA trains adapters with the task's loss")
    if distill:
        reasons.append("a distilled student learns from its teacher's outputs")
    if model_type != "bert":
        reasons.append(f"it is built for BERT-family encoders, and this base is {model_type!r}")
    if len(heads) != 1:
        reasons.append("it trains one head, not a multi-task model")
    elif heads[0].kind.problem_type != "single_label_classification":
        reasons.append(f"it needs single-label classes, not a {heads[0].task} head")
    if processes > 1:
        reasons.append(f"it runs in one process, not {processes}")
    if pooling == "cls":
        reasons.append("it trains averaged token states, and `model.pooling` is cls")
    if setting is True and reasons:
        raise ConfigError(
            f"train.contrastive: true cannot apply here: {'; '.join(reasons)}. "
            "Set `train.contrastive: auto` (or false)."
        )
    if setting is False:
        return False, "set in the config"
    if reasons:
        return False, reasons[0]
    labels = next(iter(train_labels.values()))
    n_labels = len(set(labels))
    if n_labels < 2 and setting == "auto":
        return False, "the training rows have one label: nothing to contrast"
    if n_labels < 2:
        raise ConfigError(
            "train.contrastive: the training rows have one label; the stage contrasts labels. "
            "Add rows of other labels, or set `train.contrastive: false`."
        )
    per_label = len(labels) / n_labels
    if setting is True:
        return True, "set in the config"
    if set_keys:
        return False, f"the config sets {', '.join(set_keys)}: fine-tuning as configured"
    if not pretrained:
        return False, "a random encoder: the stage starts from a pretrained sentence encoder"
    if heads[0].data.get("text_pair_column"):
        return False, "text pairs: the stage was measured on single texts only"
    if per_label > MAX_ROWS_PER_LABEL:
        return False, (
            f"{per_label:.0f} training rows per label: above {MAX_ROWS_PER_LABEL}, fine-tuning "
            "with the task's loss does as well or better"
        )
    return True, (
        f"{per_label:.0f} training rows per label (at most {MAX_ROWS_PER_LABEL}): a contrastive "
        f"stage ({STEPS} steps) and a fitted output layer beat fine-tuning on few rows; "
        "train.lr, epochs and warmup do not apply"
    )


def other_family(what: str) -> str:
    """The problem of `train.contrastive: true` on a config that trains `what` (not a text
    classifier)."""
    return (
        f"train.contrastive: true trains text classifiers; this config trains {what}. Remove "
        "`train.contrastive` (or set false)."
    )


def check_config(cfg: Any, splits: dict[str, Any]) -> None:
    """`tailor validate`: would `train.contrastive: true` apply to this classifier config, whose
    heads' checked splits are `splits`? ConfigError naming the key when not."""
    from tailorml.models.base import base_model_type, resolve_base
    from tailorml.tasks.heads import data_heads

    heads = data_heads(cfg, {n: s.labels for n, s in splits.items()})
    path = resolve_base(cfg.model.base)
    resolve(
        cfg.train.contrastive,
        pretrained=path is not None,
        lora=cfg.model.lora is not None,
        distill=cfg.distill.teacher is not None,
        model_type=base_model_type(path),
        heads=heads,
        train_labels={h.name: splits[h.name].train.labels for h in heads},
        processes=1,
        pooling=cfg.model.pooling,
    )


def balanced_batch(by_label: dict[Any, list[int]], rng: random.Random) -> list[int]:
    """Row indices of one batch: up to `BATCH // PER_LABEL` labels drawn at random and
    `BATCH // labels` rows of each (all of a label's rows when it has fewer)."""
    labels = list(by_label)
    n_labels = min(len(labels), BATCH // PER_LABEL)
    k = BATCH // n_labels
    batch: list[int] = []
    for lab in rng.sample(labels, n_labels):
        rows = by_label[lab]
        batch += rng.sample(rows, min(k, len(rows)))
    return batch


def supcon_loss(z: Any, y: Any, temperature: float) -> Any:
    """Supervised contrastive loss of L2-normalised rows `z` with labels `y`: each row's mean
    log-probability of its same-label rows among all other rows of the batch (rows without a
    same-label partner count only as negatives; a batch with none gives a zero loss)."""
    import torch

    n = z.shape[0]
    sim = (z @ z.T) / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    positive = (y[:, None] == y[None, :]) & ~self_mask
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    log_prob = log_prob.masked_fill(self_mask, 0.0)
    counts = positive.sum(1)
    if not bool((counts > 0).any()):
        return (z * 0.0).sum()
    per_row = -(log_prob * positive).sum(1) / counts.clamp(min=1)
    return per_row[counts > 0].mean()


def train_encoder(
    encoder: Any, labels: list[Any], inputs_of: Callable[[list[int]], dict[str, Any]],
    seed: int, steps: int = STEPS,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    on_step: Callable[[int, float, float, int], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train `encoder` (a transformers base model: `last_hidden_state`) in place with the
    supervised contrastive loss on its unit-length averaged token states. `inputs_of(row
    indices)` gives the model inputs of those training rows; `labels[i]` is row i's label.
    `on_step(step, loss, lr, samples)` runs after each step. Returns the settings, the loss every
    `LOG_EVERY` steps and the seconds it took; leaves the encoder in eval mode."""
    import torch

    from tailorml.models.sentence import embed

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    by_label: dict[Any, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    if len(by_label) < 2:
        raise ValueError("a contrastive stage needs at least two labels in the training rows")
    opt = torch.optim.AdamW(encoder.parameters(), lr=LR, weight_decay=0.01)
    warmup = max(1, math.ceil(0.1 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / steps)
    )
    ids = {y: j for j, y in enumerate(by_label)}
    device = next(encoder.parameters()).device
    encoder.train()
    curve: list[tuple[int, float]] = []
    samples = 0
    for step in range(steps):
        idx = balanced_batch(by_label, rng)
        batch = {k: v.to(device) for k, v in inputs_of(idx).items()}
        with autocast():
            z = embed(encoder, batch).float()  # unit-length averaged token states
        y = torch.tensor([ids[labels[i]] for i in idx], device=device)
        loss = supcon_loss(z, y, TEMPERATURE)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        samples += len(idx)
        value = float(loss.item())
        lr = float(sched.get_last_lr()[0])
        if (step + 1) % LOG_EVERY == 0 or step == 0 or step == steps - 1:
            curve.append((step + 1, round(value, 4)))
        if on_step is not None:
            on_step(step + 1, value, lr, samples)
    encoder.eval()
    return {
        "steps": steps,
        "lr": LR,
        "temperature": TEMPERATURE,
        "batch": BATCH,
        "samples": samples,
        "loss_first_last": [curve[0][1], curve[-1][1]] if curve else None,
        "curve": curve,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def stage(
    raw_model: Any, heads: list[Any], enc: dict[str, dict[str, Any]], pad_id: int, acc: Any,
    seed: int, eval_batch_size: int, state: dict[str, Any], logger: Any, out: Any, main: bool,
) -> Any:  # fmt: skip
    """The whole stage in a fine-tuning run: train `raw_model`'s encoder (its `base_model`),
    then fit its output layer on the trained features (probe.json). Returns the loop's result
    (train/loop.py's LoopResult) for the recipe's summary; `state` counts the stage's steps."""
    from tailorml.data.batching import collate
    from tailorml.files import atomic_json
    from tailorml.train import frozen, probe
    from tailorml.train.loop import LoopResult
    from tailorml.train.progress import TrainProgress, console

    (h,) = heads
    train = enc[h.name]["train"]
    if main:
        console.print(
            f"  contrastive stage: {STEPS} steps of {BATCH} rows (up to {BATCH // PER_LABEL} "
            f"labels a batch), then the output layer fitted on the trained encoder"
        )
    progress = TrainProgress(STEPS, enabled=main, label="contrastive")
    progress.start(0, 0)

    def inputs_of(idx: list[int]) -> dict[str, Any]:
        return collate(train, idx, pad_id)  # type: ignore[arg-type]

    try:
        info = train_encoder(
            raw_model.base_model, list(train.labels), inputs_of, seed, autocast=acc.autocast,
            on_step=lambda step, loss, lr, n: progress.update(step, loss, lr, n),
        )  # fmt: skip
    except KeyboardInterrupt:
        progress.stop()
        if main:
            console.print(
                "[yellow]Interrupted during the contrastive stage, which keeps no checkpoints "
                "(it takes minutes): run the same command again, without --resume, to start "
                "it over.[/]"
            )
        raise
    progress.stop()
    for step, loss in info["curve"]:
        logger.log(step, "contrastive", {"loss": loss})
    raw_model.eval()
    probed = probe.probe_heads(
        raw_model, heads, enc, pad_id, acc.device, eval_batch_size, l2_grid=frozen.L2_GRID
    )
    if main:
        atomic_json(out / "probe.json", probed)
        console.print(
            f"  contrastive stage: {info['seconds']} s, loss {info['loss_first_last'][0]} -> "
            f"{info['loss_first_last'][1]}; output layer {probed['heads']}",
            highlight=False,
        )
    state.update(global_step=STEPS, samples_seen=info["samples"], total_steps=STEPS)
    state["contrastive"] = {k: v for k, v in info.items() if k != "curve"}
    why = "a contrastive stage of fixed length"
    return LoopResult(state, why, info["seconds"], info["samples"])
