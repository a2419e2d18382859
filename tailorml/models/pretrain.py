"""Models and tokenizers for self-supervised pretraining (`tailor pretrain`).

    from scratch   `model.init`: a stock transformers BertForMaskedLM (objective mlm) or
                   LlamaForCausalLM (clm) of a preset size, on a tokenizer trained on the corpus
                   with the `tokenizers` library (WordPiece, byte-level BPE or Unigram)
    continued      `model.base`: `minilm` (the packaged all-MiniLM-L6-v2: it ships no MLM head,
                   so the head's transform and bias start fresh and its output layer is tied to
                   the word embeddings), `smollm2`, or a local Hugging Face folder; the base's
                   tokenizer is kept

The loss modules wrap the model so that DDP's forward hook sees the whole loss computation:
the masked-LM one runs the vocabulary projection on the masked positions only (15% of them),
the costliest layer of a small encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tailorml.data.sft import IGNORE
from tailorml.errors import ConfigError
from tailorml.models.base import quiet_transformers
from tailorml.models.presets import SPECIALS, init_shape

if TYPE_CHECKING:
    from tailorml.config.schema import ModelInit


# ---- tokenizers ---------------------------------------------------------------------------------
def train_tokenizer(
    kind: str, objective: str, vocab_size: int, min_frequency: int, texts: Any
) -> Any:
    """A PreTrainedTokenizerFast trained on `texts` (an iterator of documents).

    wordpiece  BERT-style: whitespace/punctuation split, `##` continuation pieces (case kept)
    bpe        byte-level BPE (GPT-2 style): every byte is a piece, so nothing is unknown
    unigram    SentencePiece-style Unigram on `▁`-marked words
    An mlm tokenizer wraps each text as [CLS] text [SEP]; a clm one adds nothing (the data
    pipeline joins documents with </s>)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sp = SPECIALS[objective]
    specials = list(sp.values())
    tk: Any
    if kind == "wordpiece":
        tk = Tokenizer(models.WordPiece(unk_token=sp["unk_token"]))
        tk.normalizer = normalizers.BertNormalizer(lowercase=False)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tk.decoder = decoders.WordPiece()
        trainer: Any = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            show_progress=False,
        )
    elif kind == "bpe":
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif kind == "unigram":
        tk = Tokenizer(models.Unigram())
        tk.normalizer = normalizers.NFKC()
        tk.pre_tokenizer = pre_tokenizers.Metaspace()
        tk.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            unk_token=sp["unk_token"],
            show_progress=False,
        )
    else:  # pragma: no cover - the schema allows only the three
        raise ConfigError(f"`tokenizer.type` = {kind!r} is not wordpiece, bpe or unigram.")
    tk.train_from_iterator(texts, trainer)
    if objective == "mlm":
        from tokenizers import processors

        cls, sep = sp["cls_token"], sp["sep_token"]
        tk.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tk.token_to_id(cls)), (sep, tk.token_to_id(sep))],
        )
    return PreTrainedTokenizerFast(tokenizer_object=tk, model_max_length=1_000_000, **sp)


def tokenizer_hash(tokenizer: Any) -> str:
    """A fingerprint of a tokenizer's behaviour (vocabulary, merges, normalisation, specials)."""
    import hashlib

    backend = tokenizer.backend_tokenizer.to_str()
    extra = repr(sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items()))
    return hashlib.sha256((backend + extra).encode("utf-8")).hexdigest()[:16]


def separator_id(tokenizer: Any, objective: str) -> int:
    """The token placed between documents: [SEP] for mlm, EOS for clm."""
    tid = tokenizer.sep_token_id if objective == "mlm" else tokenizer.eos_token_id
    if tid is None:
        what = "[SEP] (sep_token)" if objective == "mlm" else "an end-of-text (eos_token)"
        raise ConfigError(f"The tokenizer has no {what} token to join documents with.")
    return int(tid)


