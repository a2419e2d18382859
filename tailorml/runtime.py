"""Seeds, threads and devices are set here, from the config, in one place."""

from __future__ import annotations

import os
import random

# Busy-waiting OpenMP threads collapse on shared machines (another process holding a core made an
# elementwise op 56x slower here). Must be set before torch initialises OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int | None, world: int = 1) -> int:
    """Intra-op threads: as configured, else the cores shared evenly among local processes."""
    import torch

    if threads is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world) or 1)
        threads = max(1, (os.cpu_count() or 1) // max(1, local))
    torch.set_num_threads(threads)
    return threads
