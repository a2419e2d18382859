"""Run a causal-LM folder: chat-template a prompt (or a chat), generate a batch with the KV
cache (transformers `generate`, left padding), cut at stop strings, say why each answer ended.

    gen = Generator.load("runs/support-sft")      # a run, its model/ folder, any causal-LM
    gen.generate(["How do I reset my PIN?"])       # folder, or `smollm2`
    -> [Generated(input=..., output="...", tokens=41, finish_reason="eos")]

finish_reason: `eos` (the model ended its turn), `stop` (a stop string was generated; the
output is cut before it), `length` (max_new_tokens reached). Serving can reuse this class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tailorml.errors import ConfigError

Message = dict[str, str]
Prompt = str | list[Message]


@dataclass
class Generated:
    input: Prompt
    output: str
    tokens: int  # new tokens generated (the end-of-turn token included)
    finish_reason: str  # eos | stop | length

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_causal_folder(source: str | Path) -> Path:
    """`smollm2`, a run folder (its model/), or a causal-LM folder -> the folder to load."""
    from tailorml.models.causal_lm import smollm2_folder

    if str(source) == "smollm2":
        return smollm2_folder()
    path = Path(source).expanduser()
    for folder in (path / "model", path):
        if (folder / "config.json").is_file():
            return folder
    raise ConfigError(
        f"{source}: not a run folder (no model/config.json) nor a model folder (no "
        "config.json). Give a generation run, RUN_DIR/model, a causal-LM folder or `smollm2`."
    )


def is_causal_lm(source: str | Path) -> bool:
    """`smollm2`, or a folder (or run) whose config.json names a *ForCausalLM architecture."""
    import json

    if str(source) == "smollm2":
        return True
    path = Path(source).expanduser()
    for folder in (path / "model", path):
        if (folder / "config.json").is_file():
            try:
                config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            except ValueError:
                return False
            archs = config.get("architectures") or [] if isinstance(config, dict) else []
            return any(str(a).endswith("ForCausalLM") for a in archs)
    return False


class Generator:
    def __init__(self, model: Any, tokenizer: Any, folder: Path | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.folder = folder

    @classmethod
    def load(cls, source: str | Path) -> Generator:
        """The one loading entry point for serving: a run, a model folder (a LoRA one merged),
        a `tailor compress` int8 variant (RUN_DIR/compressed/torch-int8), or `smollm2`."""
        from tailorml.models.causal_lm import load_causal_lm, load_causal_tokenizer

        folder = resolve_causal_folder(source)
        tokenizer = load_causal_tokenizer(folder)
        model = load_causal_lm(folder).eval()
        return cls(model, tokenizer, folder)

    def render(self, prompt: Prompt) -> str:
        """The chat template applied to a prompt (one user turn) or a chat, ending in the
        assistant's turn opening."""
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text: str = self.tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=True
        )
        return text

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        batch_size: int = 8,
        min_new_tokens: int = 0,
    ) -> list[Generated]:
        """Answers in input order. temperature 0 = greedy; else sampling (top_p, top_k; a
        `seed` makes it repeatable: the same seed, prompts and batch size give the same text).
        `min_new_tokens`: the end of turn is suppressed until that many tokens (benchmarks set
        it to `max_new_tokens`, so that every model generates the same number of tokens)."""
        import torch

        if seed is not None:
            torch.manual_seed(seed)
        out: list[Generated] = []
        for i in range(0, len(prompts), batch_size):
            out += self._batch(
                prompts[i : i + batch_size],
                max_new_tokens,
                temperature,
                top_p,
                top_k,
                stop,
                min_new_tokens,
            )
        return out

    def _batch(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        stop: Sequence[str],
        min_new_tokens: int = 0,
    ) -> list[Generated]:
        import torch

        tok = self.tokenizer
        tok.padding_side = "left"  # new tokens follow every prompt's last token directly
        enc = tok(
            [self.render(p) for p in prompts],
            add_special_tokens=False,
            padding=True,
            return_tensors="pt",
        )
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
        }
        if min_new_tokens:
            kwargs["min_new_tokens"] = min_new_tokens
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=tok)
        with torch.inference_mode():
            ids = self.model.generate(**enc, **kwargs)  # (batch, prompt + new)
        new = ids[:, enc["input_ids"].shape[1] :].tolist()
        return [
            self._finish(p, row, max_new_tokens, stop) for p, row in zip(prompts, new, strict=True)
        ]

    def _finish(
        self, prompt: Prompt, row: list[int], max_new_tokens: int, stop: Sequence[str]
    ) -> Generated:
        """Text, token count and finish reason of one generated row. A finished row is padded
        (the pad token may be EOS itself), so the row ends at its first EOS or pad."""
        tok = self.tokenizer
        ends = {tok.eos_token_id, tok.pad_token_id} - {None}
        n = next((j for j, t in enumerate(row) if t in ends), len(row))
        text = tok.decode(row[:n], skip_special_tokens=True)
        cuts = [text.find(s) for s in stop if s and s in text]
        if cuts:
            return Generated(prompt, text[: min(cuts)], n, "stop")
        if n < len(row) and row[n] == tok.eos_token_id:
            return Generated(prompt, text, n + 1, "eos")
        return Generated(prompt, text, n, "length" if n >= max_new_tokens else "eos")


def sample_scores(
    gen: Generator,
    prompts: Sequence[Prompt],
    references: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy answers to `prompts` scored against `references` (ROUGE-L, token F1, exact
    match), and the examples (prompt, reference, output) for the report."""
    from tailorml.evaluate.text_metrics import text_scores

    got = gen.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    outputs = [g.output.strip() for g in got]
    scores = text_scores(outputs, references)
    scores["samples"] = len(outputs)
    examples = [
        {
            "prompt": p if isinstance(p, str) else p[-1]["content"],
            "reference": r,
            "output": o,
            "finish_reason": g.finish_reason,
        }
        for p, r, o, g in zip(prompts, references, outputs, got, strict=True)
    ]
    return scores, examples
