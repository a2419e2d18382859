"""Image classification: one class per image (softmax, cross-entropy), on a convolutional network.

The task is single-label classification (`tailorml/tasks/classification.py`: labels, loss,
metrics, output and parity are the same); what differs is the model family (`image-classifier`,
tailorml/models/images.py) and the data: images read by tailorml/data/images.py from a folder of
class subfolders, MNIST-style idx files or an npz file. It is trained by its own recipe
(tailorml/recipes/images.py, picked by family), served by tailorml/serve/images.py and compressed
by tailorml/compress/images.py; the text-only steps refuse it with the commands that handle it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tailorml.errors import ConfigError
from tailorml.tasks import register
from tailorml.tasks.base import IMAGE_CLASSIFIER
from tailorml.tasks.classification import ClassificationTask

if TYPE_CHECKING:
    from tailorml.config.schema import RunConfig
    from tailorml.tasks.heads import HeadSpec

IMAGE_BASES = ("resnet18", "resnet-small", "cnn")


def example_images(n: int, seed: int, size: int = 8) -> tuple[np.ndarray, list[str]]:
    """`n` tiny grayscale images (n, size, size, 1) uint8 with their labels: a bright vertical or
    horizontal bar on a noisy background, which a tiny network tells apart in a few steps."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(n, size, size, 1), dtype=np.uint8)
    labels = []
    for i in range(n):
        pos = int(rng.integers(1, size - 1))
        if i % 2 == 0:
            x[i, :, pos, 0] = 230
            labels.append("vertical")
        else:
            x[i, pos, :, 0] = 230
            labels.append("horizontal")
    return x, labels


class ImageClassificationTask(ClassificationTask):
    family = IMAGE_CLASSIFIER
    label_help = (
        "the class subfolder of an image folder, or y of an npz / the labels idx file (integer "
        "ids named by data.label_names)"
    )

    def __init__(self) -> None:
        super().__init__(
            name="image-classification",
            description="one class per image (a ResNet or a small CNN trained on your images)",
        )

    def config_problems(self, prefix: str, data: dict[str, Any]) -> list[str]:
        out = []
        for key in ("text_column", "text_pair_column"):
            if data.get(key) not in (None, "text"):
                out.append(
                    f"`{prefix}data.{key}` is set, but image-classification reads images, not "
                    "columns. Remove it."
                )
        return out

    def example_rows(self, n: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Files of a class folder (`data.train: data/my_images`), one row per image: its path
        and class. The images themselves, as tests make them: `example_images`."""
        _, labels = example_images(n, seed)
        rows = [{"image": f"{lab}/{i}.png", "label": lab} for i, lab in enumerate(labels)]
        return rows, {"train": "data/my_images"}


def check_image_config(cfg: RunConfig) -> HeadSpec:
    """What an image run cannot have, before any data is read; its (label-less) head."""
    from tailorml.tasks import find_task
    from tailorml.tasks.heads import HeadSpec

    task = find_task(cfg.task.type)
    if task.family != IMAGE_CLASSIFIER:
        raise ConfigError(f"`task.type` = {cfg.task.type!r} is not an image task.")
    if cfg.heads is not None:
        raise ConfigError(
            "`heads` is set, but image-classification trains one head. Remove `heads`."
        )
    if cfg.model.lora is not None:
        raise ConfigError(
            "`model.lora` is set, but image networks are trained in full. Remove `model.lora`."
        )
    if cfg.distill.teacher is not None:
        raise ConfigError("`distill.teacher` is not supported for image-classification.")
    return HeadSpec("", task.name, None, 0, 0)


TASK = register(ImageClassificationTask())
