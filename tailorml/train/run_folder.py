"""The run folder a training recipe writes (see DESIGN.md): refusing to mix runs, and the model
folder (Hugging Face layout + task.json), written to a temp folder and renamed into place."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tailorml.errors import ConfigError
from tailorml.models.lora import save_weights
from tailorml.tasks.folder import write_task_json

FINISHED_MARKERS = ("eval.json", "model", "checkpoints")
OUTPUTS = (*FINISHED_MARKERS, "metrics.jsonl", "tb", "plots", "report.md")


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> Path:
    """Refuse to mix runs: an existing run folder needs --resume or --overwrite."""
    existing = [m for m in FINISHED_MARKERS if (out / m).exists()]
    if existing and not resume and not overwrite:
        raise ConfigError(
            f"`output_dir` {out} already holds a run ({', '.join(existing)}). "
            "Pass --resume to continue it, --overwrite to replace it, or set another output_dir."
        )
    if resume and (out / "eval.json").exists():
        raise ConfigError(
            f"{out} is a finished run (eval.json exists); there is nothing to resume. "
            "Pass --overwrite to train it again, or set another output_dir."
        )
    if overwrite and not resume:
        for name in OUTPUTS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    return out


def record_plan(
    out: Path, cfg: Any, chosen: dict[str, dict[str, Any]], quiet: bool = False
) -> None:
    """Print the values the run chose for keys the config left open (and why; not when
    `quiet`), and write the config as run (config.yaml) with those reasons (auto.json). Main
    process only."""
    from tailorml.config.load import dump_config
    from tailorml.files import atomic_json, atomic_write_text
    from tailorml.train.progress import console

    for key, c in chosen.items() if not quiet else ():
        console.print(f"  {key} = {c['value']} (chosen: {c['why']})", highlight=False)
    atomic_write_text(out / "config.yaml", dump_config(cfg))  # the values used
    atomic_json(out / "auto.json", chosen)


def resume_point(out: Path, resume: bool, start_if_nothing: bool) -> tuple[Path, bool]:
    """(the checkpoints folder, whether to resume from it). `--resume` with no checkpoint is an
    error, unless `start_if_nothing` (`--resume-or-start`): then the run starts afresh."""
    from tailorml.train.checkpoint import latest_checkpoint
    from tailorml.train.progress import console

    ckpt_dir = out / "checkpoints"
    has_checkpoint = latest_checkpoint(ckpt_dir) is not None if resume else False
    if resume and not has_checkpoint:
        if not start_if_nothing:
            raise ConfigError(
                f"--resume: there is no checkpoint in {ckpt_dir} to continue from. Leave out "
                "--resume to start this run, or pass --resume-or-start to resume when a "
                "checkpoint exists and start otherwise."
            )
        console.print(f"[yellow]No checkpoint in {ckpt_dir}; starting from the beginning.[/]")
    return ckpt_dir, has_checkpoint


def save_model_folder(out: Path, model: Any, tokenizer: Any, info: dict[str, Any]) -> Path:
    """RUN_DIR/model: weights (safetensors; a LoRA run's adapter), config, tokenizer and
    task.json `info`."""
    final, tmp = out / "model", out / "model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_weights(model, tmp, info)  # a LoRA model: adapter + head, config.json (see models/lora)
    tokenizer.save_pretrained(str(tmp))
    write_task_json(tmp, info)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final
