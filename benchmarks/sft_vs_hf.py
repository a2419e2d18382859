"""SFT with LoRA: tailorml against the Hugging Face Trainer + peft, in one run.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/sft_vs_hf.py --steps 30 --repeats 3 --matched \
        --json benchmarks/results/sft_vs_hf_<date>.json

Same model (SmolLM2-135M-Instruct, `model.base: smollm2`, loaded by tailorml.models.causal_lm:
fp32, sdpa attention), same LoRA (r 8, alpha 16, dropout 0.05, every q/k/v/o and gate/up/down
projection), same chats (data/banking77_answers/train.jsonl less the 5% eval split, rendered by
the chat template, max_length 256) with the same token ids and loss mask (tailorml.data.sft:
labels -100 on everything but the assistant turns), same number of optimizer steps, batch size,
AdamW (weight decay 0.01, not on biases/norms), peak lr (what configs/support-sft-lora.yaml gets
by leaving `train.lr` out: 1.5e-3), warmup (10% of the steps) then linear decay, clipping 1.0,
seed, fp32 and 2 threads. Each run is a fresh child process; runs alternate (ours, peer, ours,
peer, ...) and the table reports medians.

- ours (`tailorml`): `tailor finetune configs/support-sft-lora.yaml` as a user runs it, with
  overrides: output_dir in a temp dir, train.max_steps, train.batch_size, train.threads,
  train.eval_every_steps = max_steps (one evaluation, at the end), train.log_every_steps=1,
  generate.samples=0 and a 16-row data.test (less work after training; the train split does not
  change). Packing is the config's default: a unit is a block of up to 256 tokens holding several
  chats. Timed: `train.train_seconds` of the run's eval.json, the training loop (all steps, the
  first included) without the evaluation and checkpoint.
- peer (`hf_trainer`): `Trainer` on `get_peft_model(model, LoraConfig(...))`, one example per row
  padded to the longest in the batch (`DataCollatorForSeq2Seq`), the default random sampler, the
  default "linear" schedule with the same warmup steps, no evaluation, no saving. Timed: from
  the Trainer's `on_train_begin` to `on_train_end` callback.
- `--matched` adds `hf_trainer_matched`: the peer with as many examples per step as ours (batch
  = ours' batch x examples per packed block), so that both learn from about the same number of
  tokens per step and their losses can be compared; and `tailorml_unpacked` (`data.packing=false`,
  the peer's batch): our loop on the peer's layout.

Throughput: learned tokens (those with a loss) per second of the timed part. Loss: the mean
training loss of the last `--last` logged steps (both log every step; both losses are the mean
token cross-entropy of the batch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIG = REPO / "configs" / "support-sft-lora.yaml"
# (ours, peer) pairs reported, when both ran
PAIRS = [
    ("tailorml", "hf_trainer"),
    ("tailorml", "hf_trainer_matched"),
    ("tailorml_unpacked", "hf_trainer"),
    ("tailorml_bf16", "hf_trainer_bf16"),
]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--last", type=int, default=5, help="final loss = mean of the last N steps")
    ap.add_argument("--matched", action="store_true", help="also the matched-batch runs")
    ap.add_argument(
        "--matched-repeats", type=int, default=None, help="run them in the first N repeats only"
    )
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--summarize", metavar="JSON", help="reprint (and update) a saved run's table")
    # internal: one peer run in this (child) process
    ap.add_argument("--peer-run", help=argparse.SUPPRESS)
    return ap.parse_args()


def cpu_flags() -> list[str]:
    keep = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    have = set(line.partition(":")[2].split())
    return [f for f in keep if f in have]


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor()
    line = next((x for x in text.splitlines() if x.startswith("model name")), "")
    return line.partition(":")[2].strip()


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HF_HUB_OFFLINE"] = "1"
    return env


# ---- the shared data: the train split, tokenized once ------------------------------------------
def prepare(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The chats ours trains on (the config's train split), tokenized by tailorml, written for
    the peer; the lr and warmup ours will resolve; examples per packed block."""
    from tailorml import env

    env.setup()
    from tailorml.config.load import load_config
    from tailorml.data.sft import IGNORE, encode_chats, prepare_chat_splits, units_of
    from tailorml.models.causal_lm import causal_base_folder, load_causal_tokenizer
    from tailorml.train import auto
    from tailorml.train.optim import warmup_steps

    cfg = load_config(CONFIG, [f"train.seed={args.seed}"])
    t0 = time.perf_counter()
    folder = causal_base_folder(cfg.model.base)  # converts the packaged GGUF once (untimed)
    tok = load_causal_tokenizer(folder)
    splits = prepare_chat_splits(cfg)
    enc = encode_chats(tok, splits.train, cfg.data.max_length)
    ev = encode_chats(tok, splits.eval, cfg.data.max_length)
    blocks = units_of(enc, cfg.data.max_length, True)
    hidden = json.loads((Path(folder) / "config.json").read_text())["hidden_size"]
    t, _ = auto.resolve(cfg.train.model_copy(update={"max_steps": args.steps}), 1, hidden, True)
    examples_per_block = len(enc) / len(blocks)
    data = tmp / "train_tokens.json"
    data.write_text(
        json.dumps(
            {
                "input_ids": enc.input_ids,
                "labels": enc.labels,
                "eval_input_ids": ev.input_ids,
                "eval_labels": ev.labels,
            }  # fmt: skip
        )
    )
    learned = [sum(1 for y in ys[1:] if y != IGNORE) for ys in enc.labels]
    return {
        "data_file": str(data),
        "rows": len(enc),
        "eval_rows": len(ev),
        "truncated": enc.n_truncated,
        "mean_tokens": float(enc.lengths.mean()),
        "mean_learned_tokens": sum(learned) / len(learned),
        "blocks": len(blocks),
        "examples_per_block": examples_per_block,
        "lr": float(t.lr or 0.0),
        "warmup_steps": warmup_steps(t, args.steps),
        "max_length": cfg.data.max_length,
        "model_folder": str(folder),
        "prepare_seconds": time.perf_counter() - t0,
    }


