"""MomentumBatchNorm: equals the core step by step, keeps buffers in place, BN-compatible state, AMP."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import m2t_core
from m2t_core import MomentumStats
from m2t_core.testing import assert_close, bn_cases, bn_rounding_bound
from m2t_torch import MomentumBatchNorm, MomentumBatchNorm1d, MomentumBatchNorm2d


def layer_for(case):
    """A layer holding case.stats, with a constant α = the case's alpha."""
    kw = case.kwargs
    dtype = torch.from_numpy(case.stats.mean).dtype
    layer = MomentumBatchNorm(
        case.x.shape[1],
        eps=kw["eps"],
        affine=kw["scale"] is not None,
        num_views=kw["num_views"],
        alpha_start=kw["alpha"],
        alpha_end=kw["alpha"],
        correction=kw["correction"],
        dtype=dtype,
    )
    with torch.no_grad():
        layer.running_mean.copy_(torch.from_numpy(case.stats.mean))
        layer.running_var.copy_(torch.from_numpy(case.stats.var))
        layer.num_batches_tracked.fill_(int(case.stats.step))
        layer.skipped.fill_(int(case.stats.skipped))
        if layer.affine:
            layer.weight.copy_(torch.from_numpy(kw["scale"]))
            layer.bias.copy_(torch.from_numpy(kw["offset"]))
    return layer.train(kw["training"])


def layer_stats(layer):
    return MomentumStats(layer.running_mean, layer.running_var, layer.num_batches_tracked, layer.skipped)


@given(case=bn_cases(axis=1))
def test_layer_matches_core(case):
    layer = layer_for(case)
    buffers = [b.data_ptr() for b in layer.buffers()]
    x = torch.from_numpy(case.x)
    y = layer(x)
    y_ref, stats_ref = m2t_core.momentum_batch_norm(case.x, case.stats, **case.kwargs)
    assert_close(y, y_ref, atol=bn_rounding_bound(case.x, case.stats, case.kwargs))
    assert_close(layer_stats(layer), stats_ref)
    assert [b.data_ptr() for b in layer.buffers()] == buffers  # updated in place


@pytest.mark.parametrize(
    ("correction", "num_views", "shape"),
    [("biased", 2, (6, 4, 3, 3)), ("official", 2, (4, 4, 2, 2)), ("unbiased", 3, (9, 4))],
)
def test_cosine_schedule_over_steps_matches_core(correction, num_views, shape):
    total = 6
    layer = MomentumBatchNorm(
        4, num_views=num_views, total_steps=total, correction=correction, dtype=torch.float64
    )
    stats = m2t_core.init_stats(4, np.float64)
    alpha = m2t_core.stats_momentum_schedule(total)
    rng = np.random.default_rng(0)
    for k in range(total + 2):
        x = rng.standard_normal(shape) * (1 + 0.2 * k) + 1.5 - 0.4 * k
        assert_close(layer.current_alpha(), np.float64(alpha(k)))
        y = layer(torch.from_numpy(x))
        y_ref, stats = m2t_core.momentum_batch_norm(
            x, stats, alpha=alpha(k), num_views=num_views, axis=1, correction=correction
        )
        assert_close(y, y_ref, err_msg=f"step {k}")
        assert_close(layer_stats(layer), stats, err_msg=f"step {k}")
    assert int(layer.num_batches_tracked) == total + 2


def test_evaluation_mode_uses_stored_statistics_and_changes_nothing():
    layer = MomentumBatchNorm2d(3, total_steps=5)
    layer(torch.randn(4, 3, 2, 2))
    layer.eval()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(5, 3, 2, 2)  # any batch size: no views in evaluation
    y = layer(x)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k
    ref = (x - layer.running_mean.view(1, 3, 1, 1)) / torch.sqrt(
        layer.running_var.view(1, 3, 1, 1) + layer.eps
    )
    assert_close(y, ref)


