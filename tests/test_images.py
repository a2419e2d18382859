"""Image classification: readers, augmentation, the schedule, and the conformance of the
image-classifier family (train tiny, save, reload, predict, evaluate, compress, serve), on small
generated images only."""

from __future__ import annotations

import base64
import gzip
import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tailorml.config.load import validate_mapping
from tailorml.config.schema import ImagesConfig
from tailorml.data.images import augment, read_images, write_npz
from tailorml.errors import ConfigError, DataError
from tailorml.tasks.images import example_images

from .conftest import tiny_config
from .serve_helpers import ThreadServer


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root: Path, n: int, seed: int) -> Path:
    x, labels = example_images(n, seed)
    for i, (img, lab) in enumerate(zip(x, labels, strict=True)):
        (root / lab).mkdir(parents=True, exist_ok=True)
        (root / lab / f"{i}.png").write_bytes(_png(img))
    return root


def _cfg(tmp: Path, **sections: Any) -> Any:
    raw = tiny_config(
        tmp,
        task={"type": "image-classification"},
        model={"base": "resnet-small", "widths": [8, 16], "blocks": [1, 1]},
        train={"epochs": 3, "batch_size": 16, "lr": 3e-3, "seed": 0, "threads": 1},
    )
    raw.pop("data")
    raw["model"].pop("dropout")
    for key, val in sections.items():
        raw.setdefault(key, {}).update(val)
    cfg, problems = validate_mapping(raw)
    assert cfg is not None, problems
    return cfg


# ---- readers ---------------------------------------------------------------------------------


def test_image_folder_reads_classes_and_names_unreadable_files(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", 10, 0)
    got = read_images(root, ImagesConfig())
    assert got.x.shape == (10, 8, 8, 1) and got.x.dtype == np.uint8
    assert sorted(set(got.labels)) == ["horizontal", "vertical"] and not got.bad
    (root / "vertical" / "broken.png").write_bytes(b"not a png at all")
    (root / "vertical" / "big.png").write_bytes(_png(np.zeros((9, 8, 1), dtype=np.uint8)))
    got = read_images(root, ImagesConfig())
    bad = {Path(b.path).name: b.reason for b in got.bad}
    assert "unreadable image" in bad["broken.png"] and "images.size" in bad["big.png"]
    assert len(got) == 10
    # `images.size` resizes every image instead (the broken one stays bad)
    got = read_images(root, ImagesConfig(size=[8, 8]))  # type: ignore[call-arg]
    assert len(got) == 11 and [Path(b.path).name for b in got.bad] == ["broken.png"]


def test_idx_gz_pair_and_npz(tmp_path: Path) -> None:
    x, _ = example_images(6, 0)
    y = np.arange(6, dtype=np.uint8) % 3

    def idx(arr: np.ndarray) -> bytes:
        dims = b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        return bytes([0, 0, 8, arr.ndim]) + dims + arr.tobytes()

    img = tmp_path / "train-images-idx3-ubyte.gz"
    img.write_bytes(gzip.compress(idx(x[:, :, :, 0])))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        read_images(img, ImagesConfig())
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx(y)))
    got = read_images(img, ImagesConfig())
    assert np.array_equal(got.x, x) and got.labels == y.tolist()
    img.write_bytes(gzip.compress(idx(x[:, :, :, 0])[:-5]))
    with pytest.raises(DataError, match="truncated"):
        read_images(img, ImagesConfig())
    npz = tmp_path / "d.npz"
    np.savez(npz, x=x.astype(np.float32) / 255.0, y=np.array(["a"] * 6))  # floats in 0..1
    got = read_images(npz, ImagesConfig())
    assert np.array_equal(got.x, x) and got.labels == ["a"] * 6


def test_augment_crops_and_flips_without_changing_the_images_elsewhere() -> None:
    import torch

    x = torch.arange(2 * 5 * 5, dtype=torch.uint8).reshape(2, 5, 5, 1)
    assert torch.equal(augment(x, 0, False), x)
    out = augment(x, 1, False, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x.permute(0, 3, 1, 2), (1, 1, 1, 1)).permute(0, 2, 3, 1)
    for i in range(2):  # every output is one of the 9 shifted windows of its padded image
        windows = [padded[i, a : a + 5, b : b + 5] for a in range(3) for b in range(3)]
        assert any(torch.equal(out[i], w) for w in windows)
    flips = augment(x.repeat(20, 1, 1, 1), 0, True, torch.Generator().manual_seed(1))
    flipped = [torch.equal(f, x[i % 2].flip(1)) for i, f in enumerate(flips)]
    kept = [torch.equal(f, x[i % 2]) for i, f in enumerate(flips)]
    assert all(a or b for a, b in zip(flipped, kept, strict=True)) and any(flipped) and any(kept)


