"""Search hyperparameters: `tailor tune CONFIG` runs a study of fine-tuning trials on Optuna.

    check the search space, metric and storage (before any trial) -> open or resume the study
    -> each trial: sample the space, fine-tune a normal run folder (pruned early on its eval
    metric when unpromising) -> study.json, best.yaml, report.md with plots

The study folder is the config's `output_dir`; every trial is a run folder `trial-NNN/` in it.
The study lives in `tune.storage` (a SQLite file in the study folder by default): an
interrupted study resumes where it stopped, and several `tailor tune` processes pointed at one
PostgreSQL URL share one study (each takes the next trial until `tune.trials` are done).
Selection uses the eval split only; the test split of the best trial is reported, never used.
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path
from typing import Any

from tailorml import env
from tailorml.config.load import apply_overrides, validate_mapping
from tailorml.config.schema import ParamRange, RunConfig
from tailorml.errors import ConfigError
from tailorml.evaluate.metrics import LOWER_IS_BETTER
from tailorml.retry import Backoff, call_with_retry
from tailorml.tasks.heads import choose_metric, config_heads
from tailorml.train.progress import console
from tailorml.tune.report import short, write_study

# Keys the study sets for each trial, not searchable.
STUDY_KEYS = {"tune", "output_dir", "name"}


def check_study(cfg: RunConfig) -> tuple[str, str]:
    """The metric and direction of the study; ConfigError listing every problem of the space,
    the metric and the direction, before any trial starts."""
    t = cfg.tune
    problems: list[str] = []
    if cfg.pretrain is not None:
        problems.append(
            "This config has a `pretrain:` section; `tailor tune` searches fine-tuning runs. "
            "Remove `pretrain:` (tune the fine-tuning config whose `model.base` is the "
            "pretrained run's model/)."
        )
    if not t.space:
        problems.append(
            "`tune.space` is empty. Give at least one key to search, e.g. "
            "`tune: {space: {train.lr: {low: 1.0e-5, high: 5.0e-4, log: true}}}`."
        )
    base = cfg.model_dump(mode="json", exclude={"tune"})
    for key, rng in t.space.items():
        if key.split(".")[0] in STUDY_KEYS or key == "train.metric_for_best":
            problems.append(
                f"`tune.space.{key}`: the study sets this itself (each trial's folder, name "
                "and metric). Search training, model or data keys."
            )
            continue
        problems += _range_problems(key, rng)
        # every choice, or both ends of the range, must make a valid config
        for value in rng.choices or [v for v in (rng.low, rng.high) if v is not None]:
            try:
                raw = apply_overrides(base, [f"{key}={value}"])
            except ConfigError as exc:
                problems += [f"`tune.space.{key}`: {p}" for p in exc.problems]
                break
            _, found = validate_mapping(raw)
            found = [f"`tune.space.{key}`: {p}" for p in found if key.split(".")[0] in p]
            problems += [p for p in found if p not in problems]
    try:
        metric = choose_metric(t.metric, config_heads(cfg))
    except ConfigError as exc:
        problems += [p.replace("train.metric_for_best", "tune.metric") for p in exc.problems]
        metric = "loss"
    plain = metric.rsplit("/", 1)[-1].removeprefix("mean_")
    natural = "minimize" if plain in LOWER_IS_BETTER else "maximize"
    direction = t.direction or natural
    if direction != natural:
        problems.append(
            f"`tune.direction` is {direction} but `{metric}` is better when "
            f"{'lower' if natural == 'minimize' else 'higher'}. Remove tune.direction."
        )
    if problems:
        raise ConfigError(problems)
    return metric, direction


def _range_problems(key: str, r: ParamRange) -> list[str]:
    where = f"`tune.space.{key}`"
    if r.choices is not None:
        if r.low is not None or r.high is not None:
            return [f"{where} has both `choices` and `low`/`high`. Give one of them."]
        return [] if r.choices else [f"{where}: `choices` is empty. List at least one value."]
    if r.low is None or r.high is None:
        return [f"{where} needs `low` and `high` (or `choices`)."]
    if not r.low < r.high:
        return [f"{where}: low ({r.low}) must be below high ({r.high}). Widen the range."]
    if r.log and r.low <= 0:
        return [f"{where}: a log range needs low > 0 (got {r.low})."]
    if r.step is not None and r.step <= 0:
        return [f"{where}: `step` must be above 0 (got {r.step})."]
    if r.log and r.step is not None:
        return [f"{where}: `log` and `step` cannot be combined. Choose one."]
    return []


def suggest(trial: Any, key: str, r: ParamRange) -> Any:
    """One value of `key` for this trial (integers stay integers)."""
    if r.choices is not None:
        return trial.suggest_categorical(key, r.choices)
    assert r.low is not None and r.high is not None
    ints = isinstance(r.low, int) and isinstance(r.high, int) and not isinstance(r.step, float)
    if ints:
        return trial.suggest_int(key, int(r.low), int(r.high), step=int(r.step or 1), log=r.log)
    return trial.suggest_float(key, float(r.low), float(r.high), step=r.step, log=r.log)


def requeue(study: Any, trial: Any) -> None:
    """Queue again, as a WAITING trial with the same values, a trial that stopped before its
    end; the new trial's `continues` names the original, whose run folder it resumes from its
    last checkpoint. Optuna calls it for a trial whose worker went silent (the process was
    killed); `tune` calls it for a trial interrupted by Ctrl-C / SIGTERM (checkpoint saved, the
    trial marked failed)."""
    import optuna

    attrs = {"run_dir": trial.user_attrs.get("run_dir")}
    attrs["continues"] = trial.user_attrs.get("continues", trial.number)
    study.add_trial(
        optuna.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=attrs,
            intermediate_values=trial.intermediate_values,
        )
    )


class DuplicateRerun(Exception):
    """Two workers queued the same interrupted trial at once: the later copy steps aside
    (failed, not counted) so that one process writes the run folder."""


def _requeue_interrupted(study: Any) -> int:
    """Queue again every trial interrupted by a signal that no later trial has taken over."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    queued = 0
    for t in trials:
        if t.state != optuna.trial.TrialState.FAIL or not t.user_attrs.get("interrupted"):
            continue
        first = t.user_attrs.get("continues", t.number)
        if not any(o.number > t.number and o.user_attrs.get("continues") == first for o in trials):
            requeue(study, t)
            queued += 1
    return queued


