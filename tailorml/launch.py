"""Run a `tailor` command as child processes: several training processes (torchrun), or one
stage inside another (compress runs the recovery and distillation fine-tunes this way, so each
stage keeps its own threads, memory and progress output)."""

from __future__ import annotations

import subprocess
import sys

from tailorml.errors import TailorError

CLI = [sys.executable, "-m", "tailorml.cli"]


def run_stage(args: list[str], what: str) -> None:
    """`tailor ARGS` in a child process; its output goes to ours. Ctrl-C stops both."""
    code = subprocess.call([*CLI, *args])
    if code == 130:
        raise KeyboardInterrupt(code)
    if code != 0:
        raise TailorError(
            f"{what} failed (exit code {code}); its messages are above. "
            f"To run it alone: tailor {' '.join(args)}"
        )


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """`tailor ARGS` on `nproc` local processes under torchrun (CPU: gloo, GPU: nccl)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "tailorml.cli",
        *args,
    ]
