"""ema_update_: in place, fused, equal to the core's EMA; pairing by name validated and cached safely."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given
from torch import nn

import m2t_core
from m2t_core.testing import assert_close, ema_cases, float_dtypes
from m2t_torch import ema_update_

MOMENTUM_KINDS = ["float", "tensor"]


def momentum_as(kind, m):
    return m if kind == "float" else torch.tensor(m, dtype=torch.float64)


@pytest.mark.parametrize("kind", MOMENTUM_KINDS)
@given(case=ema_cases(dtypes=float_dtypes(half=True)))
def test_mapping_update_matches_core(kind, case):
    ref = m2t_core.ema_update(case.teacher, case.student, case.momentum)
    teacher = {k: torch.from_numpy(v.copy()) for k, v in case.teacher.items()}
    student = {k: torch.from_numpy(v.copy()) for k, v in case.student.items()}
    pointers = {k: v.data_ptr() for k, v in teacher.items()}
    assert ema_update_(teacher, student, momentum_as(kind, case.momentum)) is teacher
    assert_close(teacher, ref)
    assert {k: v.data_ptr() for k, v in teacher.items()} == pointers  # in place
    assert_close(student, case.student)


def net():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


@pytest.mark.parametrize("kind", MOMENTUM_KINDS)
def test_module_update(kind):
    torch.manual_seed(0)
    teacher, student = net(), net()
    old = {k: v.detach().clone() for k, v in teacher.named_parameters()}
    stats = {k: v.clone() for k, v in teacher.named_buffers()}
    ema_update_(teacher, student, momentum_as(kind, 0.9))
    s = dict(student.named_parameters())
    for k, v in teacher.named_parameters():
        assert_close(v, 0.9 * old[k] + 0.1 * s[k].detach())
    for k, v in teacher.named_buffers():
        assert torch.equal(v, stats[k]), k  # statistics are the teacher's own, never averaged


@pytest.mark.parametrize("kind", MOMENTUM_KINDS)
def test_endpoints_are_exact(kind):
    torch.manual_seed(1)
    teacher, student = net(), net()
    before = copy.deepcopy(teacher)
    ema_update_(teacher, student, momentum_as(kind, 1.0))
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), before.parameters(), strict=True))
    ema_update_(teacher, student, momentum_as(kind, 0.0))
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters(), strict=True))


def test_mixed_precision_teacher_keeps_its_dtype():
    torch.manual_seed(2)
    teacher, student = net().to(torch.bfloat16), net()
    old = [p.detach().float() for p in teacher.parameters()]
    ema_update_(teacher, student, 0.5)
    for p, o, s in zip(teacher.parameters(), old, student.parameters(), strict=True):
        assert p.dtype == torch.bfloat16
        assert_close(p, (0.5 * o + 0.5 * s.detach()).to(torch.bfloat16))


def test_name_and_shape_errors():
    with pytest.raises(ValueError, match=r"only in teacher: \['3.bias', '3.weight'\], only in student: \[\]"):
        ema_update_(net(), nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), 0.9)
    wrong = net()
    wrong[3] = nn.Linear(4, 5)
    with pytest.raises(
        ValueError, match=r"shape mismatch for '3.weight': teacher \(2, 4\) vs student \(5, 4\)"
    ):
        ema_update_(net(), wrong, 0.9)
    with pytest.raises(TypeError, match=r"both be nn\.Modules or both be mappings"):
        ema_update_(net(), dict(net().named_parameters()), 0.9)
    with pytest.raises(TypeError, match=r"teacher\['a'\] has dtype int64"):
        ema_update_({"a": torch.zeros(2, dtype=torch.int64)}, {"a": torch.zeros(2, dtype=torch.int64)}, 0.9)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 1.5"):
        ema_update_(net(), net(), 1.5)
    with pytest.raises(ValueError, match="single floating value"):
        ema_update_(net(), net(), torch.tensor([0.9, 0.9]))


def test_cached_pairing_follows_changes_to_the_modules():
    teacher, student = net(), net()
    ema_update_(teacher, student, 0.5)  # builds and caches the pairing
    student.extra = nn.Linear(1, 1)  # a new parameter: the cached pairing must not be reused
    with pytest.raises(ValueError, match=r"only in student: \['extra.bias', 'extra.weight'\]"):
        ema_update_(teacher, student, 0.5)
    del student.extra
    ema_update_(teacher, student, 0.5)
    teacher[0] = nn.Linear(3, 4)  # replaced submodule: its new parameters must be the ones updated
    fresh = teacher[0].weight.detach().clone()
    ema_update_(teacher, student, 0.0)
    assert torch.equal(teacher[0].weight, student[0].weight)
    assert not torch.equal(fresh, student[0].weight)
    other = net()  # the same teacher with another student is paired anew
    ema_update_(teacher, other, 0.0)
    assert torch.equal(teacher[3].weight, other[3].weight)


def test_update_is_excluded_from_autograd():
    teacher, student = net(), net()
    ema_update_(teacher, student, 0.5)  # teacher parameters require grad here; still allowed
    assert all(p.grad_fn is None for p in teacher.parameters())
    assert np.isfinite(sum(float(p.sum()) for p in teacher.parameters()))
