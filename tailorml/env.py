"""The process environment, set in one place by an explicit call: seeds, threads, env defaults.

`setup()` runs at every entry point (the `tailor` command, a service worker, a recipe called as a
library) before torch or onnxruntime start their thread pools; nothing here runs on import.
"""

from __future__ import annotations

import os
import random

DEFAULTS = {
    # Busy-waiting OpenMP threads collapse on shared machines (another process holding a core made
    # an elementwise op 56x slower here). Read when torch initialises OpenMP, so set it first.
    "OMP_WAIT_POLICY": "PASSIVE",
    # The tokenizers' own thread pool fights the model's threads and warns after a fork.
    "TOKENIZERS_PARALLELISM": "false",
    # No model hub is reachable: fail on a missing local file instead of trying the network.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def setup() -> None:
    """Set the environment defaults (a value the user already exported wins). Idempotent."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    if os.environ.get("OMP_NUM_THREADS") == "":  # set but empty: accelerate fails to parse it
        del os.environ["OMP_NUM_THREADS"]


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


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def speed_flags(flags: set[str] | None = None) -> str:
    """The CPU features that decide int8 and bf16 speed (AVX*, AVX-512, VNNI, AMX), sorted, as
    benchmarks and compression reports print them; '' where they cannot be read."""
    flags = cpu_flags() if flags is None else flags
    return " ".join(sorted(f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f))


def int8_kernels(flags: set[str] | None = None) -> dict[str, str]:
    """Which int8 matrix kernels the two runtimes use on this CPU. PyTorch reports its own
    (quantized engine, CPU capability it dispatches to); ONNX Runtime's MLAS library exposes no
    such query, so its path is read off the CPU flags in the order MLAS checks them (AMX, then
    AVX-512 VNNI, AVX-VNNI, AVX-512BW, AVX2) -- inferred, and labelled so."""
    import torch

    flags = cpu_flags() if flags is None else flags
    if {"amx_tile", "amx_int8"} <= flags:
        ort = "AMX tiles (amx_int8)"
    elif "avx512_vnni" in flags:
        ort = "AVX-512 VNNI (vpdpbusd)"
    elif "avx_vnni" in flags:
        ort = "AVX-VNNI (vpdpbusd, 256-bit)"
    elif "avx512bw" in flags:
        ort = "AVX-512BW (vpmaddubsw, no VNNI)"
    elif "avx2" in flags:
        ort = "AVX2 (vpmaddubsw + vpmaddwd, no VNNI)"
    else:
        ort = "SSE / portable"
    return {
        "torch": f"{torch.backends.quantized.engine} engine, "
        f"{torch.backends.cpu.get_cpu_capability()} kernels",
        "onnxruntime": f"MLAS {ort}, inferred from the CPU flags",
    }


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, object]:
    """What a benchmark records of the machine it ran on, taken at its start."""
    import platform
    import time

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "cpu_flags": speed_flags(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# CPU features that compute bf16 matrix products natively (AMX tiles, AVX-512 BF16 dot products).
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")
