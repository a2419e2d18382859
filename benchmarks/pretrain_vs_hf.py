"""`tailor pretrain` against the Hugging Face Trainer, in one run: a causal LM from scratch
(`run_clm.py`'s recipe, the default config) or masked-LM pretraining continued from the packaged
MiniLM (`run_mlm.py`'s recipe: `--config configs/pretrain-mlm-fin.yaml`).

Ours: `tailor pretrain configs/pretrain-clm-shakespeare.yaml` in a child process, with overrides
(a temporary output_dir and cache, --steps steps, --threads threads, no evaluation before the
last step). Timed by its own report: eval.json's `train_seconds` / `train_tokens_per_s`, the loop
alone (no process start, tokenizer, model build, evaluation, checkpoint or report).

Peer: the transformers Trainer on a LlamaForCausalLM built from the config.json that our run
wrote (same shape, vocabulary, tied embeddings, sdpa attention), random init under the same seed,
on the *same token blocks*: the training blocks read from our run's token shards (same trained
BPE tokenizer, same block_size, same held-out split), fed as `run_clm.py` feeds them (input_ids,
labels = input_ids, `default_data_collator`). Same batch, steps, lr, warmup steps, cosine
schedule, weight decay 0.01, grad clipping 1.0, AdamW betas/eps, seed, threads; no evaluation and
no saving in the timed part. Timed: `trainer.train()`'s own `train_runtime`. Also in a child
process, so neither inherits the other's allocator or thread state.

Loss: both models are scored after training on the same held-out blocks (the evenly spaced
`pretrain.max_eval_blocks` = 100 of them that our run scores), token-weighted mean next-token
cross-entropy; and the last logged training loss (mean of the last 20 steps).

Masked LM (objective mlm in the config): the peer is `AutoModelForMaskedLM` loaded from the same
base folder (its fresh MLM head drawn under the same seed), fed our run's blocks wrapped as ours
reads them ([CLS] block [SEP]) through `DataCollatorForLanguageModeling` at the same mask_prob
(run_mlm.py's 80/10/10 masking). Held-out loss: both models scored on the same held-out blocks with
the same masks (our run's evaluation masks), token-weighted cross-entropy over the masked tokens.

Runs alternate (ours, peer, ours, peer, ...); the table reports medians and the per-repeat ratio.

    python benchmarks/pretrain_vs_hf.py --steps 100 --repeats 3 --json benchmarks/results/X.json
    python benchmarks/pretrain_vs_hf.py --config configs/pretrain-mlm-fin.yaml --steps 40 \
        --batch-size 16 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIG = REPO / "configs/pretrain-clm-shakespeare.yaml"


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, help="override train.batch_size on both sides")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--peer-child", help=argparse.SUPPRESS)  # internal: run the peer, write JSON
    ap.add_argument("--ours-run", help=argparse.SUPPRESS)
    return ap.parse_args()


def child_env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def overrides(args: argparse.Namespace) -> list[str]:
    """Config overrides both sides apply (the peer reads the same config)."""
    out = [f"train.max_steps={args.steps}"]
    if args.batch_size:
        out.append(f"train.batch_size={args.batch_size}")
    return out


def run_ours(args: argparse.Namespace, out: Path, cache: Path) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "tailorml.cli", "pretrain", args.config,
        f"output_dir={out}", f"pretrain.cache_dir={cache}",
        f"train.threads={args.threads}", "train.eval_every_steps=1000000",
        "train.log_every_steps=20", "pretrain.samples=0", *overrides(args),
    ]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with (out.parent / f"{out.name}.log").open("w") as log:
        subprocess.run(cmd, check=True, cwd=REPO, env=child_env(), stdout=log, stderr=log)
    res = json.loads((out / "eval.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train_rows = [r for r in rows if "loss" in r and "lr" in r]
    tr = res["train"]
    return {
        "tokens_per_s": tr["train_tokens_per_s"],
        "seconds": tr["train_seconds"],
        "tokens": tr["tokens_seen"],
        "eval_loss": res["eval"]["loss"],
        "eval_perplexity": res["eval"]["perplexity"],
        "last_train_loss": train_rows[-1]["loss"] if train_rows else None,
    }


def run_peer(args: argparse.Namespace, ours_run: Path, out: Path) -> dict[str, Any]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--config", args.config,
        "--steps", str(args.steps), "--threads", str(args.threads),
        "--peer-child", str(out), "--ours-run", str(ours_run),
    ]  # fmt: skip
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    with (out / "trainer.log").open("w") as log:
        subprocess.run(cmd, check=True, cwd=REPO, env=child_env(), stdout=log, stderr=log)
    return json.loads((out / "peer.json").read_text())


def peer_child(args: argparse.Namespace) -> None:
    """The Trainer run (run_clm.py's or run_mlm.py's recipe) on our run's blocks and model."""
    import numpy as np
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    from tailorml.config.load import load_config
    from tailorml.data.masking import Masker, eval_rng
    from tailorml.data.sft import IGNORE
    from tailorml.data.shards import Blocks, Shards, eval_block_ids
    from tailorml.models.pretrain import load_base
    from tailorml.train.optim import warmup_steps

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, overrides(args))
    p, t = cfg.pretrain, cfg.train
    assert p is not None and t.lr is not None
    mlm = p.objective == "mlm"
    ours = Path(args.ours_run)
    folder = Path(json.loads((ours / "data_summary.json").read_text())["shards"])
    shards = Shards(folder, json.loads((folder / "index.json").read_text()), hit=True)
    train_blocks = Blocks(shards, "train", p.block_size)
    eval_blocks = Blocks(shards, "eval", p.block_size)
    eval_ids = eval_block_ids(len(eval_blocks), p.max_eval_blocks)

    set_seed(t.seed)
    if mlm:  # the same base and tokenizer ours continued from; a fresh head under the same seed
        model, tok = load_base(cfg.model.base, "mlm")
        head = np.asarray([tok.cls_token_id], np.int64)
        tail = np.asarray([tok.sep_token_id], np.int64)

        def wrap(b: np.ndarray) -> np.ndarray:
            return np.concatenate([head, b, tail])
    else:
        config = AutoConfig.from_pretrained(str(ours / "model"))
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")

        def wrap(b: np.ndarray) -> np.ndarray:
            return b

    class DS(torch.utils.data.Dataset):
        def __init__(self, blocks: Blocks):
            self.blocks = blocks

        def __len__(self) -> int:
            return len(self.blocks)

        def __getitem__(self, i: int) -> dict[str, Any]:
            ids = wrap(np.asarray(self.blocks[i])).tolist()
            if mlm:  # run_mlm.py: the collator masks (80/10/10) and makes the labels
                return {"input_ids": ids}
            return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}

    # Blocks passed through the collator: an epoch's last batch can be partial. An upper bound
    # on those trained: accelerate's loader fetches one batch ahead, so the last one fetched is
    # collated but not trained (in the peer's favour).
    rows_fed = [0]
    base_collate: Any = (
        DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=p.mask_prob)
        if mlm
        else default_data_collator
    )

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        rows_fed[0] += len(features)
        return dict(base_collate(features))

    out = Path(args.peer_child)
    schedule = t.schedule if t.schedule in ("linear", "cosine") else "linear"
    targs = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=t.batch_size,
        max_steps=args.steps,
        learning_rate=t.lr,
        warmup_steps=warmup_steps(t, args.steps),
        lr_scheduler_type=schedule,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm or 0.0,  # 0 = no clipping, as our None
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=20,
        report_to="none",
        seed=t.seed,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=DS(train_blocks),
        data_collator=collate,
    )
    metrics = trainer.train().metrics
    seconds = float(metrics["train_runtime"])
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        if mlm:  # our run's evaluation masks, block by block
            vocab = len(tok)
            masker = Masker(p.mask_prob, tok.mask_token_id, tok.all_special_ids, vocab)
            for k in range(0, len(eval_ids), 64):
                pairs = [
                    masker.mask(wrap(np.asarray(eval_blocks[int(i)])), eval_rng(t.seed, int(i)))
                    for i in eval_ids[k : k + 64]
                ]
                x = torch.as_tensor(np.stack([a for a, _ in pairs]))
                y = torch.as_tensor(np.stack([b for _, b in pairs]))
                logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
                sel = y != IGNORE
                ce = torch.nn.functional.cross_entropy(logits[sel].float(), y[sel], reduction="sum")
                total += float(ce)
                count += int(sel.sum())
        else:
            for k in range(0, len(eval_ids), 128):
                x = torch.as_tensor(np.stack([eval_blocks[int(i)] for i in eval_ids[k : k + 128]]))
                loss = model(input_ids=x, labels=x).loss  # mean over the shifted tokens
                n = x.shape[0] * (x.shape[1] - 1)
                total += float(loss) * n
                count += n
    tokens = rows_fed[0] * p.block_size
    loss = total / count
    res = {
        "tokens_per_s": round(tokens / seconds, 1),
        "seconds": round(seconds, 3),
        "tokens": tokens,
        "eval_loss": loss,
        "eval_perplexity": float(np.exp(loss)),
        "last_train_loss": losses[-1] if losses else None,
        "optim": str(targs.optim),
    }
    (out / "peer.json").write_text(json.dumps(res))


