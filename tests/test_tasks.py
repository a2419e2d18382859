"""The task registry and the conformance suite every registered task type passes.

Like scikit-learn's estimator checks: for each task in the registry, with the rows the task itself
provides (`Task.example_rows`), build a tiny model, train a few steps, save the run folder,
reload it through the predictor, predict, evaluate (the same metrics training reported), and serve
one request on a real server; then all of it again with LoRA (`model.lora`). A new task type is
one module in tailorml/tasks/ and runs here with no change to this file. Tasks of another model
family than the sequence classifier (`generation`, a causal LM) implement only `TaskInfo` and have
their own suite (tests/test_generation.py); the image family (`image-classification`) runs the
same steps on images in tests/test_images.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tailorml.config.load import validate_mapping
from tailorml.tasks import all_tasks, get_task, task_names
from tailorml.tasks.base import IMAGE_CLASSIFIER, SEQUENCE_CLASSIFIER, Task, TaskInfo

from .conftest import tiny_config, write_csv
from .serve_helpers import ThreadServer

BUILT_IN = {
    "classification",
    "multilabel",
    "pair-classification",
    "regression",
    "generation",
    "image-classification",
}
CLASSIFIER_TASKS = sorted(t.name for t in all_tasks() if t.family == SEQUENCE_CLASSIFIER)


def test_registry_lists_the_built_in_tasks_and_each_implements_the_protocol() -> None:
    from tailorml.errors import ConfigError
    from tailorml.tasks import find_task

    assert set(task_names()) >= BUILT_IN
    for task in all_tasks():
        assert isinstance(task, TaskInfo) and find_task(task.name) is task, task.name
        assert task.metrics[0] == "loss" and task.default_metric in task.metrics, task.name
        rows, data = task.example_rows(6, seed=0)
        assert len(rows) == 6, task.name
        if task.family == SEQUENCE_CLASSIFIER:
            assert isinstance(task, Task) and get_task(task.name) is task, task.name
            assert set(data) <= {"text_column", "text_pair_column"}, task.name
        else:  # the text-classifier steps refuse it, naming the commands that handle it
            handled_by = {IMAGE_CLASSIFIER: "tailor serve RUN"}.get(task.family, "tailor generate")
            with pytest.raises(ConfigError, match=handled_by):
                get_task(task.name)


def test_unknown_task_type_names_the_choices() -> None:
    from tailorml.errors import ConfigError

    with pytest.raises(ConfigError, match="Did you mean 'regression'.*multilabel"):
        get_task("regresion")
    _, problems = validate_mapping({"data": {"train": "x.csv"}, "task": {"type": "regresion"}})
    assert any("`task.type` = 'regresion' is not a task type" in p for p in problems)


def _write_split(task: Task, path: Path, n: int, seed: int) -> tuple[Path, dict[str, Any]]:
    rows, data = task.example_rows(n, seed)
    return write_csv(path, rows), data


# Every task trained in full, and with LoRA (`model.lora`: adapters + head, the base frozen).
RUNS = [*CLASSIFIER_TASKS, *(f"{name}+lora" for name in CLASSIFIER_TASKS)]


@pytest.fixture(scope="module", params=RUNS)
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One tiny run per registered task (and per task with LoRA), trained on the task's own
    example rows."""
    from tailorml.recipes.finetune import finetune

    name, _, lora = str(request.param).partition("+")
    task = get_task(name)
    tmp = tmp_path_factory.mktemp(request.param)
    train, data = _write_split(task, tmp / "train.csv", 180, 0)
    ev, _ = _write_split(task, tmp / "eval.csv", 45, 1)
    test, _ = _write_split(task, tmp / "test.csv", 45, 2)
    raw = tiny_config(
        tmp,
        data={"train": str(train), "eval": str(ev), "test": str(test), **data},
        task={"type": task.name},
        train={"epochs": 4, "batch_size": 16, "lr": 3e-3, "seed": 0, "threads": 1},
    )
    if lora:
        raw["model"]["lora"] = {"r": 8, "dropout": 0.0}
    cfg, problems = validate_mapping(raw)
    assert cfg is not None, problems
    results = finetune(cfg)
    return task, Path(cfg.output_dir), results, test, data


