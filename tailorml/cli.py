"""The `tailor` command: one verb per recipe, thin (parse -> call the recipe)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tailorml import runtime  # noqa: F401  (env defaults before torch is imported)
from tailorml.errors import TailorError

app = typer.Typer(
    help="tailorml: fine-tune, evaluate, compress and serve pretrained models on your own data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the run config.", no_args_is_help=True)
app.add_typer(config_app, name="config")

# Apps: each one is its own typer sub-app in tailorml/apps/<name>/cli.py.
from tailorml.apps.finwatch.cli import app as finwatch_app  # noqa: E402

app.add_typer(finwatch_app, name="finwatch")


def _fail(exc: TailorError) -> None:
    from tailorml.train.progress import console

    console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def finetune(
    config: Annotated[Path, typer.Argument(help="YAML run config (see configs/).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.lr=3e-5 train.epochs=2")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    nproc: Annotated[
        int, typer.Option(help="Processes on this machine (launches torchrun; CPU: gloo).")
    ] = 1,
) -> None:
    """Fine-tune a pretrained encoder on labeled data and write a run folder."""
    from tailorml.config.load import load_config
    from tailorml.recipes.finetune import finetune as run

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _launch_torchrun(nproc, config, overrides or [], resume, overwrite)
        return
    try:
        cfg = load_config(config, overrides or [])
        run(cfg, resume=resume, overwrite=overwrite)
    except TailorError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _launch_torchrun(
    nproc: int, config: Path, overrides: list[str], resume: bool, overwrite: bool
) -> None:
    """Re-run this command under torchrun with `nproc` local processes."""
    import subprocess

    from tailorml.config.load import load_config

    try:
        load_config(config, overrides)  # fail fast, once, before starting processes
    except TailorError as exc:
        _fail(exc)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}", "-m", "tailorml.cli", "finetune", str(config), *overrides]
    cmd += ["--resume"] if resume else []
    cmd += ["--overwrite"] if overwrite else []
    raise typer.Exit(subprocess.call(cmd))


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides.")] = None,
) -> None:
    """Check a config and its data files; report every problem at once."""
    from tailorml.config.load import apply_overrides, read_yaml, validate_mapping
    from tailorml.train.progress import console

    problems: list[str] = []
    try:
        raw = apply_overrides(read_yaml(config), overrides or [])
        cfg, problems = validate_mapping(raw)
    except TailorError as exc:
        _fail(exc)
        return
    if cfg is not None:
        problems.extend(_check_inputs(cfg))
    if problems:
        console.print(f"[bold red]{config}: {len(problems)} problem(s)[/]")
        for p in problems:
            console.print(f"- {p}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    console.print(f"[green]{config}: OK[/]")


def _check_inputs(cfg: Any) -> list[str]:
    """Files exist, columns exist, model base resolves — without loading the model."""
    from tailorml.data.readers import read_table
    from tailorml.models.base import resolve_base

    problems: list[str] = []
    try:
        resolve_base(cfg.model.base)
    except TailorError as exc:
        problems.extend(exc.problems)
    d = cfg.data
    cols: dict[str, str | None] = {
        "data.text_column": d.text_column,
        "data.label_column": d.label_column,
    }
    if cfg.task.type == "pair-classification":
        cols["data.text_pair_column"] = d.text_pair_column
    for key in ("train", "eval", "test"):
        path = getattr(d, key)
        if path is None:
            continue
        try:
            read_table(path, limit=5, key=f"data.{key}").require_columns(cols)
        except TailorError as exc:
            problems.extend(exc.problems)
    return problems


@config_app.command("schema")
def config_schema(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON Schema instead.")] = False,
) -> None:
    """Print every config field with its type, default and doc."""
    from rich.console import Console
    from rich.table import Table

    from tailorml.config.load import schema_lines
    from tailorml.config.schema import RunConfig

    if as_json:
        print(json.dumps(RunConfig.model_json_schema(), indent=2))
        return
    table = Table(show_edge=False, show_lines=False)
    for col in ("key", "type", "default", "description"):
        table.add_column(col, overflow="fold")
    for row in schema_lines():
        table.add_row(*row)
    Console(width=160).print(table)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (or its model/ folder).")],
    data: Annotated[Path, typer.Option(help="Labeled file (.csv/.jsonl/.parquet).")],
    output: Annotated[Path | None, typer.Option(help="Write metrics JSON here.")] = None,
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip and count bad rows.")] = False,
    text_column: Annotated[str | None, typer.Option(help="Override the text column.")] = None,
    label_column: Annotated[str | None, typer.Option(help="Override the label column.")] = None,
    head: Annotated[
        str | None, typer.Option(help="Multi-task models: the head whose labels the file has.")
    ] = None,
) -> None:
    """Score a fine-tuned model on a labeled file and print its metrics."""
    from tailorml.recipes.evaluate import evaluate_file, save_json

    try:
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
        return
    if output:
        save_json(output, metrics)
    shown = {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}
    print(json.dumps(shown, indent=2))


@app.command()
def predict(
    run_dir: Annotated[Path | None, typer.Argument(help="Run folder or model folder.")] = None,
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
    from tailorml.recipes.predict import default_columns, predict_rows, read_inputs

    if url is not None:
        from tailorml.serve.remote import predict_remote

        try:
            _write_jsonl(predict_remote(url, api_key, input, top_k, text_column), output)
        except TailorError as exc:
            _fail(exc)
        return
    if run_dir is None:
        from tailorml.train.progress import console

        console.print("[red]error:[/] give a RUN_DIR (or a model folder), or --url.")
        raise typer.Exit(2)
    try:
        col, pair = default_columns(run_dir)
        rows = read_inputs(input, text_column or col, pair)
        preds = predict_rows(run_dir, rows, top_k=top_k)
        _write_jsonl(preds, output)
    except TailorError as exc:
        _fail(exc)


@app.command()
def compress(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by `tailor finetune`.")],
    budget: Annotated[
        float, typer.Option(help="Largest accuracy drop allowed, in points (1.0 = 1%).")
    ] = 1.0,
    variants: Annotated[
        list[str] | None,
        typer.Option(
            "--variants",
            help="Comma-separated: torch-int8, onnx-fp32, onnx-int8, pruned, pruned-onnx-int8, "
            "distilled, distilled-onnx-int8 (default: all).",
        ),
    ] = None,
    threads: Annotated[int, typer.Option(help="Threads for every measurement (pinned).")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed repetitions (medians are reported).")] = 3,
    latency_texts: Annotated[int, typer.Option(help="Eval texts timed per repetition.")] = 100,
    data: Annotated[Path | None, typer.Option(help="Eval file (default: run's eval).")] = None,
    prune_heads: Annotated[float, typer.Option(help="Share of heads removed.")] = 0.25,
    prune_ffn: Annotated[float, typer.Option(help="Share of FFN neurons removed.")] = 0.5,
    recovery_epochs: Annotated[float, typer.Option(help="Fine-tune epochs after pruning.")] = 1.0,
    student_layers: Annotated[int | None, typer.Option(help="Student layers (half).")] = None,
    distill_epochs: Annotated[float, typer.Option(help="Distillation epochs.")] = 3.0,
    train_threads: Annotated[int | None, typer.Option(help="Threads for training.")] = None,
) -> None:
    """Quantize, prune, distill and export a run; measure each variant; choose within budget."""
    from tailorml.recipes.compress import CompressOptions
    from tailorml.recipes.compress import compress as run

    opts = CompressOptions(
        budget=budget,
        variants=variants,
        threads=threads,
        repeats=repeats,
        latency_texts=latency_texts,
        data=data,
        prune_heads=prune_heads,
        prune_ffn=prune_ffn,
        recovery_epochs=recovery_epochs,
        student_layers=student_layers,
        distill_epochs=distill_epochs,
        train_threads=train_threads,
    )
    try:
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
    tmp = output.with_suffix(output.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    tmp.replace(output)


# `tailor serve` lives in tailorml/serve/cli.py.
from tailorml.serve.cli import serve as _serve  # noqa: E402

app.command("serve")(_serve)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
