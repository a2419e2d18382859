"""The pieces of `tailor compress` for a generation run (a causal LM, family `causal-lm`): its
inputs (the run's eval chats, the variants it can build), the torch-int8 variant folder, and
what is measured — perplexity on the eval answers (tailorml/evaluate/lm.py) and greedy tokens/s
at batch 1 and 8 through `Generator`, the class that `tailor generate` and serving run.

The workflow that wires them is `compress_generation` in tailorml/recipes/compress.py.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tailorml.compress.folders import write_task
from tailorml.config.compress import CLASSIFIER_ONLY, GENERATION_VARIANTS, VARIANTS, CompressOptions
from tailorml.data.sft import Chats
from tailorml.errors import ConfigError, DataError

DESCRIBE = {
    "torch-int8": "PyTorch dynamic int8 of every Linear layer but the output layer",
    "torch-int8-mixed": "PyTorch dynamic int8, the MLP down projections kept fp32",
}
# Per variant, the Linear layers (name suffixes) kept fp32 besides the output layer. The MLP down
# projection reads the activations with the largest outliers; dynamic int8 quantizes them with
# one scale per call, which costs the most perplexity there (measured on SmolLM2:
# docs/benchmarks.md#compressing-a-generation-model).
KEEP_FP32: dict[str, tuple[str, ...]] = {"torch-int8": (), "torch-int8-mixed": ("mlp.down_proj",)}

# Perplexity is scored in packed blocks of the run's max_length, this many blocks per forward.
PPL_BATCH = 16


@dataclass
class GenerationInputs:
    run: Path
    model_dir: Path
    info: dict[str, Any]  # the model's task.json
    chats: Chats  # the rows perplexity is measured on
    prompts: list[Any]  # the prompts timed (chats, each up to its last answer)
    max_length: int
    variants: list[str]


def check_inputs(run_dir: str | Path, opts: CompressOptions) -> GenerationInputs:
    """Everything that can fail on bad input, before anything is written."""
    from tailorml.tasks.folder import read_task_json

    run = Path(run_dir)
    model_dir = run / "model"
    if not (model_dir / "config.json").is_file():
        raise ConfigError(
            f"{run} is not a generation run folder: no model/config.json. Give the folder "
            "`tailor finetune` wrote (its output_dir)."
        )
    variants = generation_variants(run, opts.variants)
    given = sorted(set(opts.model_fields_set) & set(CLASSIFIER_ONLY))
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(
            f"{flags}: {'is an option' if len(given) == 1 else 'are options'} of classifier runs; "
            f"{run} is a generation run, whose budget is --max-ppl-increase (percent of fp32's "
            "perplexity). Leave them out."
        )
    info = read_task_json(model_dir)
    max_length = int((info.get("data") or {}).get("max_length") or 512)
    chats = _eval_chats(run, info, opts)
    prompts = chats.prompts()
    prompts = (prompts * (opts.prompts // len(prompts) + 1))[: opts.prompts]
    if opts.ppl_rows is not None:
        chats = chats.subset(range(min(opts.ppl_rows, len(chats))), chats.source)
    return GenerationInputs(run, model_dir, info, chats, prompts, max_length, variants)


def generation_variants(run: Path, names: list[str] | None) -> list[str]:
    """The variants asked for (null = all a generation run has); a classifier-only one is an
    error that names the ones a generation run supports."""
    if not names:
        return list(GENERATION_VARIANTS)
    flat = [n.strip() for item in names for n in item.split(",") if n.strip()]
    bad = [n for n in flat if n not in GENERATION_VARIANTS]
    if bad:
        classifier = [n for n in bad if n in VARIANTS]
        what = (
            f"{', '.join(classifier)} {'is' if len(classifier) == 1 else 'are'} for classifier "
            "runs only"
            if classifier
            else ""
        )
        unknown = [n for n in bad if n not in VARIANTS]
        if unknown:
            what += ("; " if what else "") + f"unknown variant(s): {', '.join(map(repr, unknown))}"
        raise ConfigError(
            f"{run} is a generation run (a causal LM): {what}. A generation run supports: "
            f"{', '.join(GENERATION_VARIANTS)} (measured against fp32, which is always measured)."
        )
    return [v for v in GENERATION_VARIANTS if v in flat]


def _eval_chats(run: Path, info: dict[str, Any], opts: CompressOptions) -> Chats:
    """--data (rows with the run's prompt/response or messages columns), else the run's own eval
    split from its config.yaml."""
    from tailorml.data.readers import read_table
    from tailorml.data.sft import build_chats, prepare_chat_splits

    if opts.data is not None:
        from tailorml.config.schema import DataConfig

        columns = info.get("data") or {"prompt_column": "prompt", "response_column": "response"}
        d = DataConfig.model_validate({k: v for k, v in columns.items() if v is not None})
        chats = build_chats(read_table(opts.data, key="--data"), d, "--data")
    else:
        from tailorml.config.load import load_config

        if not (run / "config.yaml").is_file():
            raise DataError(
                f"{run} has no eval data: no config.yaml to find the run's eval split. Pass "
                "--data FILE (rows with the run's prompt and response columns)."
            )
        try:
            chats = prepare_chat_splits(load_config(run / "config.yaml")).eval
        except DataError as exc:
            raise DataError(
                [
                    *exc.problems,
                    f"{run}: the run's eval data could not be read (paths in config.yaml are "
                    "relative to where `tailor finetune` ran). Run from there or pass --data FILE.",
                ]
            ) from None
    if not len(chats):
        raise DataError(f"{chats.source}: no rows to measure perplexity on.")
    return chats


def build_causal_int8(
    name: str, model_dir: Path, tmp: Path, info: dict[str, Any]
) -> dict[str, Any]:
    """The int8 variant `name` of a causal-LM folder, written into `tmp`: config.json,
    generation_config.json, the tokenizer (with its chat template), task.json, and the int8 state
    dict `model_int8.pt`.

    Why a saved int8 state dict and not fp32 safetensors quantized at load: the folder is then
    really smaller (int8 Linear weights at a quarter of their bytes), and it is safe to read:
    `torch.load(..., weights_only=True)` (models/causal_lm.load_causal_int8) rebuilds tensors
    and dtypes only and refuses any other object, so no code in the file is ever run. It is the
    format of the classifier's torch-int8 variant too."""
    import torch

    from tailorml.models.causal_lm import (
        INT8_KEEP_KEY,
        INT8_STATE_KEY,
        int8_layers,
        load_causal_lm,
        load_causal_tokenizer,
        quantize_causal_lm,
    )

    keep = KEEP_FP32[name]
    model = load_causal_lm(model_dir).eval()  # a LoRA run: its adapter merged into the base
    q = quantize_causal_lm(model, keep)
    torch.save(q.state_dict(), str(tmp / "model_int8.pt"))
    model.config.save_pretrained(str(tmp))
    model.generation_config.save_pretrained(str(tmp))
    # save_pretrained, not a copy of known file names: transformers 5 keeps the chat template
    # in a file of its own (chat_template.jinja).
    load_causal_tokenizer(model_dir).save_pretrained(str(tmp))
    write_task(
        tmp,
        info,
        runtime="torch",
        torch_dynamic_int8=True,
        variant=name,
        **{INT8_STATE_KEY: "model_int8.pt", INT8_KEEP_KEY: list(keep)},
    )
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    return {
        "int8_layers": len(int8_layers(model, keep)),
        "linear_layers": n_linear,
        "kept_fp32": ["output layer", *keep],
    }


def perplexity(gen: Any, chats: Chats, max_length: int) -> dict[str, Any]:
    """Loss and perplexity over the answer tokens of `chats` (packed blocks, as `tailor
    evaluate` scores a generation run)."""
    from tailorml.data.sft import encode_chats, units_of
    from tailorml.evaluate.lm import loss_sum, perplexity_metrics

    enc = encode_chats(gen.tokenizer, chats, max_length)
    units = units_of(enc, max_length, True)
    total, tokens = loss_sum(gen.model, enc, units, PPL_BATCH, gen.tokenizer.pad_token_id, True)
    m = perplexity_metrics(total, tokens)
    return {"perplexity": round(m["perplexity"], 6), "loss": round(m["loss"], 6), "tokens": tokens}


def time_generators(
    gens: dict[str, Any],
    prompts: list[Any],
    new_tokens: int,
    repeats: int,
    batch: int = 8,
    report: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Greedy tokens/s of every generator on the same prompts: batch 1 (each prompt alone) and
    batch `batch` (the prompts in groups, cycled to fill the last). Every call generates exactly
    `new_tokens` per prompt (the end of turn is suppressed), chat template and tokenization
    included, as served. One untimed warm-up of each shape; then `repeats` repetitions,
    interleaved with the order rotated (fair under a drifting machine load); medians."""
    n_grouped = -(-len(prompts) // batch) * batch  # a whole number of batches
    grouped = [prompts[i % len(prompts)] for i in range(n_grouped)]
    samples: dict[str, str] = {}
    for name, g in gens.items():  # warm-up; its greedy answer (end of turn allowed) is kept
        samples[name] = g.generate(prompts[:1], max_new_tokens=new_tokens)[0].output
        g.generate(grouped[:batch], new_tokens, min_new_tokens=new_tokens, batch_size=batch)
    b1: dict[str, list[float]] = {n: [] for n in gens}
    bn: dict[str, list[float]] = {n: [] for n in gens}
    names = list(gens)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            g = gens[name]
            t0 = time.perf_counter()
            for p in prompts:
                g.generate([p], new_tokens, min_new_tokens=new_tokens, batch_size=1)
            b1[name].append(new_tokens * len(prompts) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            g.generate(grouped, new_tokens, min_new_tokens=new_tokens, batch_size=batch)
            bn[name].append(new_tokens * len(grouped) / (time.perf_counter() - t0))
            if report:
                report(
                    f"  timing {r + 1}/{repeats} {name}: {b1[name][-1]:.1f} tokens/s at batch 1, "
                    f"{bn[name][-1]:.1f} at batch {batch}"
                )
    return {
        n: {
            "tokens_per_s_b1": round(statistics.median(b1[n]), 2),
            f"tokens_per_s_b{batch}": round(statistics.median(bn[n]), 2),
            "sample_output": samples[n],
        }
        for n in gens
    }
