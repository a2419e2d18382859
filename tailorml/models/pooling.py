"""How the sequence classifier turns token states into one vector: `cls` or `mean`.

`cls` is the Hugging Face classifier as it comes: the first token's state through the base's
pooler (a dense layer + tanh), then dropout and the output layer. `mean` averages the token
states over the attention mask (padding left out) and puts dropout and the output layer on that
average, with no pooler. Sentence encoders such as the packaged all-MiniLM-L6-v2 were trained to
make that average meaningful (their `1_Pooling/config.json` says `pooling_mode_mean_tokens`).
Measured with the chosen defaults on three sets (docs/benchmarks.md, "Mean pooling and a
linear-probe start"), `mean` was level with `cls` within the noise, so `auto` keeps `cls`, which
plain transformers loads as trained, unless the base is a tailorml model folder trained with
`mean`.

A mean-pooled model folder is a BERT folder whose config.json carries `"tailorml_pooling":
"mean"` and no pooler weights. tailorml's loaders read the flag (`classifier_class`); a plain
`AutoModelForSequenceClassification.from_pretrained` would not, and would put a fresh pooler
where the average belongs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tailorml.errors import ConfigError

POOLING_KEY = "tailorml_pooling"
CHOICES = ("auto", "cls", "mean")


def sentence_pooling(path: Path | None) -> str | None:
    """The pooling a sentence-transformers folder was trained with (`mean` / `cls` / other),
    None for a folder without a sentence-transformers pooling module."""
    if path is None:
        return None
    modules = path / "modules.json"
    if not modules.is_file():
        return None
    try:
        entries = json.loads(modules.read_text(encoding="utf-8"))
        pool = next((e for e in entries if str(e.get("type", "")).endswith("models.Pooling")), None)
        if pool is None:
            return None
        conf = json.loads((path / pool["path"] / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if conf.get("pooling_mode_mean_tokens"):
        return "mean"
    if conf.get("pooling_mode_cls_token"):
        return "cls"
    return "other"


def resolve_pooling(setting: str, path: Path | None, config: Any) -> tuple[str, str]:
    """(`cls` | `mean`, why) for `model.pooling: setting` on the base at `path` (its `config`)."""
    model_type = getattr(config, "model_type", None)
    if setting not in CHOICES:
        raise ConfigError(f"model.pooling: {setting!r} is not one of {', '.join(CHOICES)}.")
    if setting == "mean" and model_type != "bert":
        raise ConfigError(
            f"model.pooling: mean is built for BERT-family encoders; this base is "
            f"{model_type!r}. Set `model.pooling: cls` (or leave it out)."
        )
    if setting != "auto":
        return setting, "set in the config"
    own = getattr(config, POOLING_KEY, None)
    if own in ("cls", "mean"):  # a tailorml model folder as the base: keep what it was trained with
        return own, f"the base model folder was trained with {own} pooling"
    if sentence_pooling(path) == "mean" and model_type == "bert":
        return "cls", (
            "the first token (the default; this base was trained on the mean of its token "
            "states: `model.pooling: mean` was level with it, docs/benchmarks.md)"
        )
    if sentence_pooling(path) == "mean":
        return "cls", (
            f"the first token (the default; this base was trained on the mean of its token "
            f"states, but `model.pooling: mean` is built for BERT only, not {model_type!r})"
        )
    return "cls", "the base's own classifier pooling (first token + pooler)"


def set_pooling(config: Any, setting: str, path: Path | None) -> str:
    """Resolve `model.pooling: setting` for the base at `path` and write the choice into
    `config` (as config.json will carry it); returns why it was chosen."""
    pooling, why = resolve_pooling(setting, path, config)
    setattr(config, POOLING_KEY, pooling)
    return why


def classifier_class(config: Any) -> Any:
    """The class that loads a sequence classifier with `config` (`from_pretrained`)."""
    from transformers import AutoModelForSequenceClassification

    if getattr(config, POOLING_KEY, "cls") == "mean":
        return mean_pooled_class()
    return AutoModelForSequenceClassification


def classifier_from_config(config: Any, **kwargs: Any) -> Any:
    """A sequence classifier with fresh weights for `config` (`from_config`)."""
    from transformers import AutoModelForSequenceClassification

    if getattr(config, POOLING_KEY, "cls") == "mean":
        return mean_pooled_class()._from_config(config, **kwargs)
    return AutoModelForSequenceClassification.from_config(config, **kwargs)


_CLASS: Any = None


def mean_pooled_class() -> Any:
    """BertForSequenceClassification with the pooler replaced by the masked mean (built on first
    use: importing transformers' BERT costs a second)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import torch
    from transformers import BertForSequenceClassification
    from transformers.loss.loss_utils import ForSequenceClassificationLoss
    from transformers.modeling_outputs import SequenceClassifierOutput

    class MeanPooledBertForSequenceClassification(BertForSequenceClassification):
        # from_pretrained on a base with a pooler: its weights are expected to go unused.
        _keys_to_ignore_on_load_unexpected = [r"pooler\."]

        def __init__(self, config: Any):
            super().__init__(config)
            self.bert.pooler = None

        def forward(  # type: ignore[override]
            self,
            input_ids: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None,
            token_type_ids: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None,
            inputs_embeds: torch.Tensor | None = None,
            labels: torch.Tensor | None = None,
            **kwargs: Any,
        ) -> Any:
            kwargs.pop("return_dict", None)
            out = self.bert(
                input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                return_dict=True,
                **kwargs,
            )
            states = out.last_hidden_state  # (batch, seq, hidden)
            if attention_mask is None:
                pooled = states.mean(1)
            else:
                m = attention_mask.unsqueeze(-1).to(states.dtype)
                pooled = (states * m).sum(1) / m.sum(1).clamp(min=1.0)
            logits = self.classifier(self.dropout(pooled))
            # tailorml's recipes compute their own loss; given labels, this is the loss
            # BertForSequenceClassification computes (transformers' function for the task).
            loss = None
            if labels is not None:
                loss = ForSequenceClassificationLoss(labels, logits, self.config)
            return SequenceClassifierOutput(
                loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
            )

    _CLASS = MeanPooledBertForSequenceClassification
    return _CLASS
