"""What every rank of a multi-process run must agree on: objects, signals, evaluation logits,
and the proof that the replicas stayed in sync. With one process each is a no-op."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tailorml.config.schema import TrainConfig
    from tailorml.data.batching import Encoded
    from tailorml.tasks.heads import HeadSpec


@dataclass
class Processes:
    acc: Any  # accelerate.Accelerator
    world: int
    main: bool
    threads: int  # intra-op threads of this process
    precision: str  # "bf16" or "fp32"
    precision_why: str


def start_processes(t: TrainConfig) -> Processes:
    """The Accelerator of a training run (one process or one rank of torchrun), its precision
    (`train.auto.choose_precision`), threads and seeds."""
    import torch
    from accelerate import Accelerator

    from tailorml import env
    from tailorml.train import auto

    use_cuda = torch.cuda.is_available()
    precision, why = auto.choose_precision(t.precision, use_cuda)
    mixed = "bf16" if precision == "bf16" else "no"
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one state per process and refuses a second run with another
        # precision (a bf16 text run, then an fp32 image run, in one notebook or `tailor tune`
        # process). One process trains one run at a time, so a new run starts a new state.
        from accelerate.state import AcceleratorState

        if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed:
            AcceleratorState._reset_state()
    acc = Accelerator(cpu=not use_cuda, mixed_precision=mixed)
    world = acc.num_processes
    threads = env.set_threads(t.threads, world) if not use_cuda else torch.get_num_threads()
    env.seed_everything(t.seed)
    return Processes(acc, world, acc.is_main_process, threads, precision, why)


def gather_objects(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def agree_on_signal(signum: int | None, world: int) -> int | None:
    """All ranks stop at the same step if any of them got a signal."""
    if world == 1:
        return signum
    import torch

    t = torch.tensor([signum or 0], dtype=torch.long)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item()) or None


def all_reduce_sum(value: float, world: int) -> float:
    if world == 1:
        return value
    import torch

    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t.item())


def no_sync(acc: Any, model: Any, skip: bool) -> Any:
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulated step."""
    return acc.no_sync(model) if skip else contextlib.nullcontext()


def replica_max_diff(model: Any, world: int) -> float:
    """Largest difference of any parameter between this process and rank 0 (0.0 = in sync).

    Proves that gradients really synchronised: every rank must end with rank 0's weights.
    """
    if world == 1:
        return 0.0
    import torch
    import torch.distributed as dist

    worst = torch.zeros(1, dtype=torch.float64)
    for p in model.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, src=0)
        worst = torch.maximum(worst, (p.detach() - ref).abs().max().double().reshape(1))
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst.item())


def distributed_logits(
    model: Any, enc: Encoded, batch_size: int, pad_id: int, acc: Any, head: HeadSpec
) -> tuple[np.ndarray, float]:
    """Every rank scores its share of the batches; all ranks get all of `head`'s logits (in
    example order) and its mean loss."""
    import torch

    from tailorml.evaluate.inference import ordered, predict_logits

    rank, world = acc.process_index, acc.num_processes
    logits, rows = predict_logits(
        model, enc, batch_size, pad_id, acc.device, acc.autocast, rank, world
    )
    parts = gather_objects((logits, rows), world)
    full = ordered(
        np.concatenate([p[0] for p in parts]), [r for p in parts for r in p[1]], len(enc)
    )
    full = np.ascontiguousarray(full[:, head.columns])
    task = head.kind
    y = task.label_tensor(enc.labels, head.size)
    loss = float(task.loss(torch.from_numpy(full), y).mean())
    return full, loss