def test_random_erasing_changes_one_rectangle_in_the_chosen_share_of_images() -> None:
    import torch

    x = torch.full((400, 12, 12, 1), 7, dtype=torch.uint8)
    assert torch.equal(augment(x, 0, False, erase=0.0), x)
    out = augment(x, 0, False, torch.Generator().manual_seed(3), erase=0.5)
    changed = (out != x)[..., 0]
    touched = changed.flatten(1).any(1)
    assert 0.35 < touched.float().mean().item() < 0.65  # about half the images
    for m in changed[touched][:50]:  # each change lies inside one rectangle of <= 25% area
        ys, xs = m.nonzero(as_tuple=True)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert box <= 0.25 * 144 + 12
    assert torch.equal(out[~touched], x[~touched])


def test_onecycle_schedule_rises_then_falls_to_zero() -> None:
    from tailorml.train.optim import WarmupDecay

    f = WarmupDecay(25, 100, "onecycle")
    values = [f(s) for s in range(101)]
    assert values[0] == pytest.approx(0.04) and values[25] == pytest.approx(1.0)
    assert values[100] == pytest.approx(0.0, abs=1e-9)
    assert values[:26] == sorted(values[:26]) and values[25:] == sorted(values[25:], reverse=True)


def test_config_mistakes_are_named(tmp_path: Path) -> None:
    from tailorml.recipes.images import train_images
    from tailorml.tasks import get_task

    npz = write_npz(tmp_path / "t.npz", *example_images(20, 0))
    cfg = _cfg(tmp_path, data={"train": str(npz)}, model={"base": "resnet50"})
    with pytest.raises(ConfigError, match="resnet50.*resnet18, resnet-small, cnn"):
        train_images(cfg)
    cfg = _cfg(tmp_path, data={"train": str(npz)}, model={"lora": {"r": 4}})
    with pytest.raises(ConfigError, match="model.lora"):
        train_images(cfg)
    with pytest.raises(ConfigError, match="tailor serve RUN"):
        get_task("image-classification")  # the text steps refuse it with the image commands
    cfg = _cfg(tmp_path, data={"train": str(tmp_path / "missing")})
    with pytest.raises(DataError, match="does not exist"):
        train_images(cfg)


# ---- the conformance run ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny ResNet trained on generated bars (train as a class folder, test as npz)."""
    from tailorml.recipes.images import train_images

    tmp = tmp_path_factory.mktemp("images")
    root = _folder(tmp / "train", 160, 0)
    x, labels = example_images(40, 2)
    labels[0] = "horizontal" if labels[0] == "vertical" else "vertical"  # one surely wrong
    test = write_npz(tmp / "test.npz", x, labels)
    cfg = _cfg(tmp, data={"train": str(root), "test": str(test)}, train={"schedule": "onecycle"})
    results = train_images(cfg)
    return tmp / "run", results, test, cfg


