"""SFT throughput: packed blocks vs one padded row per example, on the same model and data.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/sft_packing.py --base tiny
    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/sft_packing.py --base smollm2 \
        --steps 3 --repeats 3

Data: data/banking77_answers/train.jsonl (Banking77 questions -> one written answer per
intent), chat-templated by the model's tokenizer, max_length 256. Each repetition trains
`--steps` optimizer steps of `--batch-size` units from the same starting weights, for both
layouts in alternating order, and counts the learned (answer) tokens per second of wall time
(forward + backward + AdamW step). A packed unit is a block of several examples; a padded unit is
one example, so for the same batch size a packed step holds more examples: tokens/s is the fair
comparison. Prints a table ending in the ratio (medians of the repetitions).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="tiny", help="tiny, smollm2 or a causal-LM folder")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from tailorml import env

    env.setup()
    import torch

    from tailorml.config.schema import ModelConfig, RunConfig
    from tailorml.data.sft import collate_lm, encode_chats, prepare_chat_splits, units_of
    from tailorml.models.causal_lm import (
        build_causal_lm,
        causal_base_folder,
        load_causal_tokenizer,
        token_loss_sums,
    )

    torch.set_num_threads(args.threads)
    data = REPO / "data" / "banking77_answers" / "train.jsonl"
    cfg = RunConfig.model_validate(
        {
            "data": {
                "train": str(data),
                "prompt_column": "prompt",
                "response_column": "response",
                "max_length": args.max_length,
                "limit": args.rows,
            },
            "task": {"type": "generation"},
        }
    )
    chats = prepare_chat_splits(cfg).train
    t0 = time.perf_counter()
    tok = load_causal_tokenizer(causal_base_folder(args.base))
    torch.manual_seed(0)
    model0 = build_causal_lm(ModelConfig(base=args.base, tiny_hidden_size=64), [], tok)
    load_s = time.perf_counter() - t0
    enc = encode_chats(tok, chats, args.max_length)
    layouts = {"packed": units_of(enc, args.max_length, True)}
    layouts["padded"] = units_of(enc, args.max_length, False)

    def run(packed: bool) -> tuple[float, int, int]:
        model = copy.deepcopy(model0).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        units = layouts["packed" if packed else "padded"]
        tokens = examples = 0
        t = time.perf_counter()
        for s in range(args.steps):
            batch_units = units[s * args.batch_size : (s + 1) * args.batch_size]
            batch = collate_lm(enc, batch_units, tok.pad_token_id, packed)
            sums, counts = token_loss_sums(model, batch)
            (sums.sum() / counts.sum().clamp(min=1)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            tokens += int(counts.sum())
            examples += sum(len(u) for u in batch_units)
        return tokens / (time.perf_counter() - t), tokens, examples

    results: dict[str, list[float]] = {"packed": [], "padded": []}
    seen: dict[str, tuple[int, int]] = {}
    for r in range(args.repeats):
        for name in ("packed", "padded") if r % 2 == 0 else ("padded", "packed"):
            tps, tokens, examples = run(name == "packed")
            results[name].append(tps)
            seen[name] = (tokens, examples)
    flags = ""
    if platform.system() == "Linux":
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        line = next((x for x in out.splitlines() if x.startswith("Flags")), "")
        keep = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "avx2")
        flags = " ".join(f for f in line.split() if f in keep)
    print(f"base={args.base} rows={len(chats)} max_length={args.max_length} ")
    print(f"batch={args.batch_size} units, steps={args.steps}, repeats={args.repeats}, ")
    print(f"threads={args.threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"cpu flags: {flags or 'n/a'}; model+tokenizer load {load_s:.1f} s")
    print(f"units: packed {len(layouts['packed'])} blocks, padded {len(layouts['padded'])} rows")
    print("| layout | learned tokens/s (median) | runs | answer tokens / examples per run |")
    print("|---|---:|---|---|")
    for name in ("packed", "padded"):
        runs = ", ".join(f"{x:.0f}" for x in results[name])
        tokens, examples = seen[name]
        median = statistics.median(results[name])
        print(f"| {name} | {median:.0f} | {runs} | {tokens} / {examples} |")
    ratio = statistics.median(results["packed"]) / statistics.median(results["padded"])
    print(f"packed / padded tokens/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
