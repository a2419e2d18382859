"""The `tailor` command: one verb per recipe, thin (parse -> call the recipe)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from tailorml.errors import TailorError

app = typer.Typer(
    help="tailorml: fine-tune, evaluate, compress and serve pretrained models on your own data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")

# Apps: each one is its own typer sub-app in tailorml/apps/<name>/cli.py.
from tailorml.apps.finwatch.cli import app as finwatch_app  # noqa: E402
from tailorml.apps.recommend.cli import app as recommend_app  # noqa: E402
from tailorml.apps.support.cli import app as support_app  # noqa: E402

app.add_typer(finwatch_app, name="finwatch")
app.add_typer(support_app, name="support")
app.add_typer(recommend_app, name="recommend")


def _fail(exc: TailorError) -> NoReturn:
    from tailorml.train.progress import console

    console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


# The run options `tailor finetune` and `tailor pretrain` share.
ResumeOpt = Annotated[
    bool, typer.Option(help="Continue from the latest checkpoint (an error if there is none).")
]
ResumeOrStartOpt = Annotated[
    bool, typer.Option(help="Continue from the latest checkpoint if there is one, else start.")
]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing run folder.")]
NprocOpt = Annotated[
    int, typer.Option(help="Processes on this machine (launches torchrun; CPU: gloo).")
]


@app.command()
def finetune(
    config: Annotated[Path, typer.Argument(help="YAML run config (see configs/).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.lr=3e-5 train.epochs=2")
    ] = None,
    resume: ResumeOpt = False,
    resume_or_start: ResumeOrStartOpt = False,
    overwrite: OverwriteOpt = False,
    nproc: NprocOpt = 1,
) -> None:
    """Fine-tune a pretrained model on your data (classifier heads, or a causal LM for
    `task.type: generation`) and write a run folder."""
    from tailorml.config.load import load_config

    _relaunch(nproc, config, overrides, resume, resume_or_start, overwrite, "finetune")
    try:
        cfg = load_config(config, overrides or [])
        run = _training_recipe(cfg)
        run(
            cfg,
            resume=resume or resume_or_start,
            overwrite=overwrite,
            start_if_nothing=resume_or_start,
        )
    except TailorError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def pretrain(
    config: Annotated[Path, typer.Argument(help="YAML run config with a `pretrain:` section.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Dotted overrides, e.g. pretrain.block_size=256 train.max_steps=100"),
    ] = None,
    resume: ResumeOpt = False,
    resume_or_start: ResumeOrStartOpt = False,
    overwrite: OverwriteOpt = False,
    nproc: NprocOpt = 1,
) -> None:
    """Pretrain on unlabeled text (masked-LM or causal-LM), from scratch or continuing a base;
    writes a run folder whose model/ `tailor finetune` takes as `model.base`."""
    from tailorml.config.load import load_config
    from tailorml.recipes.pretrain import pretrain as run

    _relaunch(nproc, config, overrides, resume, resume_or_start, overwrite, "pretrain")
    try:
        cfg = load_config(config, overrides or [])
        if cfg.pretrain is None:
            raise TailorError(
                f"{config} has no `pretrain:` section. `tailor pretrain` needs one (see "
                "configs/pretrain-*.yaml); fine-tuning configs run with `tailor finetune`."
            )
        run(
            cfg,
            resume=resume or resume_or_start,
            overwrite=overwrite,
            start_if_nothing=resume_or_start,
        )
    except TailorError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _relaunch(
    nproc: int,
    config: Path,
    overrides: list[str] | None,
    resume: bool,
    resume_or_start: bool,
    overwrite: bool,
    verb: str,
) -> None:
    """`--nproc N` outside torchrun: run the same command under torchrun (does not return)."""
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        flags = ["--resume"] if resume else []
        flags += ["--resume-or-start"] if resume_or_start else []
        flags += ["--overwrite"] if overwrite else []
        _launch_torchrun(nproc, config, overrides or [], flags, verb=verb)


def _training_recipe(cfg: Any) -> Any:
    """The recipe that trains this config's model family (`recipes.training_recipe`)."""
    from tailorml.recipes import training_recipe

    if cfg.pretrain is not None:
        raise TailorError(
            "This config has a `pretrain:` section: run it with `tailor pretrain CONFIG`."
        )
    return training_recipe(cfg)


