"""`tailor merge RUN [-o OUT]`: a LoRA run's adapter merged into its base, written as a plain
Hugging Face folder (config.json, model.safetensors, tokenizer, task.json) that
`AutoModelForSequenceClassification.from_pretrained` (a classifier run) or
`AutoModelForCausalLM.from_pretrained` (a generation run) loads and every tailor command accepts.

    RUN/model (adapter + head, base named in task.json) -> base + adapter, merged -> OUT

OUT (default RUN/merged) is written to a temp folder and renamed into place.
"""

from __future__ import annotations

from pathlib import Path

from tailorml.compress.folders import staged
from tailorml.errors import ConfigError
from tailorml.tasks.base import SEQUENCE_CLASSIFIER
from tailorml.tasks.folder import (
    TASK_JSON,
    read_model_info,
    read_task_json,
    resolve_model_dir,
    write_task_json,
)


def merge_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the merged model of a LoRA run to `out` (default: next to RUN/model, as merged/)."""
    from tailorml import env

    env.setup()
    from transformers import AutoTokenizer

    from tailorml.models import load_model
    from tailorml.models.lora import is_lora_folder

    folder = resolve_model_dir(run_dir)
    if not is_lora_folder(folder):
        raise ConfigError(
            f"{run_dir} is not a LoRA run: {folder} holds a whole model (no adapter_config.json), "
            "so there is nothing to merge. Use the folder as it is, or train with `model.lora` set."
        )
    raw = read_task_json(folder)
    family = str(raw.get("family", SEQUENCE_CLASSIFIER))
    if family == SEQUENCE_CLASSIFIER:
        raw = read_model_info(folder).raw  # checks the heads
    final = Path(out) if out is not None else folder.parent / "merged"
    if final.exists() and not (final / TASK_JSON).is_file():
        raise ConfigError(
            f"-o {final} exists and is not a model folder: refusing to replace it. Give a new "
            "folder (or an earlier `tailor merge` output)."
        )
    if final.resolve() == folder.resolve():
        raise ConfigError(f"-o {final} is the LoRA model folder itself. Give another folder.")
    model = load_model(folder, family)  # base + adapter, merged in memory
    raw = {k: v for k, v in raw.items() if k != "lora_base"}
    raw["merged_from"] = str(folder.resolve())

    final.parent.mkdir(parents=True, exist_ok=True)
    with staged(final) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(tmp))
        write_task_json(tmp, raw)
    return final
