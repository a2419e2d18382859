"""Answer prompts with a causal LM, and score a generation run: `tailor generate` and
`tailor evaluate` on a generation run (the metrics of its eval.json: loss, perplexity, and
greedy answers scored by ROUGE-L, token F1 and exact match)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tailorml import env
from tailorml.errors import ConfigError


def generate_rows(
    source: str | Path,
    prompts: Sequence[str | list[dict[str, str]]],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    batch_size: int = 8,
) -> Iterator[dict[str, Any]]:
    """One JSON row per prompt: input, output, tokens, finish_reason."""
    from tailorml.predictors.generator import Generator

    env.setup()
    bad = [
        f"{flag} is {value}; it must be {rule}"
        for flag, value, ok, rule in (
            ("--temperature", temperature, temperature >= 0, ">= 0 (0 = greedy)"),
            ("--top-p", top_p, 0 < top_p <= 1, "in (0, 1]"),
            ("--top-k", top_k, top_k >= 0, ">= 0 (0 = off)"),
            ("--max-new-tokens", max_new_tokens, max_new_tokens >= 1, ">= 1"),
            ("--batch-size", batch_size, batch_size >= 1, ">= 1"),
        )
        if not ok
    ]
    if bad:
        raise ConfigError("; ".join(bad) + ".")
    from tailorml.train.progress import console

    gen = Generator.load(source)
    total = len(prompts)
    for done, g in enumerate(
        gen.generate(prompts, max_new_tokens, temperature, top_p, top_k, seed, stop, batch_size),
        start=1,
    ):
        yield g.to_json()
        if total > batch_size and (done % batch_size == 0 or done == total):
            console.print(f"generated {done}/{total} prompts", highlight=False)  # on stderr


def evaluate_generation(
    run_dir: str | Path,
    data: str | Path | None = None,
    samples: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Loss and perplexity on the answers of a file (or the run's test split), and greedy
    answers to up to `samples` of its prompts scored against the references."""
    from tailorml.config.load import load_config
    from tailorml.data.readers import read_table
    from tailorml.data.sft import build_chats, encode_chats, prepare_chat_splits, units_of
    from tailorml.evaluate.lm import loss_sum, perplexity_metrics
    from tailorml.predictors.generator import Generator, sample_scores
    from tailorml.tasks.folder import read_task_json

    env.setup()
    gen = Generator.load(run_dir)
    assert gen.folder is not None
    info = read_task_json(gen.folder)
    cfg_file = gen.folder.parent / "config.yaml"
    cfg = load_config(cfg_file, []) if cfg_file.is_file() else None
    if data is None:
        if cfg is None:
            raise ConfigError(
                f"{run_dir}: no config.yaml next to the model to find its test split. Pass "
                "--data FILE with the prompt and response columns it was trained on."
            )
        chats, source = prepare_chat_splits(cfg).test, "test split"
    else:
        from tailorml.config.schema import DataConfig

        # A folder without task.json (smollm2, any HF causal LM): `prompt` and `response`.
        columns = info.get("data") or {"prompt_column": "prompt", "response_column": "response"}
        d = DataConfig.model_validate({k: v for k, v in columns.items() if v is not None})
        chats, source = build_chats(read_table(data, key="--data"), d, "evaluation data"), str(data)
    max_length = int((info.get("data") or {}).get("max_length") or 512)
    enc = encode_chats(gen.tokenizer, chats, max_length)
    total, tokens = loss_sum(
        gen.model,
        enc,
        units_of(enc, max_length, True),
        batch_size,
        gen.tokenizer.pad_token_id,
        True,
    )
    metrics: dict[str, Any] = {**perplexity_metrics(total, tokens), "tokens": tokens}
    n_samples = samples if samples is not None else (cfg.generate.samples if cfg else 64)
    new_tokens = max_new_tokens or (cfg.generate.max_new_tokens if cfg else 96)
    n = min(n_samples, len(chats))
    if n:
        scores, examples = sample_scores(
            gen, chats.prompts()[:n], chats.references()[:n], new_tokens
        )
        metrics.update(scores)
        metrics["examples"] = examples
    metrics.update(n=len(chats), truncated=enc.n_truncated, source=source, model=str(gen.folder))
    return metrics