def test_trained_run_folder_metrics_and_report(trained: Any) -> None:
    run, results, _, _ = trained
    for split in ("eval", "test"):
        assert {"loss", "accuracy", "macro_f1"} <= set(results[split])
    assert results["test"]["accuracy"] >= 0.9, results["test"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert losses[-1] < losses[0]
    info = json.loads((run / "model" / "task.json").read_text())
    assert info["family"] == "image-classifier" and info["labels"] == ["horizontal", "vertical"]
    assert info["image"] == {"height": 8, "width": 8, "channels": 1}
    assert len(info["normalize"]["mean"]) == 1
    assert (run / "model" / "model.safetensors").is_file()
    report = (run / "report.md").read_text()
    assert "Per-class accuracy" in report and "plots/misclassified.png" in report
    assert (run / "plots" / "misclassified.png").stat().st_size > 1000
    assert (run / "plots" / "confusion_matrix.png").is_file()


def test_predictor_evaluate_and_init_from_the_folder(trained: Any) -> None:
    import torch

    from tailorml.models.images import build_image_classifier, load_image_classifier
    from tailorml.predictors import load_predictor
    from tailorml.recipes.evaluate import evaluate_file

    run, results, test, cfg = trained
    pred = load_predictor(run, threads=1)
    x = np.load(test)["x"]
    logits = pred.predict(x)  # type: ignore[arg-type]
    net = load_image_classifier(run / "model")
    info = json.loads((run / "model" / "task.json").read_text())
    mean, std = info["normalize"]["mean"][0], info["normalize"]["std"][0]
    with torch.inference_mode():
        want = net((torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std).numpy()
    np.testing.assert_allclose(logits, want, atol=1e-5)
    assert pred.format(logits)[0]["label"] in ("horizontal", "vertical")  # type: ignore[attr-defined]
    from tailorml.recipes.predict import default_columns

    with pytest.raises(ConfigError, match="holds an image model.*tailor evaluate"):
        default_columns(run)  # `tailor predict` reads text: refused with the image commands
    metrics = evaluate_file(run, test)
    assert metrics["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert metrics["loss"] == pytest.approx(results["test"]["loss"], abs=1e-4)
    # `model.base: RUN_DIR/model` starts from those weights (a new output layer for 3 classes)
    from tailorml.tasks.heads import HeadSpec

    start = cfg.model.model_copy(update={"base": str(run / "model")})
    three = build_image_classifier(start, [HeadSpec("", "image-classification", None, 0, 3)], 1)
    assert three.fc.out_features == 3
    assert torch.equal(three.features[0].weight, net.features[0].weight)


def test_compress_to_onnx_fp32_and_int8(trained: Any) -> None:
    from tailorml.config.compress import CompressOptions
    from tailorml.predictors import load_predictor
    from tailorml.recipes.compress import compress

    run, results, test, _ = trained
    result = compress(run, CompressOptions(repeats=1))
    by = {e["name"]: e for e in result["variants"]}
    assert set(by) == {"fp32", "onnx-fp32", "onnx-int8"}
    assert by["onnx-fp32"]["max_abs_logit_diff"] < 1e-4
    assert by["onnx-int8"]["agreement"] >= 0.9
    assert by["fp32"]["test_accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert (run / "compression.md").is_file() and sum(e["chosen"] for e in by.values()) == 1
    # the keys every compress run writes (docs/compress.md, Outputs), with values that add up
    assert {"pareto", "cpu_flags", "machine"} <= set(result)
    fp32, onnx = by["fp32"], by["onnx-fp32"]
    assert fp32["test_accuracy_drop_points"] == 0 and fp32["test_drop_se_points"] == 0
    assert onnx["test_agreement"] == 1.0 and onnx["test_accuracy_drop_points"] == 0
    n = len(np.load(test)["x"])
    acc = fp32["test_accuracy"]
    assert fp32["test_accuracy_se"] == pytest.approx((acc * (1 - acc) / (n - 1)) ** 0.5, abs=1e-6)
    assert result["pareto"]["size"][0] == "onnx-int8"  # the smallest is always on its front
    assert all(isinstance(e["pareto_latency"], bool) for e in by.values())
    x = np.load(test)["x"]
    onnx = load_predictor(run / "compressed" / "onnx-int8", threads=1)
    assert onnx.runtime == "onnxruntime" and onnx.predict(x).shape == (40, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize("variant", ["model", "compressed/onnx-int8"])
def test_serve_base64_and_multipart_with_bad_images_named(trained: Any, variant: str) -> None:
    from tailorml.predictors import load_predictor

    run, _, test, _ = trained
    folder = run / variant
    if not folder.exists():
        pytest.skip("the compress test builds the ONNX variant")
    pred = load_predictor(folder, threads=1)
    x = np.load(test)["x"]
    pngs = [_png(x[i]) for i in range(3)]
    want = pred.api_outputs(pred.predict(x[:3]))  # type: ignore[arg-type]
    with ThreadServer(pred) as srv:
        body = {"inputs": [base64.b64encode(p).decode() for p in pngs]}
        body["inputs"][1] = "data:image/png;base64," + body["inputs"][1]
        r = httpx.post(srv.url + "/v1/predict", json=body, timeout=30)
        assert r.status_code == 200, r.text
        got = r.json()["predictions"]
        assert [g["label"] for g in got] == [w["label"] for w in want]
        assert set(got[0]) == {"label", "score", "scores"}
        files = [("file", (f"{i}.png", p, "image/png")) for i, p in enumerate(pngs)]
        r = httpx.post(srv.url + "/v1/predict", files=files, timeout=30)
        assert r.status_code == 200, r.text
        assert [g["label"] for g in r.json()["predictions"]] == [w["label"] for w in want]
        bad = {"inputs": [body["inputs"][0], base64.b64encode(b"nope").decode()]}
        r = httpx.post(srv.url + "/v1/predict", json=bad, timeout=30)
        assert r.status_code == 422 and "inputs[1]" in r.json()["error"]["message"], r.text
        r = httpx.post(srv.url + "/v1/predict", json={"inputs": ["%%%"]}, timeout=30)
        assert r.status_code == 422 and "inputs[0] is not valid base64" in r.text
        card = httpx.get(srv.url + "/v1/models", timeout=30).json()["models"][0]
        assert card["task"] == "image-classification" and card["image"]["height"] == 8


def test_resume_is_exact(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from tailorml.recipes.images import train_images

    npz = write_npz(tmp_path / "t.npz", *example_images(96, 0))
    weights = {}
    for name in ("whole", "resumed"):
        cfg = _cfg(
            tmp_path / name,
            data={"train": str(npz)},
            train={"max_steps": 10, "eval_every_steps": 5, "schedule": "cosine"},
        )
        if name == "resumed":
            with pytest.raises(KeyboardInterrupt):
                train_images(cfg, stop_after_steps=6)
            train_images(cfg, resume=True)
        else:
            train_images(cfg)
        weights[name] = load_file(str(tmp_path / name / "run" / "model" / "model.safetensors"))
    for k, v in weights["whole"].items():
        assert np.array_equal(v.numpy(), weights["resumed"][k].numpy()), k


@pytest.mark.slow  # two torchrun processes start torch each: ~35 s on 2 busy cores
def test_two_processes_train_one_image_run(tmp_path: Path) -> None:
    """torchrun + gloo: each rank takes its slice of every batch (batch norm sees its own
    slice), evaluation is split over the ranks and gathered, and every rank ends with rank 0's
    weights."""
    import sys

    from .conftest import write_config
    from .test_distributed import run

    npz = write_npz(tmp_path / "t.npz", *example_images(96, 0))
    raw = tiny_config(
        tmp_path,
        data={"train": str(npz)},
        task={"type": "image-classification"},
        model={"base": "cnn", "widths": [8, 16]},
        train={"max_steps": 6, "eval_every_steps": 3, "threads": 1, "batch_size": 16},
    )
    raw["data"] = {"train": str(npz)}
    raw["model"].pop("dropout")
    cfg = write_config(tmp_path, raw)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = run([*cmd, "-m", "tailorml.cli", "finetune", str(cfg)])
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert results["train"]["processes"] == 2 and results["train"]["replicas_identical"] is True
    assert results["test"]["n"] == 10 and 0 <= results["test"]["accuracy"] <= 1


def test_validate_reports_every_problem_of_an_image_config(tmp_path: Path) -> None:
    from tailorml.recipes.validate import check_inputs

    root = _folder(tmp_path / "imgs", 12, 0)
    (root / "vertical" / "broken.png").write_bytes(b"\x89PNG but not really")
    cfg = _cfg(tmp_path, data={"train": str(root)})
    problems = check_inputs(cfg)
    assert len(problems) == 1 and "broken.png" in problems[0] and "unreadable" in problems[0]
    cfg = _cfg(tmp_path, data={"train": str(root), "on_bad_rows": "skip"})
    assert check_inputs(cfg) == []
    bad = _cfg(tmp_path, data={"train": str(root)}, model={"base": "vgg", "lora": {"r": 2}})
    problems = check_inputs(bad)
    assert any("model.lora" in p for p in problems) and any("'vgg'" in p for p in problems)


def test_max_steps_alone_sets_the_length(tmp_path: Path) -> None:
    from tailorml.recipes.images import train_images

    npz = write_npz(tmp_path / "t.npz", *example_images(40, 0))
    cfg = _cfg(tmp_path, data={"train": str(npz)}, train={"max_steps": 2})
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": None})})
    assert train_images(cfg)["train"]["steps"] == 2


def test_flip_tta_averages_the_mirror_and_travels_with_the_model(tmp_path: Path) -> None:
    import copy

    import onnxruntime as ort
    import torch

    from tailorml.compress.images import export_image_onnx
    from tailorml.models.images import ImageClassifier, load_image_classifier

    torch.manual_seed(0)
    net = ImageClassifier("resnet", 1, 3, [4, 8], [1, 1]).eval()
    x = torch.rand(5, 1, 8, 8)
    plain = net(x)
    net.tta_flip = True
    with torch.inference_mode():
        both = net(x)
        want = 0.5 * (net._logits(x) + net._logits(x.flip(-1)))
    assert torch.allclose(both, want) and not torch.allclose(both, plain)
    trained = copy.deepcopy(net).train()  # training never averages (a copy: BN stats move)
    assert torch.allclose(trained(x), trained._logits(x))
    net.save_pretrained(tmp_path / "m")
    again = load_image_classifier(tmp_path / "m")
    assert again.tta_flip and torch.allclose(again(x), both, atol=1e-6)
    export_image_onnx(again, (8, 8, 1), tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(got, both.numpy(), atol=1e-5)
