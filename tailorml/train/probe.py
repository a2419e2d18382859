"""A linear probe before fine-tuning: fit the fresh output layer on the frozen encoder first.

A classifier starts with a pretrained encoder and a random output layer. Trained together from
there, the first hundreds of steps push the random layer's errors back into the encoder. Fitting
the output layer alone on the frozen encoder's features first (a regularised linear model, its
strength chosen on the eval split by the task's own loss), then fine-tuning everything from that
start, is the "linear probe, then fine-tune" recipe (LP-FT, Kumar et al., ICLR 2022).

The features are the output layer's inputs in eval mode (a forward pre-hook on it), so this works
for any pooling and any task whose heads are logit columns of that layer: each head's columns
are fitted with its task's loss on its own training rows.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from tailorml.data.batching import Encoded, collate, plan_batches
from tailorml.errors import ConfigError

# L2 strengths tried (on the mean loss); the eval split's loss picks one.
L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2)
LBFGS_ITERS = 100


def resolve_head_init(setting: str, pretrained: bool, lora: bool, distill: bool) -> tuple[str, str]:
    """(`probe` | `random`, why) for `model.head_init: setting`."""
    if setting == "probe" and lora:
        raise ConfigError(
            "model.head_init: probe is for full fine-tuning; with `model.lora` the head trains "
            "with the adapters. Set `model.head_init: random` (or leave it out)."
        )
    if setting != "auto":
        return setting, "set in the config"
    if not pretrained:
        return "random", "a random encoder: its features are not worth a probe"
    if lora:
        return "random", "LoRA trains the head with the adapters"
    if distill:
        return "random", "a distilled student learns from its teacher's outputs"
    return "probe", "a pretrained encoder: fit the fresh output layer on its frozen features first"


def output_layer(model: Any) -> torch.nn.Linear:
    """The Linear layer whose columns are the heads (`classifier` of a BERT classifier)."""
    layer = getattr(model, "classifier", None)
    if not isinstance(layer, torch.nn.Linear):
        raise ConfigError(
            "model.head_init: probe needs a classifier whose output layer is one Linear layer "
            f"(`classifier`); this model's is {type(layer).__name__}. Set `model.head_init: "
            "random`."
        )
    return layer


@torch.no_grad()  # not inference_mode: the features enter the probe's autograd
def features(model: Any, enc: Encoded, batch_size: int, pad_id: int, device: Any) -> torch.Tensor:
    """(len(enc), in_features): the output layer's input for every example, in example order."""
    layer = output_layer(model)
    grabbed: list[torch.Tensor] = []
    hook = layer.register_forward_pre_hook(lambda _m, args: grabbed.append(args[0].float().cpu()))
    was_training = model.training
    model.eval()
    rows: list[int] = []
    try:
        for b in plan_batches(enc.lengths, batch_size, seed=0, epoch=0, shuffle=False):
            model(**{k: v.to(device) for k, v in collate(enc, b, pad_id).items()})
            rows.extend(int(i) for i in b)
    finally:
        hook.remove()
        if was_training:
            model.train()
    out = torch.empty((len(enc), layer.in_features))
    out[torch.as_tensor(rows, dtype=torch.long)] = torch.cat(grabbed)
    return out


def fit_linear(
    x: torch.Tensor, y: torch.Tensor, size: int, l2: float, loss: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (size, d), bias (size,)) minimising mean `loss(x @ w.T + b, y)` + l2 * |w|^2."""
    torch.manual_seed(0)
    w = torch.zeros(size, x.shape[1], requires_grad=True)
    b = torch.zeros(size, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=LBFGS_ITERS, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss(x @ w.T + b, y).mean() + l2 * (w * w).sum()
        value.backward()
        return value

    opt.step(closure)
    return w.detach(), b.detach()


def probe_heads(
    model: Any, heads: list[Any], enc: dict[str, dict[str, Encoded]], pad_id: int, device: Any,
    batch_size: int = 128, l2_grid: tuple[float, ...] = L2_GRID,
) -> dict[str, Any]:  # fmt: skip
    """Fit every head's columns of the output layer on the frozen features (in place). Returns
    what was chosen per head (L2, eval loss) and the seconds it took."""
    t0 = time.perf_counter()
    layer = output_layer(model)
    chosen: dict[str, Any] = {}
    with torch.enable_grad():
        for h in heads:
            e = enc[h.name]
            x_tr = features(model, e["train"], batch_size, pad_id, device)
            x_ev = features(model, e["eval"], batch_size, pad_id, device)
            y_tr = h.kind.label_tensor(e["train"].labels, h.size)
            y_ev = h.kind.label_tensor(e["eval"].labels, h.size)
            best: tuple[float, float, Any] | None = None
            for l2 in l2_grid:
                w, b = fit_linear(x_tr, y_tr, h.size, l2, h.kind.loss)
                with torch.no_grad():
                    ev = float(h.kind.loss(x_ev @ w.T + b, y_ev).mean())
                if np.isfinite(ev) and (best is None or ev < best[0]):
                    best = (ev, l2, (w, b))
            if best is None:  # every fit diverged: keep the random layer
                chosen[h.name or "head"] = {"kept": "random", "why": "the probe did not converge"}
                continue
            w, b = best[2]
            with torch.no_grad():
                layer.weight[h.columns] = w.to(layer.weight.dtype)
                layer.bias[h.columns] = b.to(layer.bias.dtype)
            chosen[h.name or "head"] = {"l2": best[1], "eval_loss": round(best[0], 5)}
    return {"heads": chosen, "seconds": round(time.perf_counter() - t0, 1)}
