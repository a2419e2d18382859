"""LoRA (low-rank adaptation, Hu et al. 2021) on any model family, through peft.

Training: `apply_lora` freezes the base model, adds rank-r updates to the chosen Linear layers and
trains the task head in full (peft `modules_to_save`). Saving: the model folder holds the adapter
(adapter_config.json + adapter_model.safetensors, the head included), config.json of the whole
model (labels, problem type) and task.json naming the base under `lora_base`. Loading: base +
adapter, merged in memory (`merge_and_unload`), so every reader of a model folder sees a plain
model. `tailor merge` writes that merged model as an ordinary folder.

A base with no weights on disk (`tiny`, built from a config for tests) is saved beside the
adapter, in `base/`, so that the folder still loads in a fresh process. A causal LM (no head:
only the adapters train; its tied input/output embeddings stay frozen) also keeps its
generation_config.json in the folder.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tailorml.errors import ConfigError

if TYPE_CHECKING:
    from tailorml.config.schema import LoraSettings, ModelConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_IN_FOLDER = "base"  # task.json `lora_base` when the base is saved inside the model folder


# ---- training ---------------------------------------------------------------------------------


def head_modules(model: Any) -> list[str]:
    """The task head(s): the model's top-level modules with weights other than the pretrained
    body (`base_model_prefix`) and the output embeddings. `classifier` for a BERT classifier,
    `pre_classifier` + `classifier` for DistilBERT; none for a causal LM (its `lm_head` is the
    output embedding, tied to the input one, and stays frozen)."""
    body = getattr(model, "base_model_prefix", None)
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        name
        for name, child in model.named_children()
        if name != body and child is not out_emb and any(True for _ in child.parameters())
    ]


def _adaptable(module: Any) -> bool:
    """Layers peft's LoRA wraps that matter here: Linear (and GPT-2 style Conv1D)."""
    import torch

    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def resolve_targets(model: Any, wanted: list[str] | None, heads: list[str]) -> list[str]:
    """Full names of the layers that get adapters, never inside a head (trained in full).

    `wanted` None = every Linear layer of the body: for BERT-like encoders query, key, value and
    the dense layers (attention output, feed-forward, pooler); for Llama-style decoders q/k/v/o
    and gate/up/down projections; the output embedding is excluded. This is peft's "all-linear",
    made explicit so the head is never wrapped twice. Measured on MiniLM (docs/benchmarks.md,
    "LoRA"): it trains better than query+value only, at the same learning rate. A name given
    matches a layer whose full name is it or ends in `.name`; one that matches no adaptable
    layer is an error listing the layer names there are."""
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    layers = {
        name: m
        for name, m in model.named_modules()
        if name
        and _adaptable(m)
        and m is not out_emb
        and not any(name == h or name.startswith(h + ".") for h in heads)
    }
    if wanted is None:
        return sorted(layers)
    chosen: set[str] = set()
    unmatched = []
    for target in wanted:
        hits = [n for n in layers if n == target or n.endswith("." + target)]
        if not hits:
            unmatched.append(target)
        chosen.update(hits)
    if unmatched:
        endings = sorted({n.rsplit(".", 1)[-1] for n in layers})
        raise ConfigError(
            f"`model.lora.target_modules`: {unmatched} name no Linear layer of this model"
            f"{' outside its head ' + str(heads) if heads else ''}. Its layer names end in "
            f"{endings}: choose from those, or set `model.lora.target_modules: null` for all of "
            "them."
        )
    return sorted(chosen)


def apply_lora(model: Any, cfg: LoraSettings, heads: list[str]) -> Any:
    """`model` with LoRA adapters on its body (frozen) and `heads` trained in full.

    Returns a peft model: `forward`, `.config` and `save_pretrained` work as before (the latter
    writes the adapter). `heads` = [] for a model with no task head (a causal LM)."""
    from peft import LoraConfig, get_peft_model

    targets = resolve_targets(model, cfg.target_modules, heads)
    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # annotated int; used as alpha / r
        lora_dropout=cfg.dropout,
        target_modules=targets,
        modules_to_save=heads or None,
        bias="none",
    )
    with _quiet():
        return get_peft_model(model, config)


