"""What a study leaves in its folder: study.json (every trial), best.yaml (the best trial's run
config, ready for `tailor finetune`), report.md with Optuna's plots (history, intermediate values,
parameter importances, parallel coordinates) as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tailorml.config.load import dump_config, load_config
from tailorml.config.schema import RunConfig
from tailorml.files import atomic_json, atomic_write_text


def write_study(
    study: Any, cfg: RunConfig, metric: str, direction: str, out: Path
) -> dict[str, Any]:
    import optuna

    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "params": t.params,
                "value": t.value,
                "evaluations": len(t.intermediate_values),
                "test": t.user_attrs.get("test"),
                "run_dir": t.user_attrs.get("run_dir"),
                "continues": t.user_attrs.get("continues"),  # rerun of an interrupted trial
                "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                if t.datetime_complete and t.datetime_start
                else None,
            }
        )
    done = [t for t in trials if t["state"] == "complete"]
    best = None
    try:
        bt = study.best_trial
        best = next(t for t in trials if t["number"] == bt.number)
    except ValueError:
        pass
    result = {
        "study": study.study_name,
        "metric": f"eval {metric}",
        "direction": direction,
        "trials": trials,
        "finished": len(done),
        "pruned": sum(t["state"] == "pruned" for t in trials),
        "failed": sum(t["state"] == "fail" for t in trials),
        "best": best,
    }
    atomic_json(out / "study.json", result)
    if best is not None and best["run_dir"] and (Path(best["run_dir"]) / "config.yaml").is_file():
        best_cfg = load_config(Path(best["run_dir"]) / "config.yaml")
        # Ready to train on its own (`tailor finetune best.yaml`), next to the trials.
        best_cfg = best_cfg.model_copy(
            update={"output_dir": out / "best", "name": f"{cfg.name}-best"}
        )
        atomic_write_text(out / "best.yaml", dump_config(best_cfg))
    plots = _plots(study, out, optuna)
    _markdown(out, cfg, result, plots)
    return result


def _plots(study: Any, out: Path, optuna: Any) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    folder = out / "plots"
    folder.mkdir(exist_ok=True)
    made: list[str] = []
    wanted = {
        "history.png": vis.plot_optimization_history,
        "intermediate.png": vis.plot_intermediate_values,
        "importances.png": vis.plot_param_importances,
        "parallel.png": vis.plot_parallel_coordinate,
    }
    import warnings

    for name, fn in wanted.items():
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore")
                ax: Any = fn(study)
        except (ValueError, RuntimeError):  # too few finished trials or parameters for this plot
            continue
        if name == "intermediate.png":  # trials report at hundredths of an epoch (study.py)
            ax.set_xlabel("epoch × 100")
        fig: Any = ax.figure if hasattr(ax, "figure") else ax.flatten()[0].figure
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        made.append(name)
    return made


def _markdown(out: Path, cfg: RunConfig, result: dict[str, Any], plots: list[str]) -> None:
    best = result["best"]
    lines = [
        f"# Study: {result['study']}",
        "",
        f"- searched: {', '.join(f'`{k}`' for k in cfg.tune.space)}; {result['direction']} "
        f"{result['metric']} (the eval split; test is reported, never used to choose)",
        f"- trials: {result['finished']} finished, {result['pruned']} pruned, "
        f"{result['failed']} failed",
    ]
    if best is not None:
        test = best.get("test") or {}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items() if k != "loss")
        lines += [
            f"- best: trial {best['number']}, {result['metric']} {best['value']:.4f}; its test: "
            f"{shown or 'n/a'}; config: `best.yaml` (train it: `tailor finetune {out}/best.yaml`)",
        ]
    lines += ["", "| trial | state | value | seconds | " + " | ".join(cfg.tune.space) + " |"]
    lines += ["|---|---|---:|---:|" + "---:|" * len(cfg.tune.space)]
    for t in result["trials"]:
        value = f"{t['value']:.4f}" if isinstance(t["value"], float) else ""
        seconds = f"{t['seconds']:.0f}" if t["seconds"] is not None else ""
        # 4 significant digits here (study.json keeps every digit)
        params = " | ".join(short(t["params"].get(k, "")) for k in cfg.tune.space)
        state = t["state"] + (
            f" (continues {t['continues']})" if t["continues"] is not None else ""
        )
        lines.append(f"| {t['number']} | {state} | {value} | {seconds} | {params} |")
    if plots:
        lines += [""] + [f"![{p}](plots/{p})" for p in plots]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


def short(value: Any, digits: int = 4) -> str:
    """A sampled value as a person reads it: floats to `digits` significant digits."""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)
