"""Knowledge distillation: a shallower student initialised from the teacher's own layers, trained
on the teacher's soft labels plus the gold labels through the fine-tuning engine.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(gold)

(Hinton et al. 2015; the student keeps evenly spaced teacher layers, as DistilBERT does.)
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from tailorml.compress.prune import encoder_layers
from tailorml.errors import ConfigError


def student_layers(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spaced teacher layers, always ending with the last one: 6 -> 3 keeps [1, 3, 5]."""
    if not 1 <= n_student < n_teacher:
        raise ConfigError(
            f"--student-layers {n_student}: the teacher has {n_teacher} layers; give a number "
            f"from 1 to {n_teacher - 1}."
        )
    step = n_teacher / n_student
    return [round(n_teacher - 1 - step * (n_student - 1 - i)) for i in range(n_student)]


def make_student(teacher: Any, n_layers: int) -> Any:
    """A copy of the teacher with only `n_layers` of its encoder layers (embeddings and head
    kept): a good initialisation, which is why students start from the teacher's layers."""
    student = copy.deepcopy(teacher)
    layers = encoder_layers(student)
    keep = student_layers(len(layers), n_layers)
    new = torch.nn.ModuleList([layers[i] for i in keep])
    for i, layer in enumerate(new):  # layer_idx is only used by KV caches; keep it consistent
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = i  # type: ignore[assignment]
    base = getattr(student, student.base_model_prefix)
    base.encoder.layer = new
    student.config.num_hidden_layers = n_layers
    student.config.tailorml_student_of_layers = keep
    return student


class DistillLoss:
    """Per-example distillation loss for `finetune(loss_fn=...)`; teacher logits are computed on
    first use of each training example and cached (the train set is the same every epoch)."""

    def __init__(self, teacher: Any, temperature: float = 2.0, alpha: float = 0.5):
        self.teacher = teacher.eval()
        self.temperature = temperature
        self.alpha = alpha
        self._cache: dict[int, torch.Tensor] = {}

    def teacher_logits(self, inputs: dict[str, torch.Tensor], idx: Any) -> torch.Tensor:
        rows = [int(i) for i in idx]
        missing = [j for j, r in enumerate(rows) if r not in self._cache]
        if missing:
            with torch.inference_mode():
                sub = {k: v[missing].cpu() for k, v in inputs.items()}
                # Trim the padding the sub-batch does not need.
                width = int(sub["attention_mask"].sum(1).max())
                sub = {k: v[:, :width] for k, v in sub.items()}
                out = self.teacher(**sub).logits.float()
            for j, logit in zip(missing, out, strict=True):
                self._cache[rows[j]] = logit.clone()
        device = next(iter(inputs.values())).device
        return torch.stack([self._cache[r] for r in rows]).to(device)

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, inputs: dict[str, Any], idx: Any
    ) -> torch.Tensor:
        t = self.temperature
        teacher = self.teacher_logits(inputs, idx)
        soft = F.kl_div(
            F.log_softmax(logits.float() / t, dim=-1),
            F.log_softmax(teacher / t, dim=-1),
            reduction="none",
            log_target=True,
        ).sum(-1) * (t * t)  # (batch,)
        hard = F.cross_entropy(logits.float(), labels, reduction="none")  # (batch,)
        return self.alpha * soft + (1 - self.alpha) * hard