def _rerun_state(trial: Any, first: int) -> tuple[set[int], int | None]:
    """For a trial continuing trial `first`, from one read of the study: the steps it inherited
    reports for, and the number of an earlier trial, queued, running or finished, that also
    continues `first` (a failed one does not count: it was cut off in turn), if any."""
    import optuna

    reported: set[int] = set()
    twins = []
    for o in trial.study.get_trials(deepcopy=False):
        if o.number == trial.number:
            reported = set(o.intermediate_values)
        elif (
            o.number < trial.number
            and o.user_attrs.get("continues") == first
            and o.state != optuna.trial.TrialState.FAIL
        ):
            twins.append(int(o.number))
    return reported, min(twins, default=None)


PRUNE_AFTER = 250  # hundredths of an epoch (the unit trials report in): no pruning before


def _pruner(name: str) -> Any:
    import optuna

    if name == "median":
        # No pruning until 5 trials finished (Optuna's default) nor before a trial is 2.5 epochs
        # in: a slow start (a low rate, a long warm-up) is no sign of a poor end. Pruning from
        # the first evaluation on, a 20-trial study on financial sentiment cut 9 trials there;
        # its best trial, one of the first 3, had the third-lowest first evaluation of the 20.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=PRUNE_AFTER)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=PRUNE_AFTER)
    return optuna.pruners.NopPruner()


