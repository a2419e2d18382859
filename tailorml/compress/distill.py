"""Knowledge distillation: a shallower student initialised from the teacher's own layers, trained
on the teacher's soft labels plus the gold labels through the fine-tuning engine, and optionally on
the teacher's intermediate layers:

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(gold)
         + hidden_weight * mean over mapped layers of MSE(student layer output, teacher's)
         + attention_weight * mean over mapped layers of KL(teacher attention map || student's)

(Hinton et al. 2015 for the soft labels; the student keeps evenly spaced teacher layers, as
DistilBERT does; hidden-state and attention-map matching per mapped layer as TinyBERT does, with
MiniLM's KL on attention distributions.) Student layer i is matched with the teacher layer it was
copied from. The attention maps are recomputed from the query/key projections caught by forward
hooks, so both models keep their fast fused attention; padding is masked out of every term.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F

from tailorml.compress.prune import encoder_layers
from tailorml.errors import ConfigError

_MASKED = -1e9  # attention score of a padding key (finite: masked terms give 0, never NaN)


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


def layer_pairs(student: Any, teacher: Any) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs to match: the layers a student made by
    `make_student` was copied from, layer to layer for equal depths, else evenly spaced."""
    n_s, n_t = len(encoder_layers(student)), len(encoder_layers(teacher))
    keep = getattr(student.config, "tailorml_student_of_layers", None)
    if isinstance(keep, list) and len(keep) == n_s and all(0 <= k < n_t for k in keep):
        return list(enumerate(int(k) for k in keep))
    if n_s == n_t:
        return [(i, i) for i in range(n_s)]
    if n_s > n_t:
        raise ConfigError(
            f"distill.hidden_weight / distill.attention_weight: the student has {n_s} layers, "
            f"more than the teacher's {n_t}; set both to 0 to distil from the logits only."
        )
    return list(enumerate(student_layers(n_t, n_s)))