def test_conformance_train_save_reload_predict_evaluate_serve(trained: Any) -> None:
    from transformers import AutoModelForSequenceClassification

    from tailorml.predictors import load_predictor
    from tailorml.recipes.evaluate import evaluate_file
    from tailorml.recipes.merge import merge_run
    from tailorml.recipes.predict import predict_rows

    task, run, results, test_file, data = trained

    # --- trained: every metric the task declares, for eval and test; the loss went down
    for split in ("eval", "test"):
        assert set(task.metrics) <= set(results[split]), (task.name, split)
        assert all(np.isfinite(results[split][m]) for m in task.metrics), task.name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    lora = (run / "model" / "adapter_config.json").is_file()
    if not lora:  # a random tiny encoder, frozen, gives LoRA too little to learn from in 4 epochs
        assert losses[-1] < losses[0], (task.name, losses)

    # --- saved: task.json lists the one (unnamed) head over every output column
    info = json.loads((run / "model" / "task.json").read_text())
    (head,) = info["heads"]
    assert info["task"] == head["task"] == task.name and head["name"] == ""
    assert head["offset"] == 0 and head["size"] == task.head_size(head["labels"])
    assert (head["labels"] is not None) == task.has_labels

    # --- reloaded: the predictor's logits are the saved model's (plain transformers)
    pred = load_predictor(run, threads=1)
    texts, pairs = _inputs(task, test_file, data, 6)
    logits = pred.predict(texts, pairs)
    assert logits.shape == (6, head["size"])
    import torch

    # A LoRA run's folder holds an adapter: plain transformers loads its `tailor merge` output.
    folder = merge_run(run) if lora else run / "model"
    plain = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    enc = pred.encode(texts, pairs)
    with torch.inference_mode():
        want = plain(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    np.testing.assert_allclose(logits, want, atol=1e-5)

    # --- predicted: the task's own output shape, labels from the model's vocabulary
    for item in pred.format(logits):
        if task.has_labels:
            assert item["label"] in head["labels"] and 0 <= item["score"] <= 1
        else:
            assert set(item) == {"value"}
    inputs = [{"text": t} for t in texts]
    for row, p in zip(inputs, pairs or [], strict=False):
        row["text_pair"] = p
    predicted = list(predict_rows(run, inputs))
    assert [p["input"] for p in predicted] == texts

    # --- evaluated through the predictor: the metrics training reported on the same test file
    metrics = evaluate_file(run, test_file)
    for m in task.metrics:
        if m != "loss":
            assert metrics[m] == pytest.approx(results["test"][m], abs=1e-4), (task.name, m)

    # --- served: one request on a real server, answers fit the task's schema
    with ThreadServer(pred) as srv:
        body: list[Any] = (
            [{"text": t, "text_pair": p} for t, p in zip(texts[:2], pairs[:2], strict=True)]
            if pairs
            else texts[:2]
        )
        r = httpx.post(srv.url + "/v1/predict", json={"inputs": body}, timeout=30)
        assert r.status_code == 200, r.text
        answers = r.json()["predictions"]
        card = httpx.get(srv.url + "/v1/models", timeout=30).json()["models"][0]
    assert card["task"] == task.name and card["pair"] == task.pair and card["heads"] is None
    for got, want_item in zip(answers, pred.api_outputs(logits[:2]), strict=True):
        task.api_model.model_validate(got)
        assert got.keys() == want_item.keys()


def _inputs(task: Task, path: Path, data: dict[str, Any], n: int) -> tuple[list[str], Any]:
    import csv

    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:n]
    texts = [r[data.get("text_column", "text")] for r in rows]
    pairs = [r[data["text_pair_column"]] for r in rows] if task.pair else None
    return texts, pairs


def test_folders_written_before_heads_were_listed_still_load(trained: Any, tmp_path: Path) -> None:
    """A run folder from an earlier version (single-task task.json without `heads`) predicts,
    evaluates and serves the same."""
    from tailorml.predictors import load_predictor
    from tailorml.recipes.evaluate import evaluate_file

    task, run, results, test_file, data = trained
    old = tmp_path / "old"
    shutil.copytree(run / "model", old / "model")
    info = json.loads((old / "model" / "task.json").read_text())
    info.pop("heads")
    (old / "model" / "task.json").write_text(json.dumps(info))
    texts, pairs = _inputs(task, test_file, data, 4)
    new_pred, old_pred = load_predictor(run, threads=1), load_predictor(old, threads=1)
    assert [h.to_json() for h in old_pred.heads] == [h.to_json() for h in new_pred.heads]
    logits = old_pred.predict(texts, pairs)
    assert old_pred.format(logits) == new_pred.format(new_pred.predict(texts, pairs))
    metrics = evaluate_file(old, test_file)
    m = task.default_metric
    assert metrics[m] == pytest.approx(results["test"][m], abs=1e-4)
