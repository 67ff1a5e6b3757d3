"""m2t_torch.functional computes what m2t_core computes, raises what it raises, and differentiates right."""

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import m2t_core
from m2t_core import MomentumStats
from m2t_core.testing import (
    assert_close,
    bn_cases,
    bn_rounding_bound,
    ema_cases,
    float_dtypes,
    loss_cases,
    schedule_args,
)
from m2t_torch import functional

ALPHA_KINDS = ["float", "tensor"]


def as_tensor(a, dtype=None):
    if a is None:
        return None
    arr = np.asarray(a)
    if arr.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(arr.astype(np.float32)).to(torch.bfloat16)
    t = torch.from_numpy(arr.copy())
    return t if dtype is None else t.to(dtype)


def stats_tensors(stats):
    return MomentumStats(*(as_tensor(f) for f in stats))


def torch_kwargs(kwargs, alpha_kind="float"):
    kw = dict(kwargs)
    kw["scale"], kw["offset"] = as_tensor(kw["scale"]), as_tensor(kw["offset"])
    if alpha_kind == "tensor":
        kw["alpha"] = torch.tensor(kw["alpha"], dtype=torch.float64)
    return kw


@pytest.mark.parametrize("alpha_kind", ALPHA_KINDS)
@given(case=bn_cases())
def test_momentum_batch_norm_matches_core(alpha_kind, case):
    y_ref, stats_ref = m2t_core.momentum_batch_norm(case.x, case.stats, **case.kwargs)
    stats_in = stats_tensors(case.stats)
    x = as_tensor(case.x)
    y, stats = functional.momentum_batch_norm(x, stats_in, **torch_kwargs(case.kwargs, alpha_kind))
    assert y.dtype == x.dtype
    assert y.shape == x.shape
    assert_close(y, y_ref, atol=bn_rounding_bound(case.x, case.stats, case.kwargs))
    assert_close(stats, stats_ref)
    assert stats.mean.dtype == stats_in.mean.dtype
    assert_close(stats_in, case.stats)  # inputs untouched


@given(
    case=bn_cases(dtypes=st.sampled_from([np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]), max_rank=3)
)
def test_half_precision_inputs_match_core(case):
    y_ref, stats_ref = m2t_core.momentum_batch_norm(case.x, case.stats, **case.kwargs)
    x = as_tensor(case.x)
    y, stats = functional.momentum_batch_norm(x, stats_tensors(case.stats), **torch_kwargs(case.kwargs))
    assert y.dtype == x.dtype
    assert stats.mean.dtype == torch.float32
    assert_close(y, y_ref)
    assert_close(stats, stats_ref)  # moments in float32, as the core


@given(case=bn_cases())
def test_view_moments_match_core(case):
    kw = {k: case.kwargs[k] for k in ("num_views", "axis", "correction")}
    mean_ref, var_ref = m2t_core.view_moments(case.x, **kw)
    mean, var = functional.view_moments(as_tensor(case.x), **kw)
    assert_close((mean, var), (mean_ref, var_ref))


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_is_preserved(channels_last):
    x = torch.randn(4, 3, 5, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y, _ = functional.momentum_batch_norm(x, functional.init_stats(3), alpha=0.5)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    y_ref, _ = m2t_core.momentum_batch_norm(x.numpy(), m2t_core.init_stats(3), alpha=0.5, axis=1)
    assert_close(y, y_ref)


def test_init_stats():
    stats = functional.init_stats(5)
    ref = m2t_core.init_stats(5)
    assert_close(stats, ref)
    assert stats.mean.dtype == torch.float32
    assert stats.step.dtype == torch.int64
    assert functional.init_stats(2, np.float64).var.dtype == torch.float64
    assert functional.init_stats(2, torch.bfloat16).mean.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="num_features must be >= 1, got 0"):
        functional.init_stats(0)
    with pytest.raises(TypeError, match="floating dtype, got int32"):
        functional.init_stats(3, torch.int32)


def _bad_calls():
    x = np.arange(24, dtype=np.float32).reshape(6, 4) / 7.0
    s = m2t_core.init_stats(4)
    return {
        "views do not divide": (x, s, {"alpha": 0.5, "num_views": 4, "axis": 1}),
        "channels": (x, m2t_core.init_stats(3), {"alpha": 0.5, "axis": 1}),
        "alpha above 1": (x, s, {"alpha": 1.5, "axis": 1}),
        "alpha nan": (x, s, {"alpha": float("nan"), "axis": 1}),
        "axis 0": (x, s, {"alpha": 0.5, "axis": 0}),
        "axis out of range": (x, s, {"alpha": 0.5, "axis": 2}),
        "correction": (x, s, {"alpha": 0.5, "axis": 1, "correction": "bessel"}),
        "n = 1 unbiased": (x[:2], s, {"alpha": 0.5, "axis": 1, "correction": "unbiased"}),
        "integer x": (np.ones((4, 4), np.int64), s, {"alpha": 0.5, "axis": 1}),
        "scale shape": (x, s, {"alpha": 0.5, "axis": 1, "scale": np.ones(3, np.float32)}),
        "negative eps": (x, s, {"alpha": 0.5, "axis": 1, "eps": -1.0}),
        "zero views": (x, s, {"alpha": 0.5, "axis": 1, "num_views": 0}),
        "stats shapes": (x, s._replace(var=np.ones(3, np.float32)), {"alpha": 0.5, "axis": 1}),
    }