def trial_seeded_sampler(seed: int) -> Any:
    """TPE whose random draws for trial N come from (seed, N) alone.

    A plain `TPESampler(seed=...)` starts one random stream per process: a study resumed in a
    new process, or a second worker on the same study, draws the same values again (an
    interrupted 20-trial study ran its first point three times). Reseeding before each trial
    from the trial's number (unique across workers) keeps a study reproducible without that."""
    import numpy as np
    import optuna

    class TrialSeededTPE(optuna.samplers.TPESampler):
        def before_trial(self, study: Any, trial: Any) -> None:
            super().before_trial(study, trial)
            state = np.random.SeedSequence([seed, trial.number]).generate_state(2)
            self._rng.rng.seed(int(state[0]))
            self._random_sampler._rng.rng.seed(int(state[1]))

    return TrialSeededTPE(seed=seed)


def open_study(cfg: RunConfig, direction: str, storage: str | None) -> Any:
    import optuna

    t = cfg.tune
    out = Path(cfg.output_dir)
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    url = storage or t.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def create() -> Any:
        with warnings.catch_warnings():  # heartbeats and their retry callback are "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url,
                heartbeat_interval=t.heartbeat_s,
                grace_period=3 * t.heartbeat_s,
                heartbeat_stale_trial_callback=requeue,
            )
        return optuna.create_study(
            study_name=cfg.name,
            storage=storage,
            load_if_exists=True,
            direction=direction,  # type: ignore[arg-type]
            sampler=trial_seeded_sampler(t.seed),
            pruner=_pruner(t.pruner),
        )

    def racing(exc: BaseException) -> bool:
        # Two workers starting at once both create the study's tables (or the study row): the
        # loser's CREATE fails on a unique constraint, and a second try finds what the winner made.
        text = str(exc)
        return "UniqueViolation" in text or "already exists" in text or "duplicate" in text

    try:
        return call_with_retry(create, retry_on=racing, retries=5, policy=Backoff(0.2, 2.0))
    except ValueError as exc:  # e.g. a study of this name with another direction
        problem = f"`tune.storage` {_safe(url)}: {exc}"
    except Exception as exc:  # the database cannot be reached or opened
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        problem = (
            f"`tune.storage` {_safe(url)} cannot be opened ({type(exc).__name__}: {first}). "
            "Check the URL and that the database server is running."
        )
    if made and not any(out.iterdir()):
        out.rmdir()  # a study that never opened leaves no folder behind
    raise ConfigError(problem)


def _safe(url: str) -> str:
    """A storage URL without its password."""
    import re

    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def trial_config(cfg: RunConfig, values: dict[str, Any], folder: Path, metric: str) -> RunConfig:
    """The study's config with this trial's values, its own run folder and the study's metric."""
    raw = copy.deepcopy(cfg.model_dump(mode="json", exclude={"tune"}))
    raw = apply_overrides(raw, [f"{k}={v}" for k, v in values.items()])
    raw["name"] = f"{cfg.name}-{folder.name}"
    raw["output_dir"] = str(folder)
    raw["train"]["metric_for_best"] = metric
    if raw["train"].get("contrastive") == "auto" and "train.contrastive" not in values:
        # The contrastive stage ignores the learning rate, epochs and batch size that a study
        # searches: trials fine-tune unless the space (or the config) asks for the stage.
        raw["train"]["contrastive"] = False
    trial_cfg, problems = validate_mapping(raw)
    if trial_cfg is None:
        raise ConfigError([f"trial values {values}: {p}" for p in problems])
    return trial_cfg


