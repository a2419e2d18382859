"""The image-classifier family, in plain torch: a ResNet (basic blocks) and a small CNN, with a
stem for small images (28x28, 32x32: one 3x3 convolution, no 7x7 stride-2 stem and no max-pool,
which would throw away most of such an image at the first layer).

    model.base: resnet18      stages [64, 128, 256, 512] x [2, 2, 2, 2] blocks (11M parameters)
                resnet-small  stages [32, 64, 128] x [1, 1, 1] (~0.3M): fast on a CPU
                cnn           two conv-BN-ReLU-pool stages [32, 64] and a linear layer
                FOLDER        an image run's model/ folder: its network and weights as the start
                              (the output layer is new when the classes differ)

`model.widths` and `model.blocks` change the stages. The model takes float images (batch,
channels, height, width), already normalised, and returns logits (batch, classes); its folder is
model.safetensors plus task.json (architecture, image shape, normalisation, labels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tailorml.errors import ConfigError

if TYPE_CHECKING:
    from tailorml.config.schema import ModelConfig
    from tailorml.tasks.heads import HeadSpec

WEIGHTS = "model.safetensors"
PRESETS: dict[str, dict[str, list[int]]] = {
    "resnet18": {"widths": [64, 128, 256, 512], "blocks": [2, 2, 2, 2]},
    "resnet-small": {"widths": [32, 64, 128], "blocks": [1, 1, 1]},
    "cnn": {"widths": [32, 64], "blocks": []},
}


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ImageClassifier(nn.Module):
    """A ResNet (`arch` resnet) or a small CNN (`arch` cnn) over `channels`-channel images."""

    def __init__(
        self, arch: str, channels: int, classes: int, widths: list[int], blocks: list[int]
    ):
        super().__init__()
        self.arch = {"arch": arch, "widths": widths, "blocks": blocks, "channels": channels}
        layers: list[nn.Module]
        if arch == "cnn":
            layers, cin = [], channels
            for w in widths:
                layers += [nn.Conv2d(cin, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
                layers.append(nn.MaxPool2d(2))
                cin = w
            self.features = nn.Sequential(*layers)
        else:
            stem = [nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False)]
            layers = [*stem, nn.BatchNorm2d(widths[0]), nn.ReLU()]
            cin = widths[0]
            for stage, (w, n) in enumerate(zip(widths, blocks, strict=True)):
                for b in range(n):
                    layers.append(BasicBlock(cin, w, 2 if stage > 0 and b == 0 else 1))
                    cin = w
            self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], classes)

    @property
    def tta_flip(self) -> bool:
        """Test-time augmentation: in eval mode, average the logits of the image and its mirror
        (`images.tta_flip`; saved in arch.json, so evaluation, predict, serve and the ONNX
        export all use it). Training is unchanged."""
        return bool(self.arch.get("tta_flip", False))

    @tta_flip.setter
    def tta_flip(self, on: bool) -> None:
        self.arch["tta_flip"] = bool(on)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tta_flip and not self.training:
            return 0.5 * (self._logits(x) + self._logits(x.flip(-1)))  # (n, c, h, w): mirror w
        return self._logits(x)

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True) -> None:
        """The weights as safetensors and the architecture as arch.json (what checkpoints and
        model folders hold)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS))
        (folder / "arch.json").write_text(json.dumps(self.arch), encoding="utf-8")


def shape_of(cfg: ModelConfig) -> tuple[str, list[int], list[int]]:
    """(arch, widths, blocks) of a preset base with the config's overrides; ConfigError on a
    base that is neither a preset nor an image model folder, or mismatched lists."""
    preset = PRESETS.get(cfg.base)
    if preset is None:
        raise ConfigError(
            f"`model.base` = {cfg.base!r} is not an image model. Choose resnet18, resnet-small, "
            "cnn, or an image run's model folder (RUN_DIR/model)."
        )
    widths = list(cfg.widths or preset["widths"])
    arch = "cnn" if cfg.base == "cnn" else "resnet"
    blocks = [] if arch == "cnn" else list(cfg.blocks or preset["blocks"])
    if arch == "resnet" and len(blocks) != len(widths):
        raise ConfigError(
            f"`model.blocks` {blocks} and `model.widths` {widths} differ in length: give one "
            "block count per stage width."
        )
    if not widths or any(w < 1 for w in widths) or any(b < 1 for b in blocks):
        raise ConfigError("`model.widths` and `model.blocks` must hold positive numbers.")
    return arch, widths, blocks


def base_folder(cfg: ModelConfig) -> Path | None:
    """The image model folder `model.base` names (RUN_DIR or RUN_DIR/model), or None for a
    preset; ConfigError when it is neither (`shape_of` names the choices)."""
    if cfg.base in PRESETS:
        shape_of(cfg)
        return None
    for folder in (Path(cfg.base), Path(cfg.base) / "model"):
        if (folder / "arch.json").is_file():
            return folder
    shape_of(cfg)  # raises: not a preset
    return None


def build_image_classifier(cfg: ModelConfig, heads: list[HeadSpec], channels: int) -> Any:
    """The network for `heads` (one head: the classes) over `channels`-channel images: a fresh
    preset, or an image run's model folder as the start (`model.base: FOLDER`)."""
    classes = sum(h.size for h in heads)
    folder = base_folder(cfg)
    if folder is not None:
        return _from_folder(folder, classes, channels)
    arch, widths, blocks = shape_of(cfg)
    return ImageClassifier(arch, channels, classes, widths, blocks)


def _from_folder(folder: Path, classes: int, channels: int) -> ImageClassifier:
    from safetensors.torch import load_file

    arch = json.loads((folder / "arch.json").read_text(encoding="utf-8"))
    if int(arch["channels"]) != channels:
        raise ConfigError(
            f"`model.base` {folder} reads {arch['channels']}-channel images, this data has "
            f"{channels}. Set `images.grayscale` to match it, or start from a preset."
        )
    model = ImageClassifier(arch["arch"], channels, classes, arch["widths"], arch["blocks"])
    state = load_file(str(folder / WEIGHTS))
    if state["fc.weight"].shape != model.fc.weight.shape:  # other classes: a new output layer
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    model.load_state_dict(state, strict=False)
    return model


def load_image_classifier(folder: str | Path) -> ImageClassifier:
    """A saved image network (weights checked against its architecture), in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        arch = json.loads((folder / "arch.json").read_text(encoding="utf-8"))
        state = load_file(str(folder / WEIGHTS))
        model = ImageClassifier(
            arch["arch"], arch["channels"], state["fc.weight"].shape[0], arch["widths"],
            arch["blocks"],
        )  # fmt: skip
        model.load_state_dict(state)
        model.tta_flip = bool(arch.get("tta_flip", False))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(
            f"{folder} does not hold a readable image model ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Re-create it with `tailor finetune`."
        ) from None
    return model.eval()