@pytest.mark.parametrize("name", sorted(_bad_calls()))
def test_bad_input_raises_the_core_error(name):
    x, stats, kwargs = _bad_calls()[name]
    with pytest.raises((TypeError, ValueError)) as core_err:
        m2t_core.momentum_batch_norm(x, stats, **kwargs)
    kw = dict(kwargs)
    if "scale" in kw:
        kw["scale"] = as_tensor(kw["scale"])
    with pytest.raises(type(core_err.value)) as torch_err:
        functional.momentum_batch_norm(as_tensor(x), stats_tensors(stats), **kw)
    assert str(torch_err.value) == str(core_err.value)


def test_tensor_alpha_must_be_a_single_float():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="single floating value"):
        functional.momentum_batch_norm(x, functional.init_stats(3), alpha=torch.ones(3))


def test_non_finite_commit_is_skipped():
    x = torch.randn(4, 3)
    x[1, 2] = float("inf")
    stats = functional.init_stats(3)._replace(mean=torch.tensor([1.0, 2.0, 3.0]))
    y, new = functional.momentum_batch_norm(x, stats, alpha=0.5)
    assert torch.equal(new.mean, stats.mean)
    assert torch.equal(new.var, stats.var)
    assert int(new.step) == 1
    assert int(new.skipped) == 1
    assert torch.isfinite(y[:, :2]).all()  # channels without the inf are still normalised
    _y_ref, ref = m2t_core.momentum_batch_norm(
        x.numpy(), MomentumStats(*(f.numpy() for f in stats)), alpha=0.5, axis=1
    )
    assert_close(new, ref)


# -- gradients -------------------------------------------------------------------------------------


def _reference_with_constant_moments(x0, stats, alpha, num_views, correction, eps):
    """Normalisation of a variable x with the moments of the fixed x0 (what 'moments are constants' means)."""
    mu, var = m2t_core.view_moments(x0.detach().numpy(), num_views=num_views, axis=1, correction=correction)
    mean_hat = torch.from_numpy((1 - alpha) * mu + alpha * stats.mean.numpy()[None])
    var_hat = torch.from_numpy((1 - alpha) * var + alpha * stats.var.numpy()[None])
    shape = [num_views, 1, x0.shape[1]] + [1] * (x0.dim() - 2)

    def ref(x, scale, offset):
        xv = x.unflatten(0, (num_views, -1))
        inv = (1.0 / torch.sqrt(var_hat + eps)).view(shape)
        y = (xv - mean_hat.view(shape)) * inv * scale.view(shape[1:]) + offset.view(shape[1:])
        return y.flatten(0, 1)

    return ref