# ---- models -------------------------------------------------------------------------------------
def build_scratch(init: ModelInit, tokenizer: Any) -> Any:
    """A random BertForMaskedLM / LlamaForCausalLM of `init`'s shape on `tokenizer`."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, LlamaConfig

    quiet_transformers()
    shape = init_shape(init.model_dump())
    assert shape is not None
    if init.arch == "bert":
        config: Any = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=shape["hidden"],
            num_hidden_layers=shape["layers"],
            num_attention_heads=shape["heads"],
            intermediate_size=shape["intermediate"],
            max_position_embeddings=init.max_positions,
            pad_token_id=tokenizer.pad_token_id,
            type_vocab_size=2,
        )
        return AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        max_position_embeddings=init.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    _set_generation_tokens(model, tokenizer)
    return model


def base_folder(base: str, objective: str) -> Path:
    """The folder of `model.base` for `objective` (nothing is loaded; a packaged SmolLM2 is
    converted on first use)."""
    if objective == "clm":
        from tailorml.models.causal_lm import causal_base_folder

        folder = causal_base_folder(base)
        assert folder is not None  # `tiny` is refused by the config check
        return folder
    from tailorml.models.base import resolve_base

    path = resolve_base(base)
    assert path is not None
    return path


def check_base(base: str, objective: str, block_size: int) -> None:
    """`model.base` is a model of the objective's kind whose positions hold `block_size`
    (reads config.json only). For `tailor validate` and the start of a run."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if objective == "clm" and base == "smollm2":
        from tailorml.models.causal_lm import SMOLLM2_DIR, cache_dir, packaged_smollm2_gguf

        packaged_smollm2_gguf()
        if not (cache_dir() / SMOLLM2_DIR / "config.json").is_file():
            return  # not converted yet (a minute): the run checks it; SmolLM2 has 8192 positions
    folder = base_folder(base, objective)
    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (ValueError, OSError) as exc:
        raise ConfigError(
            f"`model.base` = {base!r}: cannot read {folder}/config.json "
            f"({str(exc).splitlines()[0][:160]})."
        ) from None
    names = (
        MODEL_FOR_MASKED_LM_MAPPING_NAMES
        if objective == "mlm"
        else MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    )
    if config.model_type not in names:
        kind = "masked-LM encoder (e.g. BERT)" if objective == "mlm" else "causal LM (e.g. Llama)"
        raise ConfigError(
            f"`model.base` = {base!r} is a {config.model_type} model, not a {kind}, which "
            f"`pretrain.objective: {objective}` needs."
        )
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and block_size > positions:
        raise ConfigError(
            f"`pretrain.block_size` ({block_size}) is larger than the model's positions "
            f"({positions}, max_position_embeddings of `model.base` = {base!r}). Lower the "
            "block size."
        )


def load_base(base: str, objective: str) -> tuple[Any, Any]:
    """(model, tokenizer) of `model.base`, to continue pretraining."""
    folder = base_folder(base, objective)
    if objective == "clm":
        from tailorml.models.causal_lm import load_causal_lm, load_causal_tokenizer

        tok = load_causal_tokenizer(folder)
        model = load_causal_lm(folder)
        _set_generation_tokens(model, tok)
        return model, tok
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForMaskedLM.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="sdpa"
    )
    return model, tok


def pooler_tensors(base: str, objective: str) -> dict[str, torch.Tensor]:
    """The base encoder's pooler weights, keyed as a BertForSequenceClassification holds them.

    BertForMaskedLM has no pooler, so a masked-LM folder would lose the base's trained pooler
    and a classifier fine-tuned on it would start with a random one. The pretraining recipe
    adds these tensors to the saved model.safetensors (AutoModelForMaskedLM ignores them)."""
    if objective != "mlm":
        return {}
    from safetensors import safe_open

    file = base_folder(base, objective) / "model.safetensors"
    if not file.is_file():
        return {}
    out = {}
    with safe_open(str(file), "pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if key.startswith("pooler."):
                out[f"bert.{key}"] = fh.get_tensor(key)
            elif key.startswith("bert.pooler."):
                out[key] = fh.get_tensor(key)
    return out


def _set_generation_tokens(model: Any, tokenizer: Any) -> None:
    from tailorml.models.causal_lm import set_generation_tokens

    set_generation_tokens(model, tokenizer)


# ---- losses -------------------------------------------------------------------------------------
class MaskedLMLoss(torch.nn.Module):
    """Per block: summed cross-entropy over the masked tokens, and how many there are."""

    def __init__(self, lm: Any):
        super().__init__()
        self.lm = lm

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sel = labels != IGNORE  # (batch, seq): the masked positions
        head = getattr(self.lm, "cls", None) or getattr(self.lm, "lm_head", None)
        if head is not None:  # BERT (cls) / RoBERTa (lm_head): project the masked rows only
            hidden = self.lm.base_model(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state  # (batch, seq, hidden)
            logits = head(hidden[sel])  # (masked, vocab)
        else:
            logits = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits[sel]
        ce = torch.nn.functional.cross_entropy(logits.float(), labels[sel], reduction="none")
        rows = sel.nonzero()[:, 0]
        sums = torch.zeros(labels.shape[0], dtype=ce.dtype, device=ce.device).index_add(0, rows, ce)
        return sums, sel.sum(dim=1)


class CausalLMLoss(torch.nn.Module):
    """Per block: summed next-token cross-entropy over every token, and how many there are."""

    def __init__(self, lm: Any):
        super().__init__()
        self.lm = lm

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from tailorml.models.causal_lm import token_loss_sums

        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        return token_loss_sums(self.lm, batch)


def loss_module(model: Any, objective: str) -> torch.nn.Module:
    return MaskedLMLoss(model) if objective == "mlm" else CausalLMLoss(model)