@app.command()
def tune(
    config: Annotated[Path, typer.Argument(help="YAML run config with a `tune:` section.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides.")] = None,
    trials: Annotated[
        int | None, typer.Option(help="Trials of the study (overrides tune.trials).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting trials after this many seconds.")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage URL (overrides tune.storage; PostgreSQL: several workers)."
        ),
    ] = None,
) -> None:
    """Search hyperparameters: a study of fine-tuning trials (Optuna TPE, pruning); resumable."""
    from tailorml.config.load import load_config
    from tailorml.tune.study import tune as run

    # The budget flags are overrides of their config keys, so they are checked as those are
    # (`--trials 0` is refused, not read as "the config's count").
    budget = [f"tune.trials={trials}"] if trials is not None else []
    budget += [f"tune.timeout_s={timeout}"] if timeout is not None else []
    try:
        cfg = load_config(config, [*(overrides or []), *budget])
        run(cfg, storage=storage)
    except TailorError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _launch_torchrun(
    nproc: int, config: Path, overrides: list[str], flags: list[str], verb: str = "finetune"
) -> NoReturn:
    """Re-run this command under torchrun with `nproc` local processes."""
    import subprocess

    from tailorml.config.load import load_config
    from tailorml.launch import torchrun_command

    try:
        load_config(config, overrides)  # fail fast, once, before starting processes
    except TailorError as exc:
        _fail(exc)
    args = [verb, str(config), *overrides, *flags]
    raise typer.Exit(subprocess.call(torchrun_command(nproc, args)))


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides.")] = None,
) -> None:
    """Check a config, its base model and its data (files, columns, every row); report every
    problem at once."""
    from tailorml.recipes.validate import validate_config
    from tailorml.train.progress import console

    try:
        problems = validate_config(config, overrides or [])
    except TailorError as exc:
        _fail(exc)
    if problems:
        console.print(f"[bold red]{config}: {len(problems)} problem(s)[/]")
        for p in problems:
            console.print(f"- {p}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    console.print(f"[green]{config}: OK[/]")


SCHEMAS = {
    "run": ("tailorml.config.schema", "RunConfig"),
    "compress": ("tailorml.config.compress", "CompressOptions"),
    "serve": ("tailorml.serve.settings", "ServeSettings"),
}


@config_app.command("schema")
def config_schema(
    which: Annotated[
        str, typer.Argument(help="run (a run config), compress or serve (their --config files).")
    ] = "run",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON Schema instead.")] = False,
) -> None:
    """Print every config field with its type, default and doc."""
    import importlib

    from rich.console import Console
    from rich.table import Table

    from tailorml.config.load import schema_lines

    if which not in SCHEMAS:
        _fail(TailorError(f"No schema {which!r}. Choose one of: {', '.join(SCHEMAS)}."))
    module, name = SCHEMAS[which]
    model = getattr(importlib.import_module(module), name)
    if as_json:
        print(json.dumps(model.model_json_schema(), indent=2))
        return
    table = Table(show_edge=False, show_lines=False)
    for col in ("key", "type", "default", "description"):
        table.add_column(col, overflow="fold")
    for row in schema_lines(model):
        table.add_row(*row)
    Console(width=160).print(table)


@app.command()
def tasks() -> None:
    """List the task types (`task.type`), what each predicts and what its data looks like."""
    from rich.console import Console

    from tailorml.tasks import all_tasks
    from tailorml.tasks.base import SEQUENCE_CLASSIFIER, Task

    out = Console(width=120)
    for t in all_tasks():
        rows, data = t.example_rows(2, seed=0)
        out.print(f"[bold]{t.name}[/]: {t.description}", highlight=False)
        if isinstance(t, Task) and t.family == SEQUENCE_CLASSIFIER:
            columns = {"text_column": "text", "label_column": "label", **data}
            cols = f"text: `{columns['text_column']}`"
            if t.pair:
                cols += f", second text: `{columns['text_pair_column']}`"
            cols += f", label: `{columns['label_column']}`"
        else:  # another family names its own columns
            cols = ", ".join(f"{k.removesuffix('_column')}: `{v}`" for k, v in data.items())
        out.print(f"  columns   {cols}", highlight=False)
        out.print(f"  label     {t.label_help}", highlight=False)
        out.print(
            f"  metrics   {', '.join(t.metrics)} (best checkpoint by {t.default_metric})",
            highlight=False,
        )
        for row in rows:
            out.print(f"  example   {json.dumps(row)}", highlight=False, soft_wrap=True)
        if data:
            keys = " ".join(f"data.{k}={v}" for k, v in data.items())
            out.print(f"  config    {keys}", highlight=False)


@app.command()
def evaluate(
    run_dir: Annotated[
        Path, typer.Argument(help="Run folder, RUN_DIR/model or RUN_DIR/compressed/<variant>.")
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Labeled file (.csv/.jsonl/.parquet); generation runs: default their test split."
        ),
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Write metrics JSON here.")] = None,
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip and count bad rows.")] = False,
    text_column: Annotated[str | None, typer.Option(help="Override the text column.")] = None,
    label_column: Annotated[str | None, typer.Option(help="Override the label column.")] = None,
    head: Annotated[
        str | None, typer.Option(help="Multi-task models: the head whose labels the file has.")
    ] = None,
    samples: Annotated[
        int | None, typer.Option(help="Generation runs: prompts answered and scored.")
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Generation runs: longest answer (default: the run's).")
    ] = None,
) -> None:
    """Score a model folder (torch or ONNX) on a labeled file and print its metrics; a
    generation run: loss, perplexity and scored greedy answers."""
    from tailorml.files import atomic_json, writable
    from tailorml.predictors.generator import is_causal_lm
    from tailorml.recipes.evaluate import evaluate_file
    from tailorml.tasks.base import CAUSAL_LM
    from tailorml.tasks.folder import folder_family

    try:
        family = folder_family(run_dir)
        if family == CAUSAL_LM or (family is None and is_causal_lm(run_dir)):
            from tailorml.recipes.generate import evaluate_generation

            metrics = evaluate_generation(
                run_dir, data, samples=samples, max_new_tokens=max_new_tokens
            )
        elif data is None:
            raise TailorError("--data FILE is required: the labeled file to score the model on.")
        else:
            metrics = evaluate_file(
                run_dir,
                data,
                on_bad_rows="skip" if skip_bad_rows else "error",
                text_column=text_column,
                label_column=label_column,
                head=head,
            )
    except TailorError as exc:
        _fail(exc)
    if output:
        try:
            atomic_json(writable(output, "--output"), metrics)
        except TailorError as exc:
            _fail(exc)
    shown = {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}
    print(json.dumps(shown, indent=2))


@app.command()
def predict(
    run_dir: Annotated[
        Path | None,
        typer.Argument(help="Run folder, RUN_DIR/model or RUN_DIR/compressed/<variant>."),
    ] = None,
    input: Annotated[str, typer.Option("--input", "-i", help="File, or - for stdin.")] = "-",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="JSONL out.")] = None,
    top_k: Annotated[int, typer.Option(help="Scores of the k best labels.")] = 3,
    text_column: Annotated[str | None, typer.Option(help="Column with the text.")] = None,
    url: Annotated[
        str | None, typer.Option(help="Ask a `tailor serve` service instead of loading a model.")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(help="API key for --url (or $TAILORML_API_KEY).", show_default=False),
    ] = None,
) -> None:
    """Predict labels for texts; writes JSONL (input, label, score, top_k)."""
    from tailorml.data.inputs import read_inputs
    from tailorml.recipes.predict import default_columns, predict_rows

    if url is not None:
        from tailorml.serve.remote import predict_remote

        try:
            _write_jsonl(predict_remote(url, api_key, input, top_k, text_column), output)
        except TailorError as exc:
            _fail(exc)
        return
    if run_dir is None:
        _fail(TailorError("give a RUN_DIR (or a model folder), or --url."))
    try:
        col, pair = default_columns(run_dir)
        rows = read_inputs(input, text_column or col, pair)
        _write_jsonl(predict_rows(run_dir, rows, top_k=top_k), output)
    except TailorError as exc:
        _fail(exc)