# ---- ours: `tailor finetune` in a child process -------------------------------------------------
def run_ours(
    args: argparse.Namespace, tmp: Path, name: str, batch: int, packing: bool, bf16: bool
) -> dict[str, Any]:
    out = tmp / name
    test = tmp / "test16.jsonl"
    if not test.exists():
        rows = (REPO / "data/banking77_answers/test.jsonl").read_text().splitlines()[:16]
        test.write_text("\n".join(rows) + "\n")
    tailor = Path(sys.executable).parent / "tailor"
    cmd = [str(tailor)] if tailor.exists() else [sys.executable, "-m", "tailorml.cli"]
    cmd += [
        "finetune",
        str(CONFIG),
        f"output_dir={out}",
        f"train.max_steps={args.steps}",
        f"train.batch_size={batch}",
        f"train.threads={args.threads}",
        f"train.seed={args.seed}",
        f"train.eval_every_steps={args.steps}",
        "train.log_every_steps=1",
        f"train.precision={'bf16' if bf16 else 'fp32'}",
        f"data.packing={'true' if packing else 'false'}",
        f"data.test={test}",
        "generate.samples=0",
    ]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(
            f"{name} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    ev = json.loads((out / "eval.json").read_text())
    tr = ev["train"]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    losses = [m["loss"] for m in metrics if m["split"] == "train"]
    seconds = float(tr["train_seconds"])
    tokens = round(float(tr["train_tokens_per_s"]) * seconds)
    chosen = json.loads((out / "auto.json").read_text())
    return {
        "tokens_per_s": float(tr["train_tokens_per_s"]),
        "seconds": seconds,
        "learned_tokens": tokens,
        "steps": int(tr["steps"]),
        "losses": losses,
        "loss_first": losses[0],
        "loss_final": statistics.fmean(losses[-args.last :]),
        "eval_loss": ev["eval"]["loss"],
        "lr": chosen.get("train.lr", {}).get("value"),
        "process_wall_s": wall,
        "peak_memory_mb": tr.get("peak_memory_mb"),
    }


# ---- the peer: Trainer + peft, run in this process (a child) -----------------------------------
def run_peer(args: argparse.Namespace) -> dict[str, Any]:
    spec = json.loads(args.peer_run)
    from tailorml import env

    env.setup()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    from tailorml.models.causal_lm import load_causal_lm, load_causal_tokenizer

    torch.set_num_threads(args.threads)
    data = json.loads(Path(spec["data_file"]).read_text())
    tok = load_causal_tokenizer(spec["model_folder"])
    tok.padding_side = "right"
    set_seed(args.seed)
    model = load_causal_lm(spec["model_folder"])  # fp32, sdpa: as tailorml loads it
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=TARGETS,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    rows = [
        {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": lab}
        for ids, lab in zip(data["input_ids"], data["labels"], strict=True)
    ]
    seq2seq = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)
    learned: list[int] = []  # per batch, in the order the Trainer draws them
    cells: list[tuple[int, int]] = []  # per batch: (rows x width, real tokens)

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = seq2seq(features)
        learned.append(int((batch["labels"][:, 1:] != -100).sum()))  # shifted, as the loss
        cells.append((batch["input_ids"].numel(), int(batch["attention_mask"].sum())))
        return batch

    class Clock(TrainerCallback):
        t0 = t1 = 0.0

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            Clock.t0 = time.perf_counter()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            Clock.t1 = time.perf_counter()

    targs = TrainingArguments(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=spec["batch"],
        max_steps=args.steps,
        learning_rate=spec["lr"],
        warmup_steps=spec["warmup_steps"],
        lr_scheduler_type="linear",
        weight_decay=0.01,
        max_grad_norm=1.0,
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        use_cpu=True,
        bf16=bool(spec["bf16"]),
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model, args=targs, train_dataset=rows, data_collator=collate, callbacks=[Clock()]
    )
    t0 = time.perf_counter()
    trainer.train()
    whole = time.perf_counter() - t0
    seconds = Clock.t1 - Clock.t0
    tokens = sum(learned[: args.steps])  # the DataLoader may have drawn one batch ahead
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    padded, real = (sum(c) for c in zip(*cells[: args.steps], strict=True))
    # Untimed, after training: the eval loss on the same held-out chats, measured as tailorml
    # measures it (tailorml.evaluate.lm), so both sides' models are scored the same way.
    from tailorml.data.sft import ChatEncoded
    from tailorml.evaluate.lm import loss_sum

    ev = ChatEncoded(data["eval_input_ids"], data["eval_labels"], 0)
    total, n = loss_sum(model, ev, [[i] for i in range(len(ev))], 16, tok.pad_token_id, False)
    return {
        "tokens_per_s": tokens / seconds,
        "seconds": seconds,
        "learned_tokens": tokens,
        "steps": int(trainer.state.global_step),
        "losses": losses,
        "loss_first": losses[0],
        "loss_final": statistics.fmean(losses[-args.last :]),
        "eval_loss": total / n,
        "lr": spec["lr"],
        "train_call_s": whole,
        "optimizer": f"{type(opt).__name__} ({targs.optim}, {opt.defaults.get('fused')=})",
        "padding_share": 1 - real / padded,
    }


def run_hf(
    args: argparse.Namespace, tmp: Path, prep: dict[str, Any], name: str, batch: int, bf16: bool
) -> dict[str, Any]:
    spec = {
        "data_file": prep["data_file"],
        "model_folder": prep["model_folder"],
        "output_dir": str(tmp / name),
        "batch": batch,
        "lr": prep["lr"],
        "warmup_steps": prep["warmup_steps"],
        "bf16": bf16,
    }
    cmd = [sys.executable, __file__, *sys.argv[1:], "--peer-run", json.dumps(spec)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(
            f"{name} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = wall
    return out


def main() -> None:
    args = parse()
    if args.peer_run:
        print(json.dumps(run_peer(args)))
        return
    if args.summarize:
        doc = json.loads(Path(args.summarize).read_text())
        doc.update(summarize(doc))
        Path(args.summarize).write_text(json.dumps(doc, indent=2))
        return
    flags = cpu_flags()
    native_bf16 = "amx_bf16" in flags or "avx512_bf16" in flags
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="sft_vs_hf-") as tmp_name:
        tmp = Path(tmp_name)
        prep = prepare(args, tmp)
        b = args.batch_size
        matched_batch = round(b * prep["examples_per_block"])
        # name -> (side, batch, packing, bf16)
        systems: dict[str, tuple[str, int, bool, bool]] = {
            "tailorml": ("ours", b, True, False),
            "hf_trainer": ("peer", b, False, False),
        }
        if args.matched:
            systems["tailorml_unpacked"] = ("ours", b, False, False)
            systems["hf_trainer_matched"] = ("peer", matched_batch, False, False)
        if native_bf16:
            systems["tailorml_bf16"] = ("ours", b, True, True)
            systems["hf_trainer_bf16"] = ("peer", b, False, True)
        print(
            f"cpu: {cpu_model()}, {os.cpu_count()} cores, flags: {' '.join(flags) or 'n/a'}; "
            f"bf16 rows: {'yes' if native_bf16 else 'no (no avx512_bf16 / amx_bf16: fp32 only)'}",
            flush=True,
        )
        print(
            f"train rows {prep['rows']}, {prep['mean_tokens']:.1f} tokens/row "
            f"({prep['mean_learned_tokens']:.1f} learned), {prep['blocks']} packed blocks "
            f"({prep['examples_per_block']:.2f} examples/block); lr {prep['lr']:g}, warmup "
            f"{prep['warmup_steps']} of {args.steps} steps; matched peer batch {matched_batch}",
            flush=True,
        )
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        matched = {"tailorml_unpacked", "hf_trainer_matched"}
        m_repeats = args.repeats if args.matched_repeats is None else args.matched_repeats
        for r in range(args.repeats):
            for name, (side, batch, packing, bf16) in systems.items():
                if name in matched and r >= m_repeats:
                    continue
                tag = f"{name}-{r}"
                if side == "ours":
                    res = run_ours(args, tmp, tag, batch, packing, bf16)
                else:
                    res = run_hf(args, tmp, prep, tag, batch, bf16)
                res["batch"] = batch
                runs[name].append(res)
                brief = {k: v for k, v in res.items() if k != "losses"}
                print(f"[repeat {r + 1}/{args.repeats}] {name}: {json.dumps(brief)}", flush=True)
    finished = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    info = {
        "started": started,
        "finished": finished,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_flags": flags,
        "native_bf16": native_bf16,
        "versions": versions(),
    }
    doc = {"args": vars(args), "machine": info, "data": prep, "systems": systems, "runs": runs}
    doc.update(summarize(doc))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2))


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Print the table and the ratios of a finished run; returns {"median", "ratios"}.

    Speed ratio = the median over repeats of ours / peer measured in the same repeat (adjacent
    runs, so under about the same machine load), as benchmarks/finetune_vs_hf.py reports it."""
    args, prep, systems, runs = doc["args"], doc["data"], doc["systems"], doc["runs"]
    keys = ("tokens_per_s", "seconds", "learned_tokens", "loss_first", "loss_final", "eval_loss")
    med = {s: {k: statistics.median(x[k] for x in runs[s]) for k in keys} for s in systems}
    m = doc["machine"]
    print()
    print(
        f"smollm2 + LoRA r8/a16/d0.05 on {', '.join(TARGETS)}; steps={args['steps']} "
        f"lr={prep['lr']:g} warmup={prep['warmup_steps']} threads={args['threads']} "
        f"repeats={args['repeats']} ({m['started']} - {m['finished']}); "
        f"cpu flags: {' '.join(m['cpu_flags'])}"
    )
    print("| system | batch | learned tokens/s (median; runs) | learned tokens / run | "
          f"train loss, step 1 -> mean of last {args['last']} | eval loss |")  # fmt: skip
    print("|---|---|---:|---:|---|---:|")
    for s, (_side, batch, packing, _bf16) in systems.items():
        x = med[s]
        unit = "packed blocks" if packing else "padded rows"
        each = ", ".join(f"{r['tokens_per_s']:.1f}" for r in runs[s])
        print(f"| {s} | {batch} {unit} | {x['tokens_per_s']:.1f} ({each}) | "
              f"{x['learned_tokens']:.0f} | {x['loss_first']:.3f} -> {x['loss_final']:.3f} | "
              f"{x['eval_loss']:.3f} |")  # fmt: skip
    pairs = [(a, p) for a, p in PAIRS if a in systems and p in systems]
    ratios: dict[str, dict[str, Any]] = {}
    for a, p in pairs:
        # Paired by repeat; the matched runs may have run in the first repeats only.
        per = [
            x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(runs[a], runs[p], strict=False)
        ]
        speed = statistics.median(per)
        loss_gap = med[a]["loss_final"] / med[p]["loss_final"] - 1
        eval_gap = med[a]["eval_loss"] / med[p]["eval_loss"] - 1
        ratios[f"{a}/{p}"] = {
            "speed_median_of_paired": speed,
            "per_repeat": per,
            "speed_ratio_of_medians": med[a]["tokens_per_s"] / med[p]["tokens_per_s"],
            "final_train_loss_rel_diff": loss_gap,
            "eval_loss_rel_diff": eval_gap,
        }
        print(
            f"{a} / {p}: tokens/s {speed:.2f}x (median of {len(per)} paired repeats: "
            f"{', '.join(f'{x:.2f}' for x in per)}); final train loss "
            f"{med[a]['loss_final']:.3f} vs {med[p]['loss_final']:.3f} ({100 * loss_gap:+.1f}%); "
            f"eval loss {med[a]['eval_loss']:.3f} vs {med[p]['eval_loss']:.3f} "
            f"({100 * eval_gap:+.1f}%)"
        )
    return {"median": med, "ratios": ratios}


def versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}  # fmt: skip


if __name__ == "__main__":
    main()