def tune(
    cfg: RunConfig,
    trials: int | None = None,
    timeout_s: float | None = None,
    storage: str | None = None,
) -> dict[str, Any]:
    """Run (or continue) the study until `tune.trials` trials have finished or been pruned (over
    every worker sharing the storage); returns study.json's content."""
    env.setup()
    import optuna

    from tailorml.recipes import training_recipe

    train = training_recipe(cfg)  # the recipe of the config's model family
    metric, direction = check_study(cfg)
    study = open_study(cfg, direction, storage)
    out = Path(cfg.output_dir)
    if trials is not None and trials < 1:
        raise ConfigError(f"trials = {trials}: a study needs at least 1 trial.")
    total = trials if trials is not None else cfg.tune.trials
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    console.print(
        f"[bold]Study[/] {cfg.name} in {out}: {total} trials of {', '.join(cfg.tune.space)}, "
        f"{direction} eval {metric} ({len(study.get_trials(states=done_states))} done before)",
        highlight=False,
    )
    started = time.perf_counter()

    def objective(trial: Any) -> float:
        values = {k: suggest(trial, k, r) for k, r in cfg.tune.space.items()}
        first = trial.user_attrs.get("continues")  # a rerun continues the original's folder
        folder = out / f"trial-{(trial.number if first is None else first):03d}"
        trial.set_user_attr("run_dir", str(folder))
        # A rerun inherits the original's reports; steps it evaluates again are not re-reported.
        reported, twin = (set(), None) if first is None else _rerun_state(trial, first)
        if twin is not None:
            trial.set_user_attr("stepped_aside_for", twin)
            raise DuplicateRerun(f"trial {twin} already continues trial {first}; this copy stops")
        tcfg = trial_config(cfg, values, folder, metric)

        def on_eval(step: int, scalars: dict[str, float]) -> bool:
            # Reported at hundredths of an epoch, not at the optimizer step: trials with another
            # batch size evaluate at other steps, and the pruner compares trials at equal keys.
            at = round(100 * scalars["epoch"])
            if at not in reported:
                trial.report(scalars[metric], at)
            return bool(trial.should_prune())

        try:
            if first is None:
                res = train(tcfg, overwrite=True, on_eval=on_eval)
            else:
                console.print(f"trial {trial.number}: continues trial {first} ({folder.name})")
                res = train(tcfg, resume=True, start_if_nothing=True, on_eval=on_eval)
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM: a checkpoint was saved; the rerun uses it
            trial.set_user_attr("interrupted", True)
            console.print(
                f"[yellow]Trial {trial.number} stopped; the same `tailor tune` command continues "
                f"it from its checkpoint in {folder.name}/.[/]"
            )
            raise
        trial.set_user_attr("test", _scalars(res["test"]))
        trial.set_user_attr("train_seconds", res["train"]["train_seconds"])
        if res["train"]["stopped_by"] == "pruned":
            raise optuna.TrialPruned(f"pruned at step {res['train']['steps']}")
        return float(res["eval"][metric])

    def progress(study: Any, trial: Any) -> None:
        finished = len(study.get_trials(states=done_states))
        shown = ", ".join(f"{k}={short(v, 3)}" for k, v in trial.params.items())
        if trial.state == optuna.trial.TrialState.PRUNED:
            what = f"pruned after {len(trial.intermediate_values)} evaluation(s)"
        elif trial.state == optuna.trial.TrialState.COMPLETE:
            what = f"{metric} {trial.value:.4f}"
        else:
            what = trial.state.name.lower()
        best = _best(study)
        tail = f" (best {best.value:.4f}, trial {best.number})" if best is not None else ""
        console.print(
            f"trial {trial.number} [{finished}/{total}]: {shown} -> {what}{tail}, "
            f"{time.perf_counter() - started:.0f}s so far",
            highlight=False,
        )

    requeued = _requeue_interrupted(study)
    if requeued:
        console.print(f"{requeued} interrupted trial(s) queued to continue from their checkpoints")
    left = total - len(study.get_trials(states=done_states))
    if left > 0:
        study.optimize(
            objective,
            callbacks=[optuna.study.MaxTrialsCallback(total, states=done_states), progress],
            timeout=timeout_s or cfg.tune.timeout_s,
            catch=(DuplicateRerun,),
            gc_after_trial=True,
        )
    return write_study(study, cfg, metric, direction, out)


def _best(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no trial finished yet
        return None


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "n"}