def test_views_are_normalised_with_their_own_moments_and_the_same_history():
    # α = 0: every view is normalised with its own batch statistics, like BatchNorm on that view alone.
    layer = MomentumBatchNorm2d(3, alpha_start=0.0, alpha_end=0.0, affine=False)
    bn = nn.BatchNorm2d(3, affine=False)
    v1, v2 = torch.randn(4, 3, 5, 5) * 3 + 2, torch.randn(4, 3, 5, 5) - 1
    y = layer(torch.cat([v1, v2]))
    assert_close(y[:4], bn(v1), rtol=1e-5, atol=1e-5)
    assert_close(y[4:], bn(v2), rtol=1e-5, atol=1e-5)
    # the commit averages the views' moments
    mean = (v1.mean((0, 2, 3)) + v2.mean((0, 2, 3))) / 2
    assert_close(layer.running_mean, mean, rtol=1e-5, atol=1e-6)


def test_non_finite_commit_is_skipped_and_counted():
    layer = MomentumBatchNorm1d(3, total_steps=10)
    layer(torch.randn(4, 3))
    before = (layer.running_mean.clone(), layer.running_var.clone())
    x = torch.randn(4, 3)
    x[0, 1] = float("nan")
    y = layer(x)
    assert torch.equal(layer.running_mean, before[0])
    assert torch.equal(layer.running_var, before[1])
    assert int(layer.skipped) == 1
    assert int(layer.num_batches_tracked) == 2
    assert torch.isnan(y[:2, 1]).all()  # the bad view's output is bad, so the loop sees it
    layer(torch.randn(4, 3))
    assert not torch.equal(layer.running_mean, before[0])
    assert int(layer.skipped) == 1


def test_functional_call_sees_the_in_place_update():
    layer = MomentumBatchNorm1d(3, total_steps=10)
    own = {k: v.clone() for k, v in layer.named_buffers()}
    external = {k: v.clone() for k, v in layer.named_buffers()}
    torch.func.functional_call(layer, external, (torch.randn(6, 3) + 5,))
    assert int(external["num_batches_tracked"]) == 1
    assert not torch.equal(external["running_mean"], own["running_mean"])
    for k, v in layer.named_buffers():
        assert torch.equal(v, own[k]), k  # the layer's own buffers were swapped out, not written


def test_batchnorm_state_dict_loads_both_ways():
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.num_batches_tracked.fill_(7)
    layer = MomentumBatchNorm2d(4, total_steps=10)
    layer.skipped.fill_(3)
    layer.load_state_dict(bn.state_dict())  # strict: the keys line up
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(layer, name), getattr(bn, name)), name
    assert int(layer.skipped) == 0
    x = torch.randn(3, 4, 2, 2)
    assert_close(layer.eval()(x), bn.eval()(x))

    layer.train()(torch.randn(4, 4, 2, 2))
    back = nn.BatchNorm2d(4)
    result = back.load_state_dict(layer.state_dict(), strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys == ["skipped"]
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(back, name), getattr(layer, name)), name
    assert set(layer.state_dict()) == set(bn.state_dict()) | {"skipped"}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_keeps_float32_buffers(dtype):
    layer = MomentumBatchNorm2d(3, total_steps=10)
    x = torch.randn(4, 3, 4, 4) * 2 + 1
    y = layer(x.to(dtype))
    assert y.dtype == dtype
    assert layer.running_mean.dtype == torch.float32
    assert layer.running_var.dtype == torch.float32
    ref_y, ref_stats = m2t_core.momentum_batch_norm(
        x.to(dtype).float().numpy(), m2t_core.init_stats(3), alpha=0.0, axis=1
    )
    assert_close(y, ref_y)
    assert_close(layer.running_mean, ref_stats.mean)  # moments of the half input, in float32
    assert_close(layer.running_var, ref_stats.var)