class LayerTaps:
    """Forward hooks that keep, per encoder layer, the layer's output and its self-attention's
    query and key projections (batch, tokens, hidden) of the latest forward pass. With
    `training_only`, passes in eval mode are not kept (the student's evaluations)."""

    def __init__(self, model: Any, training_only: bool = False) -> None:
        self.out: dict[tuple[str, int], torch.Tensor] = {}
        self.heads: list[int] = []
        self.hidden = int(model.config.hidden_size)
        self._training_only = training_only
        self._handles = []
        for i, layer in enumerate(encoder_layers(model)):
            attn = layer.attention.self
            self.heads.append(int(attn.query.out_features // attn.attention_head_size))
            for key, module in (("h", layer), ("q", attn.query), ("k", attn.key)):
                self._handles.append(module.register_forward_hook(self._keep(key, i)))

    def _keep(self, kind: str, i: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            if self._training_only and not module.training:
                return
            self.out[(kind, i)] = output[0] if isinstance(output, tuple) else output

        return hook

    def take(self) -> dict[tuple[str, int], torch.Tensor]:
        out, self.out = self.out, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def attention_logprobs(q: torch.Tensor, k: torch.Tensor, heads: int, mask: torch.Tensor) -> Any:
    """Log attention distributions (batch, heads, query, key) from the projections, padding keys
    masked: the map softmax(Q K^T / sqrt(d)) the layer computed."""
    b, n, _ = q.shape
    qh = q.float().view(b, n, heads, -1).transpose(1, 2)
    kh = k.float().view(b, n, heads, -1).transpose(1, 2)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])
    scores = scores.masked_fill(~mask[:, None, None, :], _MASKED)
    return F.log_softmax(scores, dim=-1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean of (batch, tokens) values over the real tokens."""
    m = mask.to(values.dtype)
    return (values * m).sum(1) / m.sum(1).clamp(min=1)


def intermediate_losses(
    student: dict[tuple[str, int], torch.Tensor],
    teacher: dict[tuple[str, int], torch.Tensor],
    pairs: list[tuple[int, int]],
    heads: list[int],
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example hidden-state MSE and attention-map KL, each averaged over the layer pairs."""
    valid = mask.bool()
    hidden, attention = [], []
    for s, t in pairs:
        diff = (student[("h", s)].float() - teacher[("h", t)].float()).pow(2).mean(-1)
        hidden.append(_masked_mean(diff, valid))
        log_s = attention_logprobs(student[("q", s)], student[("k", s)], heads[s], valid)
        log_t = attention_logprobs(teacher[("q", t)], teacher[("k", t)], heads[s], valid)
        kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean(1)  # (batch, query)
        attention.append(_masked_mean(kl, valid))
    return torch.stack(hidden).mean(0), torch.stack(attention).mean(0)


class DistillLoss:
    """Per-example distillation loss for `finetune(loss_fn=...)`. Logits only: the teacher's
    logits are computed on first use of each training example and cached (the train set is the
    same every epoch). With intermediate weights, the teacher runs beside the student on every
    batch (its layer outputs would not fit a cache) and `attach(student)` must be called."""

    def __init__(
        self,
        teacher: Any,
        temperature: float = 2.0,
        alpha: float = 0.5,
        hidden_weight: float = 0.0,
        attention_weight: float = 0.0,
    ):
        self.teacher = teacher.eval()
        self.temperature = temperature
        self.alpha = alpha
        self.hidden_weight = hidden_weight
        self.attention_weight = attention_weight
        self.intermediate = hidden_weight > 0 or attention_weight > 0
        self._cache: dict[int, torch.Tensor] = {}
        self._student_taps: LayerTaps | None = None
        self._teacher_taps: LayerTaps | None = None
        self._pairs: list[tuple[int, int]] = []

    def attach(self, student: Any) -> None:
        """Hook the student's and the teacher's layers (intermediate terms only); checks that
        the matched layers have the same width and number of heads."""
        if not self.intermediate:
            return
        self._pairs = layer_pairs(student, self.teacher)
        s_taps, t_taps = LayerTaps(student, training_only=True), LayerTaps(self.teacher)
        for s, t in self._pairs:
            if s_taps.hidden != t_taps.hidden or s_taps.heads[s] != t_taps.heads[t]:
                s_taps.remove()
                t_taps.remove()
                raise ConfigError(
                    f"distill.hidden_weight / distill.attention_weight: student layer {s} "
                    f"(hidden {s_taps.hidden}, {s_taps.heads[s]} heads) cannot be matched with "
                    f"teacher layer {t} (hidden {t_taps.hidden}, {t_taps.heads[t]} heads); set "
                    "both to 0 to distil from the logits only."
                )
        self._student_taps, self._teacher_taps = s_taps, t_taps

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

    def _soft_hard(self, logits: torch.Tensor, teacher: torch.Tensor, labels: Any) -> Any:
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(logits.float() / t, dim=-1),
            F.log_softmax(teacher / t, dim=-1),
            reduction="none",
            log_target=True,
        ).sum(-1) * (t * t)  # (batch,)
        hard = F.cross_entropy(logits.float(), labels, reduction="none")  # (batch,)
        return self.alpha * soft + (1 - self.alpha) * hard

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, inputs: dict[str, Any], idx: Any
    ) -> torch.Tensor:
        if not self.intermediate:
            return self._soft_hard(logits, self.teacher_logits(inputs, idx), labels)
        if self._student_taps is None or self._teacher_taps is None:
            raise RuntimeError("DistillLoss.attach(student) was not called")
        student = self._student_taps.take()
        device = logits.device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():  # not inference_mode: its tensors may not enter the backward
            teacher_logits = self.teacher(**inputs).logits.float()
        teacher = self._teacher_taps.take()
        hidden, attention = intermediate_losses(
            student, teacher, self._pairs, self._student_taps.heads, inputs["attention_mask"]
        )
        loss = self._soft_hard(logits, teacher_logits, labels)
        return loss + self.hidden_weight * hidden + self.attention_weight * attention