def main() -> None:
    args = parse()
    if args.peer_child:
        peer_child(args)
        return
    import platform

    import torch
    import transformers

    systems = ["tailorml", "hf_trainer"]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        last_ours = None
        for r in range(args.repeats):
            for s in systems:
                out = Path(tmp) / f"{s}-{r}"
                if s == "tailorml":
                    res = run_ours(args, out, cache)
                    last_ours = out
                else:
                    out.mkdir(parents=True)
                    assert last_ours is not None
                    res = run_peer(args, last_ours, out)
                runs[s].append(res)
                print(f"[repeat {r + 1}/{args.repeats}] {s}: {json.dumps(res)}", flush=True)
    keys = ["tokens_per_s", "seconds", "eval_loss", "eval_perplexity", "last_train_loss"]
    med = {
        s: {k: statistics.median(float(x[k] or "nan") for x in runs[s]) for k in keys}
        for s in systems
    }
    ratios = [
        a["tokens_per_s"] / b["tokens_per_s"]
        for a, b in zip(runs["tailorml"], runs["hf_trainer"], strict=True)
    ]
    gap = med["tailorml"]["eval_loss"] / med["hf_trainer"]["eval_loss"] - 1
    print()
    print(f"steps={args.steps} threads={args.threads} repeats={args.repeats} config={args.config}")
    print(f"{'system':<14}{'tokens/s':>10}{'seconds':>9}{'eval loss':>11}{'ppl':>8}{'train':>8}")
    for s in systems:
        m = med[s]
        print(
            f"{s:<14}{m['tokens_per_s']:>10.1f}{m['seconds']:>9.1f}{m['eval_loss']:>11.4f}"
            f"{m['eval_perplexity']:>8.2f}{m['last_train_loss']:>8.4f}"
        )
    print(
        f"speed ratio tailorml / hf_trainer: {statistics.median(ratios):.2f}x "
        f"(per-repeat {', '.join(f'{x:.2f}' for x in ratios)}); "
        f"held-out loss difference {gap * 100:+.2f}%"
    )
    if args.json:
        info = {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        }
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "versions": info,
                    "runs": runs,
                    "median": med,
                    "ratios": ratios,
                    "median_ratio": statistics.median(ratios),
                    "eval_loss_gap": gap,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
