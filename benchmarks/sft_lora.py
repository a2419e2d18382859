"""SFT on a causal LM: LoRA (`model.lora`, r=8, every attention and MLP projection) against full
fine-tuning, on the same model, data and batches: learned tokens/s, trainable parameters and the
process's peak RSS.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/sft_lora.py --base smollm2 \
        --batch-size 2 --steps 10

Data: data/banking77_answers/train.jsonl (Banking77 questions -> one written answer per
intent), chat-templated, max_length 256, packed blocks. Each mode runs in its own process (so
that peak RSS is its own): load the model, then `--steps` optimizer steps (forward + backward +
AdamW) of `--batch-size` blocks, the first one untimed (warm-up). Throughput counts the answer
tokens (those with a loss) per second of the timed steps. Peak RSS (`ru_maxrss`) covers the
whole process: the fp32 weights, and for full fine-tuning their gradients and AdamW state.
Learning rates: full fine-tuning `--full-lr` (1e-4, configs/support-sft.yaml's), LoRA `--lora-lr`
(default: what a LoRA run that leaves `train.lr` out gets, tailorml/train/auto.py); the training
loss of the first step and the mean of the last three is a rough check that both learn (the
same batches in the same order, no warm-up or decay).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def one(args: argparse.Namespace) -> dict[str, float]:
    from tailorml import env

    env.setup()
    import torch

    from tailorml.config.schema import ModelConfig, RunConfig
    from tailorml.data.sft import collate_lm, encode_chats, prepare_chat_splits, units_of
    from tailorml.models import build_model
    from tailorml.models.causal_lm import causal_base_folder, load_causal_tokenizer, token_loss_sums
    from tailorml.models.lora import count_parameters

    torch.set_num_threads(args.threads)
    data = REPO / "data" / "banking77_answers" / "train.jsonl"
    cfg = RunConfig.model_validate(
        {
            "data": {
                "train": str(data),
                "prompt_column": "prompt",
                "response_column": "response",
                "max_length": args.max_length,
                "limit": 256,
            },
            "task": {"type": "generation"},
        }
    )
    chats = prepare_chat_splits(cfg).train
    tok = load_causal_tokenizer(causal_base_folder(args.base))
    torch.manual_seed(0)
    lora = {"r": 8, "alpha": 16, "dropout": 0.05} if args.mode == "lora" else None
    mcfg = ModelConfig.model_validate({"base": args.base, "tiny_hidden_size": 64, "lora": lora})
    model = build_model(mcfg, [], tok, family="causal-lm").train()
    trainable, total = count_parameters(model)
    enc = encode_chats(tok, chats, args.max_length)
    units = units_of(enc, args.max_length, True)
    params = [p for p in model.parameters() if p.requires_grad]
    from tailorml.train.auto import resolve

    if args.mode == "full":
        lr = args.full_lr
    else:
        t_cfg, _ = resolve(cfg.train, 1, model.config.hidden_size, lora=True)
        lr = args.lora_lr or float(t_cfg.lr or 0)
    opt = torch.optim.AdamW(params, lr=lr)
    tokens, t, losses = 0, 0.0, []
    for s in range(args.steps + 1):
        batch = collate_lm(enc, units[s * args.batch_size : (s + 1) * args.batch_size],
                           tok.pad_token_id, True)  # fmt: skip
        start = time.perf_counter()
        sums, counts = token_loss_sums(model, batch)
        loss = sums.sum() / counts.sum().clamp(min=1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if s:  # the first step warms up
            t += time.perf_counter() - start
            tokens += int(counts.sum())
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens_per_s": tokens / t, "seconds": t, "tokens": tokens,
            "trainable": trainable, "total": total, "peak_rss_mb": rss_mb, "lr": lr,
            "loss_first": losses[0], "loss_last3": sum(losses[-3:]) / 3}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="tiny", help="tiny, smollm2 or a causal-LM folder")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full-lr", type=float, default=1e-4)
    ap.add_argument("--lora-lr", type=float, default=None)
    ap.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(one(args)))
        return
    print(f"base={args.base} batch={args.batch_size} packed blocks of {args.max_length}, "
          f"{args.steps} timed steps (+1 warm-up), threads={args.threads}")  # fmt: skip
    print("| mode | learned tokens/s | trainable / total parameters | peak RSS | lr | train loss |")
    print("|---|---:|---:|---:|---:|---|")
    for mode in ("full", "lora"):
        cmd = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        share = 100 * r["trainable"] / r["total"]
        speed = f"{r['tokens_per_s']:.1f} ({r['tokens']} tokens in {r['seconds']:.0f} s)"
        size = f"{r['trainable']:,} / {r['total']:,} ({share:.2f}%)"
        loss = f"{r['loss_first']:.2f} → {r['loss_last3']:.2f}"
        print(f"| {mode} | {speed} | {size} | {r['peak_rss_mb']:,.0f} MB | {r['lr']:g} | {loss} |")


if __name__ == "__main__":
    main()
