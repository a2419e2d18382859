"""Intermediate-layer distillation: the attention maps recomputed from hooked projections
equal the model's own, the hidden-state and attention terms vanish for a student equal to its
teacher and not otherwise, gradients reach the student's layers, mismatched layers are refused;
and the int8 kernel report follows the CPU flags."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tailorml.compress.distill import (
    DistillLoss,
    LayerTaps,
    attention_logprobs,
    layer_pairs,
    make_student,
)
from tailorml.errors import ConfigError

from .test_compress import random_batch, tiny_model


def test_attention_maps_from_hooked_projections_equal_the_models_own() -> None:
    model = tiny_model(heads=4, hidden=32, layers=2)
    taps = LayerTaps(model)
    batch = random_batch(6, seq=20)
    model.config._attn_implementation = "eager"  # eager attention returns its maps
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    mask = batch["attention_mask"].bool()
    for i, want in enumerate(out.attentions):  # (batch, heads, query, key)
        got = attention_logprobs(taps.out[("q", i)], taps.out[("k", i)], 4, mask).exp()
        real = mask[:, None, :, None].expand_as(want)  # rows of real query tokens
        assert torch.allclose(got[real], want[real], atol=1e-5)
        assert float(got[~mask[:, None, None, :].expand_as(got)].max()) < 1e-12  # padding keys


def _no_dropout(model):  # type: ignore[no-untyped-def]
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _loss(weights: tuple[float, float], teacher, student, batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
    loss = DistillLoss(teacher, alpha=0.0, hidden_weight=weights[0], attention_weight=weights[1])
    loss.attach(student)
    labels = torch.zeros(len(batch["input_ids"]), dtype=torch.long)
    hard = DistillLoss(teacher, alpha=0.0)
    logits = student(**batch).logits
    value = loss(logits, labels, batch, np.arange(len(labels)))
    return value - hard(logits, labels, batch, np.arange(len(labels)))


def test_intermediate_terms_vanish_for_a_copy_and_train_a_different_student() -> None:
    teacher = tiny_model(layers=2)
    torch.manual_seed(3)
    for module in teacher.modules():  # weights large enough for layers to differ and attend
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.4)
    batch = random_batch(4)
    same = _no_dropout(copy.deepcopy(teacher).train())  # computes exactly what the teacher does
    assert layer_pairs(same, teacher) == [(0, 0), (1, 1)]
    extra = _loss((1.0, 1.0), teacher, same, batch)
    assert torch.allclose(extra, torch.zeros(4), atol=1e-5), extra

    # the student's one layer is the teacher's layer 1, fed the embeddings instead of layer 0
    student = _no_dropout(make_student(teacher, 1).train())
    assert layer_pairs(student, teacher) == [(0, 1)]
    hidden = _loss((1.0, 0.0), teacher, student, batch)
    attention = _loss((0.0, 1.0), teacher, student, batch)
    assert (hidden > 0).all() and (attention > 0).all()
    both = _loss((2.0, 3.0), teacher, student, batch)
    assert torch.allclose(both, 2 * hidden + 3 * attention, atol=1e-5)
    student.zero_grad()
    both.sum().backward()
    query = student.bert.encoder.layer[0].attention.self.query.weight
    assert query.grad is not None and float(query.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.parameters())  # the teacher does not train


def test_student_evaluations_are_not_kept_and_bad_pairs_are_refused() -> None:
    teacher = tiny_model(layers=2)
    student = make_student(teacher, 1)
    taps = LayerTaps(student, training_only=True)
    with torch.no_grad():
        student.eval()(**random_batch(2))
    assert taps.out == {}
    student.train()(**random_batch(2))
    assert set(taps.take()) == {("h", 0), ("q", 0), ("k", 0)} and taps.out == {}

    narrow = tiny_model(heads=4, hidden=16, layers=1)
    with pytest.raises(ConfigError, match="distill.hidden_weight"):
        DistillLoss(teacher, hidden_weight=1.0).attach(narrow)
    deeper = tiny_model(layers=3)
    with pytest.raises(ConfigError, match="more than the teacher"):
        DistillLoss(teacher, attention_weight=1.0).attach(deeper)
    DistillLoss(teacher).attach(narrow)  # logits only: any student that answers the classes


def test_int8_kernels_follow_the_cpu_flags_in_mlas_order() -> None:
    from tailorml import env

    def ort(flags: set[str]) -> str:
        return env.int8_kernels(flags)["onnxruntime"]

    assert "AMX" in ort({"avx2", "avx512bw", "avx512_vnni", "amx_tile", "amx_int8"})
    assert "AVX-512 VNNI" in ort({"avx2", "avx512bw", "avx512_vnni"})
    assert "AVX-VNNI" in ort({"avx2", "avx_vnni"})
    assert "AVX-512BW" in ort({"avx2", "avx512bw"})
    assert "AVX2" in ort({"avx2"}) and "inferred" in ort({"avx2"})
    assert "kernels" in env.int8_kernels(set())["torch"]
