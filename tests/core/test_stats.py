"""Properties of the reference momentum BatchNorm (DESIGN §2 and §5)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2t_core import MomentumStats, init_stats, momentum_batch_norm, view_moments
from m2t_core.testing import assert_close, bn_cases

f64 = st.just(np.dtype(np.float64))


def factor(n, correction):
    """Bessel factor of each estimator, written independently of m2t_core."""
    if correction == "biased":
        return 1.0
    return n / (n - 1) if correction == "unbiased" else (n / (n - 1)) ** 2


def plain_bn(x, axis, correction, eps, scale=None, offset=None):
    """Textbook BatchNorm of one view, written independently of m2t_core."""
    red = tuple(i for i in range(x.ndim) if i != axis)
    n = x.size // x.shape[axis]
    mean = x.mean(axis=red, keepdims=True)
    var = x.var(axis=red, keepdims=True) * factor(n, correction)
    y = (x - mean) / np.sqrt(var + eps)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    if scale is not None:
        y = y * scale.reshape(shape)
    if offset is not None:
        y = y + offset.reshape(shape)
    return y


def split_views(a, v):
    return np.split(a, v, axis=0)


@given(bn_cases(dtypes=f64, training=st.just(True)))
def test_alpha_zero_is_plain_bn_per_view(case):
    kw = dict(case.kwargs, alpha=0.0)
    y, _ = momentum_batch_norm(case.x, case.stats, **kw)
    for xv, yv in zip(split_views(case.x, kw["num_views"]), split_views(y, kw["num_views"]), strict=False):
        ref = plain_bn(xv, kw["axis"], kw["correction"], kw["eps"], kw["scale"], kw["offset"])
        assert_close(yv, ref)


@given(bn_cases(dtypes=f64, training=st.just(True)))
def test_alpha_one_is_evaluation_with_stored_stats(case):
    kw = dict(case.kwargs, alpha=1.0)
    y_train, new = momentum_batch_norm(case.x, case.stats, **kw)
    y_eval, same = momentum_batch_norm(case.x, case.stats, **dict(kw, training=False))
    assert_close(y_train, y_eval)
    # (1 − 1)·μ_v + 1·μ is exactly μ: a history weight of one never moves the statistics.
    np.testing.assert_array_equal(new.mean, case.stats.mean)
    np.testing.assert_array_equal(new.var, case.stats.var)
    assert same is case.stats


@given(bn_cases(num_views=st.integers(2, 4), training=st.just(True)), st.data())
def test_view_output_independent_of_other_views(case, data):
    v = case.kwargs["num_views"]
    keep = data.draw(st.integers(0, v - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    views = split_views(case.x, v)
    other = [
        xv if i == keep else (rng.standard_normal(xv.shape) * 5 + 3).astype(xv.dtype)
        for i, xv in enumerate(views)
    ]
    y1, _ = momentum_batch_norm(case.x, case.stats, **case.kwargs)
    y2, _ = momentum_batch_norm(np.concatenate(other), case.stats, **case.kwargs)
    np.testing.assert_array_equal(split_views(y1, v)[keep], split_views(y2, v)[keep])


@given(bn_cases(dtypes=f64, num_views=st.integers(2, 4), training=st.just(True)), st.randoms())
def test_permuting_views_permutes_outputs_and_keeps_commit(case, random):
    v = case.kwargs["num_views"]
    perm = list(range(v))
    random.shuffle(perm)
    views = split_views(case.x, v)
    y, new = momentum_batch_norm(case.x, case.stats, **case.kwargs)
    yp, newp = momentum_batch_norm(np.concatenate([views[i] for i in perm]), case.stats, **case.kwargs)
    y_views = split_views(y, v)
    for j, i in enumerate(perm):
        np.testing.assert_array_equal(split_views(yp, v)[j], y_views[i])
    assert_close(newp, new)


@given(bn_cases(dtypes=f64, training=st.just(True)))
def test_commit_is_convex_mix_of_view_average_and_history(case):
    kw = case.kwargs
    a = kw["alpha"]
    _, new = momentum_batch_norm(case.x, case.stats, **kw)
    mu_v, var_v = view_moments(
        case.x, num_views=kw["num_views"], axis=kw["axis"], correction=kw["correction"]
    )
    assert_close(new.mean, (1 - a) * mu_v.mean(0) + a * case.stats.mean)
    assert_close(new.var, (1 - a) * var_v.mean(0) + a * case.stats.var)
    lo_m = np.minimum(mu_v.mean(0), case.stats.mean) - 1e-12
    hi_m = np.maximum(mu_v.mean(0), case.stats.mean) + 1e-12
    assert np.all((lo_m <= new.mean) & (new.mean <= hi_m))
    assert int(new.step) == int(case.stats.step) + 1
    assert int(new.skipped) == int(case.stats.skipped)


@given(bn_cases(dtypes=f64, num_views=st.just(1), training=st.just(True)))
def test_single_view_is_momentum_bn(case):
    kw = case.kwargs
    a, ax = kw["alpha"], kw["axis"]
    x = case.x
    red = tuple(i for i in range(x.ndim) if i != ax)
    n = x.size // x.shape[ax]
    mean = (1 - a) * x.mean(axis=red) + a * case.stats.mean
    var = (1 - a) * x.var(axis=red) * factor(n, kw["correction"]) + a * case.stats.var
    shape = [1] * x.ndim
    shape[ax] = -1
    ref = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + kw["eps"])
    if kw["scale"] is not None:
        ref = ref * kw["scale"].reshape(shape) + kw["offset"].reshape(shape)
    y, new = momentum_batch_norm(x, case.stats, **kw)
    assert_close(y, ref)
    assert_close(new.mean, mean)
    assert_close(new.var, var)


@given(bn_cases(training=st.just(False)))
def test_evaluation_uses_stored_stats_and_changes_nothing(case):
    kw = case.kwargs
    x, ax = case.x, kw["axis"]
    shape = [1] * x.ndim
    shape[ax] = -1
    mean, var = case.stats.mean.astype(np.float64), case.stats.var.astype(np.float64)
    ref = (x.astype(np.float64) - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + kw["eps"])
    if kw["scale"] is not None:
        ref = ref * kw["scale"].reshape(shape) + kw["offset"].reshape(shape)
    y, new = momentum_batch_norm(x, case.stats, **kw)
    assert y.dtype == x.dtype
    assert_close(y, ref.astype(x.dtype))
    assert new is case.stats


def test_evaluation_accepts_any_batch_size():
    # num_views only describes training batches: evaluation features come in any batch size.
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    y, _ = momentum_batch_norm(x, init_stats(3), alpha=0.5, num_views=2, training=False)
    assert_close(y, x / np.sqrt(1 + 1e-5))


@given(bn_cases(dtypes=f64))
def test_view_moments_match_numpy_estimators(case):
    kw = case.kwargs
    v, ax = kw["num_views"], kw["axis"]
    mean, var = view_moments(case.x, num_views=v, axis=ax, correction=kw["correction"])
    assert mean.shape == var.shape == (v, case.x.shape[ax])
    for i, xv in enumerate(split_views(case.x, v)):
        red = tuple(j for j in range(xv.ndim) if j != ax)
        n = xv.size // xv.shape[ax]
        ddof = 0 if kw["correction"] == "biased" else 1
        expected = xv.var(axis=red, ddof=ddof)
        if kw["correction"] == "official":
            expected = expected * n / (n - 1)
        assert_close(mean[i], xv.mean(axis=red))
        assert_close(var[i], expected)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_computes_in_float32_and_returns_input_dtype(dtype):
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")  # ships with jax and tensorflow
        dt = np.dtype(ml_dtypes.bfloat16)
    else:
        dt = np.dtype(dtype)
    rng = np.random.default_rng(1)
    x32 = (rng.standard_normal((8, 4, 3)) * 2 + 1).astype(np.float32)
    x = x32.astype(dt)
    stats = init_stats(4)
    y, new = momentum_batch_norm(x, stats, alpha=0.3, axis=1)
    assert y.dtype == dt
    assert new.mean.dtype == new.var.dtype == np.float32
    y_ref, new_ref = momentum_batch_norm(x.astype(np.float32), stats, alpha=0.3, axis=1)
    assert_close(new, new_ref)  # the moments of the same (rounded) values, in float32
    assert_close(y, y_ref.astype(dt))
    mean, _ = view_moments(x, num_views=2, axis=1)
    assert mean.dtype == np.float32


def test_float64_stays_float64():
    x = np.random.default_rng(2).standard_normal((4, 3))
    y, new = momentum_batch_norm(x, init_stats(3, np.float64), alpha=0.5)
    assert y.dtype == new.mean.dtype == new.var.dtype == np.float64


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_commit_is_skipped_but_step_advances(bad):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    x[4, 2] = bad  # one bad value in view 2
    stats = MomentumStats(
        rng.standard_normal(4).astype(np.float32), np.full(4, 2.0, np.float32), np.asarray(7), np.asarray(1)
    )
    y, new = momentum_batch_norm(x, stats, alpha=0.5, num_views=2)
    np.testing.assert_array_equal(new.mean, stats.mean)
    np.testing.assert_array_equal(new.var, stats.var)
    assert int(new.step) == 8
    assert int(new.skipped) == 2
    assert not np.isfinite(y[3:, 2]).all()  # the loop sees the bad output ...
    assert np.isfinite(y[:3]).all()  # ... while the other view is normalised as usual


def test_init_stats():
    s = init_stats(5)
    assert s.mean.dtype == np.float32
    assert s.mean.shape == (5,)
    np.testing.assert_array_equal(s.mean, 0)
    np.testing.assert_array_equal(s.var, 1)
    assert int(s.step) == 0
    assert int(s.skipped) == 0
    assert init_stats(2, np.float64).var.dtype == np.float64


def test_inputs_are_not_mutated():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    stats = init_stats(3)
    x0, m0, v0 = x.copy(), stats.mean.copy(), stats.var.copy()
    momentum_batch_norm(x, stats, alpha=0.5)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(stats.mean, m0)
    np.testing.assert_array_equal(stats.var, v0)


# --- bad input ------------------------------------------------------------------------------------


def _x(shape=(4, 3), dtype=np.float32):
    return np.ones(shape, dtype)


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (
            lambda: momentum_batch_norm(_x((6, 3)), init_stats(3), alpha=0.5, num_views=4),
            ValueError,
            ["num_views=4", "6"],
        ),
        (
            lambda: momentum_batch_norm(_x((4, 5)), init_stats(3), alpha=0.5),
            ValueError,
            ["5 channels", "num_features=3", "(4, 5)"],
        ),
        (
            lambda: momentum_batch_norm(_x((2, 3)), init_stats(3), alpha=0.5, correction="unbiased"),
            ValueError,
            ["n=1", "unbiased"],
        ),
        (
            lambda: momentum_batch_norm(_x((2, 3)), init_stats(3), alpha=0.5, correction="official"),
            ValueError,
            ["n=1", "official"],
        ),
        (lambda: momentum_batch_norm(_x(), init_stats(3), alpha=1.5), ValueError, ["alpha", "1.5"]),
        (lambda: momentum_batch_norm(_x(), init_stats(3), alpha=-0.1), ValueError, ["alpha", "-0.1"]),
        (
            lambda: momentum_batch_norm(_x(dtype=np.int32), init_stats(3), alpha=0.5),
            TypeError,
            ["floating", "int32"],
        ),
        (
            lambda: momentum_batch_norm(_x(), init_stats(3), alpha=0.5, correction="sample"),
            ValueError,
            ["'sample'", "biased"],
        ),
        (lambda: momentum_batch_norm(_x(), init_stats(3), alpha=0.5, axis=0), ValueError, ["axis 0"]),
        (
            lambda: momentum_batch_norm(_x(), init_stats(3), alpha=0.5, axis=2),
            ValueError,
            ["axis 2", "rank 2"],
        ),
        (
            lambda: momentum_batch_norm(np.ones(3, np.float32), init_stats(3), alpha=0.5),
            ValueError,
            ["rank >= 2"],
        ),
        (
            lambda: momentum_batch_norm(_x(), init_stats(3), alpha=0.5, num_views=0),
            ValueError,
            ["num_views", "0"],
        ),
        (
            lambda: momentum_batch_norm(_x(), init_stats(3), alpha=0.5, scale=np.ones(2)),
            ValueError,
            ["scale", "(3,)", "(2,)"],
        ),
        (lambda: momentum_batch_norm(_x(), init_stats(3), alpha=0.5, eps=-1.0), ValueError, ["eps"]),
        (lambda: view_moments(_x((6, 3)), num_views=4, axis=1), ValueError, ["num_views=4", "6"]),
        (lambda: init_stats(0), ValueError, ["num_features", "0"]),
        (
            lambda: momentum_batch_norm(_x(), init_stats(3)._replace(var=np.ones(4)), alpha=0.5),
            ValueError,
            ["stats.mean", "(3,)", "(4,)"],
        ),
        (lambda: init_stats(3, np.int64), TypeError, ["floating", "int64"]),
    ],
)
def test_bad_input_errors_name_the_values(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))