@contextmanager
def _quiet() -> Iterator[None]:
    """peft calls a transformers method deprecated in 5.x: a FutureWarning on every wrap."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def is_lora(model: Any) -> bool:
    return hasattr(model, "peft_config")


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters. For a LoRA model the total counts the frozen base, the
    adapters and the head (the head's frozen original copy included, as peft keeps it)."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


# ---- the model folder --------------------------------------------------------------------------


# Packaged bases, recorded by name (found again where this tailorml is installed).
PACKAGED = ("minilm", "mpnet", "smollm2")


def task_fields(cfg: ModelConfig) -> dict[str, Any]:
    """task.json fields of a run's model folder: for LoRA, the base the adapter applies to
    (a packaged name, an absolute folder path, or `base` = the copy inside the folder)."""
    from tailorml.models.base import resolve_base

    if cfg.lora is None:
        return {}
    if cfg.base in PACKAGED:
        return {"lora_base": cfg.base}
    if cfg.base == "tiny":
        return {"lora_base": BASE_IN_FOLDER}
    return {"lora_base": str(Path(str(resolve_base(cfg.base))).resolve())}


def save_weights(model: Any, folder: Path, info: dict[str, Any]) -> None:
    """`save_pretrained` into `folder`; a LoRA model writes its adapter, the whole model's
    config.json, and the base when task.json's `lora_base` says it lives in the folder."""
    if not is_lora(model):
        model.save_pretrained(str(folder), safe_serialization=True)
        return
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)  # peft's model-card template, all blanks
    base = model.get_base_model()
    base.config.save_pretrained(str(folder))
    if base.can_generate():  # a causal LM: its EOS / pad tokens (generation_config.json)
        base.generation_config.save_pretrained(str(folder))
    if info.get("lora_base") == BASE_IN_FOLDER:
        # The adapters removed, not merged: the base weights as they were before training.
        copy.deepcopy(model).unload().save_pretrained(
            str(folder / BASE_IN_FOLDER), safe_serialization=True
        )


def is_lora_folder(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def base_of(folder: Path) -> Path:
    """The base model folder a LoRA model folder applies to (from its task.json)."""
    from tailorml.models.base import resolve_base

    info = json.loads((folder / "task.json").read_text(encoding="utf-8"))
    base = info.get("lora_base")
    if base == BASE_IN_FOLDER:
        return folder / BASE_IN_FOLDER
    if base == "smollm2":
        from tailorml.models.causal_lm import smollm2_folder

        return smollm2_folder()
    if not base:
        raise ConfigError(
            f"{folder} holds a LoRA adapter but its task.json does not name the base model "
            "(`lora_base`). Re-create the folder with `tailor finetune`."
        )
    try:
        path = resolve_base(str(base))
    except ConfigError as exc:
        raise ConfigError(
            f"{folder} is a LoRA adapter on base {base!r}, which cannot be found: {exc}"
        ) from None
    assert path is not None  # `tiny` is recorded as BASE_IN_FOLDER
    return path


def load_merged(folder: str | Path, load_base: Callable[[Path, Any], Any]) -> Any:
    """A LoRA model folder as a plain model: its family's `load_base(base folder, config)`, the
    adapter (and head) on top, merged into the weights. In eval mode."""
    from peft import PeftModel
    from transformers import AutoConfig

    folder = Path(folder)
    config = AutoConfig.from_pretrained(str(folder))  # the trained model's: labels, problem type
    base = load_base(base_of(folder), config)
    with _quiet():
        merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    merged.eval()
    return merged


def load_adapter_weights(model: Any, folder: Path) -> None:
    """Put a checkpoint's adapter (and head) weights into a LoRA model being trained."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(folder / ADAPTER_WEIGHTS))
    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    # Missing keys name the whole frozen base; only trained weights must all be there.
    missing = [
        k
        for k in getattr(result, "missing_keys", []) or []
        if "lora_" in k or "modules_to_save" in k
    ]
    if unexpected or missing:
        raise RuntimeError(
            f"checkpoint {folder} does not match the model: {(unexpected + missing)[:5]}"
        )