def test_autocast_bfloat16():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = MomentumBatchNorm2d(4, total_steps=10)
    x = torch.randn(4, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y = layer(h)
    assert h.dtype == torch.bfloat16
    assert y.dtype == torch.bfloat16
    assert layer.running_mean.dtype == torch.float32
    ref_y, ref_stats = m2t_core.momentum_batch_norm(
        h.float().detach().numpy(), m2t_core.init_stats(4), alpha=0.0, axis=1
    )
    assert_close(y, ref_y)
    assert_close(layer.running_var, ref_stats.var)


@pytest.mark.parametrize("training", [True, False])
def test_channels_last_in_channels_last_out(training):
    layer = MomentumBatchNorm2d(3, total_steps=10).train(training)
    twin = MomentumBatchNorm2d(3, total_steps=10).train(training)
    x = torch.randn(4, 3, 5, 6)
    y = layer(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, twin(x))
    assert_close(layer.running_var, twin.running_var)


def test_gradients_reach_weight_bias_and_input():
    layer = MomentumBatchNorm1d(3, total_steps=10)
    x = torch.randn(4, 3, requires_grad=True)
    layer(x).square().sum().backward()
    assert x.grad is not None
    assert layer.weight.grad is not None
    assert layer.bias.grad is not None
    assert layer.running_mean.grad is None


@pytest.mark.parametrize(
    ("layer", "x", "match"),
    [
        (
            MomentumBatchNorm(4, total_steps=5),
            torch.randn(6, 3, 2),
            r"num_features=4.*shape \(6, 3, 2\).*expected 4 channels on dim 1, got 3",
        ),
        (MomentumBatchNorm(4, total_steps=5), torch.randn(6), r"num_features=4.*shape \(6,\).*rank >= 2"),
        (
            MomentumBatchNorm(4, total_steps=5, num_views=4),
            torch.randn(6, 4),
            r"num_features=4.*shape \(6, 4\).*num_views=4 does not divide the batch size 6",
        ),
        (
            MomentumBatchNorm2d(4, total_steps=5),
            torch.randn(6, 4, 2),
            r"MomentumBatchNorm2d\(num_features=4.*shape \(6, 4, 2\).*expected 4D input, got 3D",
        ),
        (
            MomentumBatchNorm1d(4, total_steps=5),
            torch.randn(6, 4, 2, 2),
            r"MomentumBatchNorm1d\(num_features=4.*expected 2D or 3D input",
        ),
        (
            MomentumBatchNorm(4, total_steps=5, correction="unbiased"),
            torch.randn(2, 4),
            r"num_features=4.*shape \(2, 4\).*correction='unbiased' divides by n - 1",
        ),
    ],
)
def test_bad_input_names_layer_and_shape(layer, x, match):
    with pytest.raises(ValueError, match=match):
        layer(x)


def test_integer_input_is_a_type_error():
    with pytest.raises(TypeError, match=r"num_features=2.*shape \(4, 2\).*floating dtype, got int64"):
        MomentumBatchNorm(2, total_steps=5)(torch.ones(4, 2, dtype=torch.int64))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"total_steps": None}, ValueError, "total_steps is required"),
        ({"total_steps": 0}, ValueError, "total_steps must be > 0"),
        ({"alpha_start": -0.1, "total_steps": 3}, ValueError, r"alpha_start must be in \[0, 1\]"),
        ({"correction": "x", "total_steps": 3}, ValueError, "correction must be one of"),
        ({"num_views": 0, "total_steps": 3}, ValueError, "num_views must be >= 1"),
        ({"sync_stats": "all", "total_steps": 3}, ValueError, "sync_stats must be one of"),
        ({"eps": -1.0, "total_steps": 3}, ValueError, "eps must be a finite number"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        MomentumBatchNorm(4, **kwargs)


def test_constant_alpha_needs_no_total_steps():
    layer = MomentumBatchNorm(3, alpha_start=0.9, alpha_end=0.9)
    assert layer.current_alpha() == 0.9
    assert layer.total_steps is None
    assert "alpha=0.9" in repr(layer)


@given(per_view=st.integers(1, 4), channels=st.integers(1, 5), length=st.integers(1, 3))
def test_1d_layer_accepts_2d_and_3d(per_view, channels, length):
    layer = MomentumBatchNorm1d(channels, alpha_start=0.5, alpha_end=0.5)
    assert layer(torch.randn(2 * per_view, channels)).shape == (2 * per_view, channels)
    assert layer(torch.randn(2 * per_view, channels, length)).shape == (2 * per_view, channels, length)
    assert int(layer.num_batches_tracked) == 2


def test_reset_running_stats():
    layer = MomentumBatchNorm1d(3, total_steps=5)
    layer(torch.randn(4, 3) + 3)
    layer.reset_parameters()
    assert int(layer.num_batches_tracked) == 0
    assert torch.equal(layer.running_mean, torch.zeros(3))
    assert torch.equal(layer.running_var, torch.ones(3))