@pytest.mark.parametrize(
    ("shape", "num_views", "correction", "alpha"),
    [((6, 3), 2, "biased", 0.3), ((4, 2, 3, 2), 2, "official", 0.0), ((6, 3, 4), 3, "unbiased", 0.8)],
)
def test_gradients_treat_moments_as_constants(shape, num_views, correction, alpha):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1).requires_grad_()
    c = shape[1]
    scale = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    offset = torch.randn(c, generator=gen, dtype=torch.float64).requires_grad_()
    stats = functional.init_stats(c, torch.float64)._replace(
        mean=torch.randn(c, generator=gen, dtype=torch.float64),
        var=torch.rand(c, generator=gen, dtype=torch.float64) + 0.5,
    )
    eps = 1e-5
    ref = _reference_with_constant_moments(x, stats, alpha, num_views, correction, eps)
    assert torch.autograd.gradcheck(ref, (x, scale, offset))

    def ours(x, scale, offset):
        return functional.momentum_batch_norm(
            x,
            stats,
            alpha=alpha,
            num_views=num_views,
            eps=eps,
            scale=scale,
            offset=offset,
            correction=correction,
        )[0]

    cotangent = torch.randn(shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(ours(x, scale, offset), (x, scale, offset), cotangent)
    want = torch.autograd.grad(ref(x, scale, offset), (x, scale, offset), cotangent)
    assert_close(got, want)
    # The gradient w.r.t. x is the constant-moment one, not the batch-norm one (which would be
    # orthogonal to constants per channel and view): the difference is visible whenever alpha < 1.
    assert_close(ours(x, scale, offset), ref(x, scale, offset))


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_where_moments_are_truly_constant(training):
    # α = 1 in training, and evaluation mode, normalise with the stored statistics only: the function
    # of (x, scale, offset) is then exactly what autograd differentiates.
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(3, generator=gen, dtype=torch.float64, requires_grad=True)
    offset = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    stats = functional.init_stats(3, torch.float64)

    def fn(x, scale, offset):
        return functional.momentum_batch_norm(
            x, stats, alpha=1.0, scale=scale, offset=offset, training=training
        )[0]

    assert torch.autograd.gradcheck(fn, (x, scale, offset))


# -- EMA, loss, schedules --------------------------------------------------------------------------


@pytest.mark.parametrize("momentum_kind", ["float", "tensor"])
@given(case=ema_cases(dtypes=float_dtypes(half=True)))
def test_ema_update_matches_core(momentum_kind, case):
    ref = m2t_core.ema_update(case.teacher, case.student, case.momentum)
    teacher = {k: as_tensor(v) for k, v in case.teacher.items()}
    student = {k: as_tensor(v) for k, v in case.student.items()}
    m = case.momentum if momentum_kind == "float" else torch.tensor(case.momentum, dtype=torch.float64)
    out = functional.ema_update(teacher, student, m)
    assert_close(out, ref)
    assert_close(teacher, case.teacher)  # functional: the input is untouched


def test_ema_update_errors_match_core():
    t = {"a": np.zeros(3, np.float32), "b": np.zeros(2, np.float32)}
    for student, err in [
        ({"a": np.zeros(3, np.float32), "c": np.zeros(2, np.float32)}, ValueError),
        ({"a": np.zeros(4, np.float32), "b": np.zeros(2, np.float32)}, ValueError),
        ({"a": np.zeros(3, np.int64), "b": np.zeros(2, np.float32)}, TypeError),
    ]:
        with pytest.raises(err) as core_err:
            m2t_core.ema_update(t, student, 0.9)
        with pytest.raises(err) as torch_err:
            functional.ema_update(
                {k: as_tensor(v) for k, v in t.items()}, {k: as_tensor(v) for k, v in student.items()}, 0.9
            )
        assert str(torch_err.value) == str(core_err.value)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        functional.ema_update({"a": torch.zeros(1)}, {"a": torch.zeros(1)}, 1.5)


@given(case=loss_cases(dtypes=float_dtypes(half=True)))
def test_losses_match_core(case):
    p1, p2, z1, z2 = (as_tensor(a) for a in case)
    assert_close(functional.normalize(p1), m2t_core.normalize(case.p1))
    assert_close(functional.regression_loss(p1, z2), m2t_core.regression_loss(case.p1, case.z2))
    loss = functional.symmetric_loss(p1, p2, z1, z2)
    assert loss.dim() == 0
    assert_close(loss, m2t_core.symmetric_loss(*case))


def test_loss_shape_errors_match_core():
    a, b = np.ones((2, 3), np.float32), np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="same shape") as core_err:
        m2t_core.symmetric_loss(a, a, a, b)
    with pytest.raises(ValueError, match="same shape") as torch_err:
        functional.symmetric_loss(*(as_tensor(v) for v in (a, a, a, b)))
    assert str(torch_err.value) == str(core_err.value)


@given(args=schedule_args(), step=st.integers(-5, 2 * 10**6))
def test_schedules_match_core_on_ints_and_tensors(args, step):
    ours, ref = functional.cosine_schedule(*args), m2t_core.cosine_schedule(*args)
    assert ours(step) == ref(step)
    value = ours(torch.tensor(step))
    assert value.dtype == torch.float64
    assert_close(value, np.float64(ref(step)))
    steps = torch.arange(0, 20) * max(1, step // 20)
    assert_close(ours(steps), ref(steps.numpy()))


def test_named_schedules_and_their_errors():
    assert functional.teacher_momentum_schedule(100)(0) == 0.99
    assert functional.teacher_momentum_schedule(100)(torch.tensor(100)).item() == 1.0
    assert functional.stats_momentum_schedule(100)(torch.tensor(0)).item() == 0.0
    for fn, args in [
        (functional.cosine_schedule, (0.0, 1.0, 0)),
        (functional.stats_momentum_schedule, (None,)),
        (functional.teacher_momentum_schedule, (10, 1.5)),
    ]:
        core_fn = getattr(m2t_core, fn.__name__)
        with pytest.raises(ValueError, match=r"total_steps|momentum") as core_err:
            core_fn(*args)
        with pytest.raises(ValueError, match=r"total_steps|momentum") as torch_err:
            fn(*args)
        assert str(torch_err.value) == str(core_err.value)
