"""`tailor finwatch train`: one encoder, two heads (topic and sentiment), through the engine;
then the sentiment head's temperature is fitted on its eval split (calibrate.py).

The config is an ordinary multi-task run config (`heads:` with a `topic` and a `sentiment` head);
the two bundled tweet sets are disjoint collections (no tweet has both labels), and the engine's
multi-task loop alternates batches between the heads. One encoder pass per event then gives both
answers, half the cost of two models (measured in docs/benchmarks-finwatch.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tailorml.config.load import load_config
from tailorml.errors import ConfigError

HEADS = ("topic", "sentiment")


def train_model(
    config: Path, overrides: list[str], overwrite: bool = False, resume: bool = False
) -> dict[str, Any]:
    from tailorml.recipes.finetune import finetune

    cfg = load_config(config, overrides)
    missing = [h for h in HEADS if cfg.heads is None or h not in cfg.heads]
    if missing:
        raise ConfigError(
            f"{config}: finwatch needs a multi-task config with heads `topic` and `sentiment`; "
            f"missing: {', '.join(f'heads.{h}' for h in missing)}. See configs/finwatch-train.yaml."
        )
    res = finetune(cfg, resume=resume, overwrite=overwrite)
    model = Path(cfg.output_dir) / "model"
    # Temperature scaling of the sentiment head on its eval split (calibrate.py), written into
    # the model folder for the scorer; a compressed variant is calibrated by `finwatch calibrate`.
    assert cfg.heads is not None
    eval_file = cfg.heads["sentiment"].data.eval
    calibration: dict[str, Any] | str = "skipped: heads.sentiment.data.eval is not set"
    if eval_file is not None:
        from tailorml.apps.finwatch.calibrate import calibrate_folder

        calibration = calibrate_folder(model, eval_file, "sentiment", threads=cfg.train.threads)
    return {
        "calibration": calibration,
        "model": str(Path(cfg.output_dir) / "model"),
        "heads": {
            h: {
                split: {k: round(res[split]["heads"][h][k], 4) for k in ("accuracy", "macro_f1")}
                for split in ("eval", "test")
            }
            for h in HEADS
        },
        "train_samples_per_s": res["train"]["train_samples_per_s"],
    }