@app.command()
def generate(
    model: Annotated[
        str, typer.Argument(help="Generation run, RUN_DIR/model, a causal-LM folder or smollm2.")
    ],
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeatable).")
    ] = None,
    input: Annotated[
        str | None,
        typer.Option(
            "--input", "-i", help="File or - (stdin): lines of text, or JSONL with prompt/messages."
        ),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="JSONL out.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy; > 0 samples.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Sampling: nucleus share.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sampling: the k likeliest tokens (0 = all).")] = 0,
    seed: Annotated[int | None, typer.Option(help="Sampling: seed (repeatable output).")] = None,
    stop: Annotated[
        list[str] | None,
        typer.Option("--stop", help="Stop string (repeatable); the output ends before it."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts generated together.")] = 8,
) -> None:
    """Answer prompts with a causal LM; writes JSONL (input, output, tokens, finish_reason)."""
    from tailorml.data.sft import read_prompts
    from tailorml.recipes.generate import generate_rows

    try:
        if bool(prompt) == (input is not None):
            raise TailorError("Give --prompt TEXT (repeatable) or --input FILE (or -), not both.")
        prompts: list[Any] = list(prompt) if prompt else read_prompts(str(input))
        rows = generate_rows(
            model,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop or [],
            batch_size=batch_size,
        )
        _write_jsonl(rows, output)
    except TailorError as exc:
        _fail(exc)


@app.command()
def merge(
    run_dir: Annotated[Path, typer.Argument(help="A LoRA run folder (or its RUN_DIR/model).")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Folder to write; default RUN_DIR/merged."),
    ] = None,
) -> None:
    """Merge a LoRA run's adapter into its base: a plain Hugging Face model folder."""
    from tailorml.recipes.merge import merge_run
    from tailorml.train.progress import console

    try:
        out = merge_run(run_dir, output)
    except TailorError as exc:
        _fail(exc)
    console.print(f"Merged model: {out}", highlight=False)


def _compress_doc(name: str) -> str:
    from tailorml.config.compress import CompressOptions

    return str(CompressOptions.model_fields[name].description)


@app.command()
def compress(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by `tailor finetune`.")],
    config: Annotated[
        Path | None,
        typer.Option(help="YAML of these options (`tailor config schema compress`); flags win."),
    ] = None,
    budget: Annotated[float | None, typer.Option(help=_compress_doc("budget"))] = None,
    variants: Annotated[
        list[str] | None, typer.Option("--variants", help=_compress_doc("variants"))
    ] = None,
    threads: Annotated[int | None, typer.Option(help=_compress_doc("threads"))] = None,
    repeats: Annotated[int | None, typer.Option(help=_compress_doc("repeats"))] = None,
    latency_texts: Annotated[int | None, typer.Option(help=_compress_doc("latency_texts"))] = None,
    data: Annotated[Path | None, typer.Option(help=_compress_doc("data"))] = None,
    prune_heads: Annotated[float | None, typer.Option(help=_compress_doc("prune_heads"))] = None,
    prune_ffn: Annotated[float | None, typer.Option(help=_compress_doc("prune_ffn"))] = None,
    recovery_epochs: Annotated[
        float | None, typer.Option(help=_compress_doc("recovery_epochs"))
    ] = None,
    prune_steps: Annotated[int | None, typer.Option(help=_compress_doc("prune_steps"))] = None,
    prune_target_params: Annotated[
        int | None, typer.Option(help=_compress_doc("prune_target_params"))
    ] = None,
    student_layers: Annotated[
        int | None, typer.Option(help=_compress_doc("student_layers"))
    ] = None,
    distill_epochs: Annotated[
        float | None, typer.Option(help=_compress_doc("distill_epochs"))
    ] = None,
    distill_hidden_weight: Annotated[
        float | None, typer.Option(help=_compress_doc("distill_hidden_weight"))
    ] = None,
    distill_attention_weight: Annotated[
        float | None, typer.Option(help=_compress_doc("distill_attention_weight"))
    ] = None,
    train_threads: Annotated[int | None, typer.Option(help=_compress_doc("train_threads"))] = None,
    vocab_margin: Annotated[int | None, typer.Option(help=_compress_doc("vocab_margin"))] = None,
    max_ppl_increase: Annotated[
        float | None, typer.Option(help=_compress_doc("max_ppl_increase"))
    ] = None,
    prompts: Annotated[int | None, typer.Option(help=_compress_doc("prompts"))] = None,
    new_tokens: Annotated[int | None, typer.Option(help=_compress_doc("new_tokens"))] = None,
    ppl_rows: Annotated[int | None, typer.Option(help=_compress_doc("ppl_rows"))] = None,
) -> None:
    """Quantize, prune, distill and export a run; measure each variant; choose within budget.
    A generation run: int8 in tokens/s and perplexity, chosen within --max-ppl-increase."""
    from tailorml.config.compress import CompressOptions
    from tailorml.config.load import load_options
    from tailorml.recipes.compress import compress as run

    flags = dict(
        budget=budget,
        variants=variants,
        threads=threads,
        repeats=repeats,
        latency_texts=latency_texts,
        data=data,
        prune_heads=prune_heads,
        prune_ffn=prune_ffn,
        recovery_epochs=recovery_epochs,
        prune_steps=prune_steps,
        prune_target_params=prune_target_params,
        student_layers=student_layers,
        distill_epochs=distill_epochs,
        distill_hidden_weight=distill_hidden_weight,
        distill_attention_weight=distill_attention_weight,
        train_threads=train_threads,
        vocab_margin=vocab_margin,
        max_ppl_increase=max_ppl_increase,
        prompts=prompts,
        new_tokens=new_tokens,
        ppl_rows=ppl_rows,
    )
    try:
        opts = load_options(CompressOptions, config, flags, "compress")
        run(run_dir, opts)
    except TailorError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _write_jsonl(items: Any, output: Path | None) -> None:
    if output is None:
        for item in items:
            sys.stdout.write(json.dumps(item, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    from tailorml.files import atomic_jsonl, writable

    atomic_jsonl(writable(output), items)


# `tailor serve` lives in tailorml/serve/cli.py.
from tailorml.serve.cli import serve as _serve  # noqa: E402

app.command("serve")(_serve)


def main() -> None:
    from tailorml import env

    env.setup()  # before any command imports torch
    app()


if __name__ == "__main__":
    main()
