"""m2t_core.testing: assert_close can fail, and the strategies only draw valid inputs."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2t_core import (
    MomentumStats,
    ema_update,
    init_stats,
    momentum_batch_norm,
    symmetric_loss,
    view_moments,
)
from m2t_core.testing import TOLERANCES, assert_close, bn_cases, bn_rounding_bound, ema_cases, loss_cases


def test_assert_close_uses_float32_tolerance():
    a = np.ones(3, np.float32)
    assert_close(a * (1 + 5e-6), a)
    with pytest.raises(AssertionError):
        assert_close(a * (1 + 5e-5), a)


def test_assert_close_uses_the_less_precise_dtype():
    a = np.ones(3, np.float64)
    with pytest.raises(AssertionError):
        assert_close(a * (1 + 1e-8), a)
    assert_close((a * (1 + 1e-8)).astype(np.float32), a)
    assert_close((a * (1 + 1e-3)).astype(np.float16), a)


def test_assert_close_rejects_broadcasting_and_checks_integers_exactly():
    with pytest.raises(AssertionError, match="shape"):
        assert_close(np.ones((1, 3)), np.ones(3))
    with pytest.raises(AssertionError):
        assert_close(np.asarray(3), np.asarray(4))


def test_assert_close_walks_named_tuples_and_names_the_field():
    s = init_stats(2)
    assert_close(s, s)
    bad = s._replace(var=s.var + 1)
    with pytest.raises(AssertionError, match="var"):
        assert_close(bad, s)
    with pytest.raises(AssertionError, match="keys"):
        assert_close({"a": 1.0}, {"b": 1.0})


def test_tolerance_table_matches_design():
    assert TOLERANCES["float32"] == (1e-5, 1e-6)


@given(bn_cases(dtypes=None))
def test_bn_cases_are_valid(case):
    assert isinstance(case.stats, MomentumStats)
    momentum_batch_norm(case.x, case.stats, **case.kwargs)


@given(bn_cases(axis=1, min_rank=3, max_rank=3))
def test_bn_cases_fixed_axis(case):
    assert case.kwargs["axis"] == 1
    assert case.x.ndim == 3


@given(ema_cases())
def test_ema_cases_are_valid(case):
    ema_update(case.teacher, case.student, case.momentum)


@given(loss_cases())
def test_loss_cases_are_valid(case):
    assert np.isfinite(symmetric_loss(*case))


@given(bn_cases(corrections=("unbiased", "official")))
def test_bn_cases_without_biased_never_draw_n_equal_one(case):
    kw = case.kwargs
    n = case.x.size // (case.x.shape[kw["axis"]] * kw["num_views"])
    assert n > 1
    momentum_batch_norm(case.x, case.stats, **kw)


@given(bn_cases(dtypes=st.just(np.dtype(np.float32)), training=st.just(True)))
def test_bn_rounding_bound_covers_a_mean_rounded_by_three_ulp(case):
    # The bound's model: the mixed mean of a float32 evaluation is off by a few ulp of the data's
    # magnitude. Shift every mixed mean by three such ulp (in float64) and the output must stay
    # within the bound, whichever channel and view has the smallest variance or the largest scale.
    kw = case.kwargs
    x = case.x.astype(np.float64)
    mu_v, var_v = view_moments(x, num_views=kw["num_views"], axis=kw["axis"], correction=kw["correction"])
    a = kw["alpha"]
    mean_hat = (1 - a) * mu_v + a * case.stats.mean.astype(np.float64)
    var_hat = (1 - a) * var_v + a * case.stats.var.astype(np.float64)
    magnitude = max(np.max(np.abs(x)), np.max(np.abs(case.stats.mean)))
    shifted = mean_hat + 3 * 2.0**-23 * magnitude

    def normalize(mean):
        xv = np.moveaxis(x, kw["axis"], -1)
        views = xv.reshape(kw["num_views"], -1, xv.shape[-1])
        y = (views - mean[:, None]) / np.sqrt(var_hat[:, None] + kw["eps"])
        if kw["scale"] is not None:
            y = y * kw["scale"] + kw["offset"]
        return y

    bound = bn_rounding_bound(case.x, case.stats, kw)
    assert bound >= TOLERANCES["float32"][1]
    np.testing.assert_allclose(normalize(shifted), normalize(mean_hat), rtol=0, atol=bound)


def test_bn_rounding_bound_grows_as_the_spread_shrinks():
    rng = np.random.default_rng(0)
    kw = dict(alpha=0.0, num_views=1, axis=1, eps=1e-5, scale=None, offset=None, correction="biased")
    stats = init_stats(3)
    wide = (3.0 + rng.normal(size=(16, 3))).astype(np.float32)
    narrow = (3.0 + 0.01 * rng.normal(size=(16, 3))).astype(np.float32)
    tight = bn_rounding_bound(wide, stats, dict(kw, training=True))
    loose = bn_rounding_bound(narrow, stats, dict(kw, training=True))
    assert TOLERANCES["float32"][1] < tight < loose
    assert bn_rounding_bound(narrow, stats, dict(kw, training=False)) == TOLERANCES["float32"][1]
    assert bn_rounding_bound(narrow.astype(np.float64), stats, dict(kw, training=True)) is None
