"""m2t_core.testing: assert_close can fail, and the strategies only draw valid inputs."""

import numpy as np
import pytest
from hypothesis import given

from m2t_core import MomentumStats, ema_update, init_stats, momentum_batch_norm, symmetric_loss
from m2t_core.testing import TOLERANCES, assert_close, bn_cases, ema_cases, loss_cases


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
