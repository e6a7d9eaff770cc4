from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vl_models.layers.momentum import (
    FeatureQueue,
    copy_student_to_teacher,
    freeze,
    linear_ramp,
    momentum_update,
)


def test_queue_init_buffers_and_state_dict():
    q = FeatureQueue(8, 5)
    assert q.features.shape == (5, 8) and q.ptr.dtype == torch.long and q.ptr.ndim == 0
    assert torch.allclose(q.features.norm(dim=1), torch.ones(5))
    assert set(q.state_dict()) == {"features", "ptr"}
    with pytest.raises(ValueError, match="size"):
        FeatureQueue(8, 0)


def test_queue_wrap_around_and_ptr():
    q = FeatureQueue(2, 5)
    q.features.zero_()
    a = torch.arange(6.0).view(3, 2) + 1  # rows 1..3
    q.enqueue(a)
    assert int(q.ptr) == 3 and torch.equal(q.features[:3], a) and (q.features[3:] == 0).all()
    b = torch.arange(6.0).view(3, 2) + 100
    q.enqueue(b)  # wraps: rows 3, 4 then 0
    assert int(q.ptr) == 1
    assert torch.equal(q.features, torch.stack([b[2], a[1], a[2], b[0], b[1]]))


def test_queue_batch_larger_than_queue_equals_row_by_row():
    feats = torch.randn(13, 3)
    big, small = FeatureQueue(3, 5), FeatureQueue(3, 5)
    big.enqueue(torch.randn(2, 3))  # start from a non-zero ptr
    small.load_state_dict(big.state_dict())
    big.enqueue(feats)
    for row in feats:
        small.enqueue(row[None])
    assert torch.equal(big.features, small.features) and int(big.ptr) == int(small.ptr) == (2 + 13) % 5


def test_queue_enqueue_has_no_grad_and_casts():
    q = FeatureQueue(4, 6).to(torch.float64)
    x = torch.randn(2, 4, requires_grad=True)
    q.enqueue(x)
    assert not q.features.requires_grad and q.features.dtype == torch.float64
    with pytest.raises(ValueError, match="feats"):
        q.enqueue(torch.randn(2, 3))


def test_queue_reset_skips_loaded_buffers():
    q = FeatureQueue(4, 6)
    loaded = torch.randn(6, 4)
    q.features.copy_(loaded)
    q.ptr.fill_(3)
    q.features._is_hf_initialized = True
    q.ptr._is_hf_initialized = True
    q.reset_parameters()
    assert torch.equal(q.features, loaded) and int(q.ptr) == 3
    fresh = FeatureQueue(4, 6)
    fresh.ptr.fill_(3)
    fresh.reset_parameters(generator=torch.Generator().manual_seed(0))
    assert int(fresh.ptr) == 0 and torch.allclose(fresh.features.norm(dim=1), torch.ones(6))
    again = FeatureQueue(4, 6)
    again.reset_parameters(generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.features, fresh.features)


def _net():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_momentum_update_matches_formula_and_copies_buffers():
    s1, s2 = _net(), nn.Linear(2, 2)
    t1, t2 = _net(), nn.Linear(2, 2)
    s1(torch.randn(5, 3))  # changes the student's BatchNorm running stats
    before = [p.clone() for p in list(t1.parameters()) + list(t2.parameters())]
    momentum_update([(s1, t1), (s2, t2)], 0.9)
    students = list(s1.parameters()) + list(s2.parameters())
    for old, s, t in zip(before, students, list(t1.parameters()) + list(t2.parameters())):
        assert torch.allclose(t, 0.9 * old + 0.1 * s)
    for name, buf in s1.named_buffers():
        assert torch.equal(dict(t1.named_buffers())[name], buf)
    # momentum 1 keeps the teacher, momentum 0 copies the student
    t_before = [p.clone() for p in t2.parameters()]
    momentum_update([(s2, t2)], 1.0)
    assert all(torch.equal(a, b) for a, b in zip(t_before, t2.parameters()))
    momentum_update([(s2, t2)], 0.0)
    assert all(torch.equal(a, b) for a, b in zip(s2.parameters(), t2.parameters()))


def test_momentum_update_validates():
    with pytest.raises(ValueError, match="momentum"):
        momentum_update([(_net(), _net())], 1.5)
    with pytest.raises(ValueError, match="pairs"):
        momentum_update([(_net(), nn.Linear(3, 4))], 0.9)
    with pytest.raises(ValueError, match="pairs"):
        momentum_update([(nn.Linear(3, 4), nn.Linear(3, 5))], 0.9)


def test_copy_and_freeze():
    student = _net()
    student(torch.randn(5, 3))
    teacher = freeze(copy.deepcopy(_net()))
    copy_student_to_teacher([(student, teacher)])
    for a, b in zip(student.state_dict().values(), teacher.state_dict().values()):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    assert not teacher(torch.randn(4, 3)).requires_grad  # the teacher never joins the student's graph


def test_linear_ramp():
    assert linear_ramp(0, 100, 0.4) == 0.0
    assert linear_ramp(50, 100, 0.4) == pytest.approx(0.2)
    assert linear_ramp(100, 100, 0.4) == pytest.approx(0.4)
    assert linear_ramp(1000, 100, 0.4) == pytest.approx(0.4)
    assert linear_ramp(5, 0, 0.4) == 0.4
    with pytest.raises(ValueError, match="step"):
        linear_ramp(-1, 10, 0.4)


def _lora_albef(pattern: str):
    """ALBEF tiny with LoRA (PEFT) on the attention layers `pattern` matches, and one padded batch."""
    peft = pytest.importorskip("peft")
    import vl_models
    from conftest import make_batch

    torch.manual_seed(0)
    model = vl_models.AlbefForPreTraining(vl_models.get_config("albef", "tiny", momentum=0.5))
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=pattern, init_lora_weights=False))
    return wrapped.train(), model, make_batch(model.config)


def test_lora_on_the_student_only_trains_and_the_teacher_keeps_following_the_base_weights():
    """Used to raise "`pairs`: student and teacher parameters differ" at the first forward: PEFT renames a wrapped
    layer's weights (`q_proj.base_layer.weight`) and adds its adapters to the student only."""
    wrapped, model, batch = _lora_albef(r"^albef\..*\.(q_proj|v_proj)$")
    student, teacher = model.albef.fusion.layers[0].cross_attn.fn.q_proj, \
        model.momentum_model.fusion.layers[0].cross_attn.fn.q_proj
    assert hasattr(student, "base_layer") and not hasattr(teacher, "base_layer")
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n, p in wrapped.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    lora_b = student.lora_B["default"].weight.detach().clone()
    for _ in range(2):
        out = wrapped(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.isfinite(out.loss)
    assert not torch.equal(student.lora_B["default"].weight, lora_b)  # the adapters learn
    # the base weights stay frozen, and the teacher, an EMA of them, stays equal to them
    assert torch.equal(teacher.weight, student.base_layer.weight)


def test_lora_on_student_and_teacher_mirrors_the_adapters_by_ema():
    wrapped, model, batch = _lora_albef(r".*fusion.*\.(q_proj|v_proj)$")
    student, teacher = model.albef.fusion.layers[0].cross_attn.fn.q_proj, \
        model.momentum_model.fusion.layers[0].cross_attn.fn.q_proj
    s, t = student.lora_A["default"].weight, teacher.lora_A["default"].weight
    expected = torch.lerp(t.detach().clone(), s.detach(), 1.0 - model.config.momentum)
    with torch.no_grad():
        wrapped(**batch)  # a training forward takes one momentum step
    assert torch.equal(t, expected) and not torch.equal(t, s)
