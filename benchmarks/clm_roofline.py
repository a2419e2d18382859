"""How close can any training loop get to the CPU's matrix-multiply peak on the small causal LM
of configs/pretrain-clm-shakespeare.yaml? (issue 11: the ≥ 1.5x tokens/s aim against the Hugging
Face Trainer.)

1. The attainable fp32 matmul rate on this CPU: torch.mm at the model's own shapes (2,048 tokens
   × hidden 192 / intermediate 512 / vocabulary 2,048) and at 2,048³; median of 5 timings.
2. One plain training step of the same Llama (transformers, sdpa, fused AdamW, clipping 1.0,
   batch 16 × 128 tokens): its tokens/s and model FLOP/s (the recipe's own FLOPs per token), and
   a torch.profiler breakdown of 10 steps — the share of time in matrix multiplies against the
   rest (attention, softmax, elementwise, optimizer).

If the multiplies already run near the attainable rate and take most of the step, no loop can
be much faster at the same FLOPs: the ceiling is 1 / (matmul share).

    python benchmarks/clm_roofline.py --threads 2 --json benchmarks/results/clm_roofline_DATE.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

SHAPES = [
    (2048, 2048, 2048),
    (2048, 192, 192),
    (2048, 192, 512),
    (2048, 512, 192),
    (2048, 192, 2048),
]
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def matmul_rate(m: int, k: int, n: int) -> float:
    """Median GFLOP/s of (m×k)@(k×n) over 5 timings of ~30 GFLOP each."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    flops = 2 * m * k * n
    reps = max(3, int(3e10 / flops))
    rates = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        rates.append(flops * reps / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def step_profile(steps: int) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tailorml.train.flops import flops_per_token

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=2048,
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=6,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, 2048, (16, 128))

    def step() -> None:
        model(input_ids=x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    for _ in range(5):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t0) / steps
    per_token = flops_per_token(model, 128)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    share = {
        "matmul": sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / total,
        "attention": sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
        / total,
        "log_softmax": sum(e.self_cpu_time_total for e in events if "log_softmax" in e.key) / total,
    }
    share["other"] = 1.0 - sum(share.values())
    return {
        "step_seconds": seconds,
        "tokens_per_s": 2048 / seconds,
        "flops_per_token": per_token,
        "model_gflops_per_s": 2048 * per_token / seconds / 1e9,
        **{f"share_{k}": v for k, v in share.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="timed training steps")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rates = {"x".join(map(str, s)): round(matmul_rate(*s), 1) for s in SHAPES}
    for shape, r in rates.items():
        print(f"matmul {shape}: {r:.1f} GFLOP/s")
    prof = step_profile(args.steps)
    peak = max(rates.values())
    ceiling = 1.0 / prof["share_matmul"]
    print(
        f"training step: {prof['tokens_per_s']:,.0f} tokens/s, "
        f"{prof['model_gflops_per_s']:.1f} model GFLOP/s "
        f"({prof['model_gflops_per_s'] / peak:.0%} of the best matmul rate)"
    )
    print(
        "time shares: "
        + ", ".join(f"{k[6:]} {v:.1%}" for k, v in prof.items() if k.startswith("share_"))
    )
    print(f"ceiling with every non-matmul cost removed: {ceiling:.2f}x")
    if args.json:
        out = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "matmul_gflops_per_s": rates,
            "step": prof,
            "ceiling_speedup": ceiling,
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
