"""m2t_keras.ops computes what m2t_core computes, eagerly and compiled, on the active Keras backend."""

import contextlib

import keras
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import m2t_core
from m2t_core import MomentumStats
from m2t_core.testing import assert_close, bn_cases, bn_rounding_bound, ema_cases, loss_cases, schedule_args
from m2t_keras import ops as kops
from m2t_keras._tensors import dtype_name

BACKEND = keras.backend.backend()
# torch.compile takes seconds per new shape; the other compilers take a fraction of a second.
COMPILED_EXAMPLES = 3 if BACKEND == "torch" else 15
# JAX compiles every primitive anew for each shape hypothesis draws, even eagerly (~0.25 s an
# example); the other backends run an eager example in milliseconds.
eager_settings = settings(max_examples=25) if BACKEND == "jax" else settings()


def wide_floats():
    """float64 inputs need jax_enable_x64 on JAX (without it JAX silently computes in float32)."""
    if BACKEND == "jax":
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


def jit(fn):
    """The backend's own compiler: jax.jit, tf.function(jit_compile=True) (XLA), torch.compile."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    import torch

    return torch.compile(fn)


def run_bn(case, compiled):
    kw = dict(case.kwargs)
    alpha, scale, offset = kw.pop("alpha"), kw.pop("scale"), kw.pop("offset")
    if not compiled:
        return kops.momentum_batch_norm(case.x, case.stats, alpha=alpha, scale=scale, offset=offset, **kw)

    def fn(x, mean, var, step, skipped, alpha, scale, offset):
        stats = MomentumStats(mean, var, step, skipped)
        return kops.momentum_batch_norm(x, stats, alpha=alpha, scale=scale, offset=offset, **kw)

    # alpha, the statistics and the counters are traced tensors; everything else is static.
    args = [case.x, *case.stats, np.asarray(alpha, case.stats.mean.dtype), scale, offset]
    tensors = [None if a is None else keras.ops.convert_to_tensor(a) for a in args]
    return jit(fn)(*tensors)


def check_bn(case, compiled):
    with wide_floats():
        y_ref, stats_ref = m2t_core.momentum_batch_norm(case.x, case.stats, **case.kwargs)
        y, stats = run_bn(case, compiled)
        assert dtype_name(y) == case.x.dtype.name
        assert_close(y, y_ref, atol=bn_rounding_bound(case.x, case.stats, case.kwargs) if compiled else None)
        assert_close(tuple(stats), tuple(stats_ref))


@eager_settings
@given(bn_cases())
def test_momentum_batch_norm_matches_core(case):
    check_bn(case, compiled=False)


@settings(max_examples=COMPILED_EXAMPLES)
@given(bn_cases())
def test_momentum_batch_norm_matches_core_compiled(case):
    check_bn(case, compiled=True)


@settings(max_examples=12 if BACKEND == "jax" else 50)
@given(bn_cases(dtypes=st.sampled_from([np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)])))
def test_half_precision_input_matches_core(case):
    """Half-precision inputs are upcast for the moments and the mix; y keeps the input dtype."""
    y_ref, stats_ref = m2t_core.momentum_batch_norm(case.x, case.stats, **case.kwargs)
    y, stats = run_bn(case, compiled=False)
    assert dtype_name(y) == case.x.dtype.name
    # Both sides round y to half precision from float32 values that agree to ~1e-6, so they can
    # differ by one half-precision ulp where a value sits next to a rounding boundary.
    ulp = 2.0**-7 if case.x.dtype == ml_dtypes.bfloat16 else 2.0**-10
    assert_close(y, y_ref, rtol=ulp, atol=ulp)
    assert_close(tuple(stats), tuple(stats_ref))


@eager_settings
@given(bn_cases(training=st.just(True)))
def test_view_moments_matches_core(case):
    kw = {k: case.kwargs[k] for k in ("num_views", "axis", "correction")}
    with wide_floats():
        ref = m2t_core.view_moments(case.x, **kw)
        assert_close(kops.view_moments(case.x, **kw), ref)


def check_ema(case, compiled):
    with wide_floats():
        ref = m2t_core.ema_update(case.teacher, case.student, case.momentum)
        if compiled:
            fn = jit(lambda t, s, m: kops.ema_update(t, s, m))
            conv = lambda d: {k: keras.ops.convert_to_tensor(v) for k, v in d.items()}  # noqa: E731
            dtype = next(iter(case.teacher.values())).dtype
            out = fn(
                conv(case.teacher),
                conv(case.student),
                keras.ops.convert_to_tensor(np.asarray(case.momentum, dtype)),
            )
        else:
            out = kops.ema_update(case.teacher, case.student, case.momentum)
        assert_close(dict(out), ref)
        assert {k: dtype_name(v) for k, v in out.items()} == {k: v.dtype.name for k, v in ref.items()}


@eager_settings
@given(ema_cases())
def test_ema_update_matches_core(case):
    check_ema(case, compiled=False)


@settings(max_examples=COMPILED_EXAMPLES)
@given(ema_cases())
def test_ema_update_matches_core_compiled(case):
    check_ema(case, compiled=True)


@given(schedule_args(), st.lists(st.integers(-10, 2 * 10**6), min_size=1, max_size=8))
def test_schedules_match_core(args, steps):
    start, end, total = args
    steps = np.asarray(steps)
    for ours, ref in [
        (kops.cosine_schedule(start, end, total), m2t_core.cosine_schedule(start, end, total)),
        (
            kops.teacher_momentum_schedule(total, start, end),
            m2t_core.teacher_momentum_schedule(total, start, end),
        ),
        (
            kops.stats_momentum_schedule(total, start, end),
            m2t_core.stats_momentum_schedule(total, start, end),
        ),
    ]:
        assert (ours.start, ours.end, ours.total_steps) == (ref.start, ref.end, ref.total_steps)
        # The schedule is evaluated in float32 (inside compiled train steps), the reference in float64.
        assert_close(ours(steps), ref(steps).astype(np.float32))


@eager_settings
@given(loss_cases())
def test_losses_match_core(case):
    with wide_floats():
        assert_close(kops.normalize(case.p1), m2t_core.normalize(case.p1))
        assert_close(kops.regression_loss(case.p1, case.z2), m2t_core.regression_loss(case.p1, case.z2))
        assert_close(kops.symmetric_loss(*case), m2t_core.symmetric_loss(*case))


def test_init_stats_matches_core():
    ours, ref = kops.init_stats(5), m2t_core.init_stats(5)
    assert_close(tuple(ours), tuple(ref))
    assert dtype_name(ours.mean) == "float32"


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_commit_is_skipped(bad):
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    x[2, 1] = float(bad)
    stats = MomentumStats(
        np.full(3, 0.5, np.float32), np.full(3, 2.0, np.float32), np.asarray(7), np.asarray(2)
    )
    y, new = kops.momentum_batch_norm(x, stats, alpha=0.25)
    _, ref = m2t_core.momentum_batch_norm(x, stats, alpha=0.25)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new.mean), stats.mean)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new.var), stats.var)
    assert (int(new.step), int(new.skipped)) == (8, 3) == (int(ref.step), int(ref.skipped))
    # The output is still computed, so the training loop sees the bad values.
    assert not np.isfinite(keras.ops.convert_to_numpy(y)).all()


X = np.ones((4, 3), np.float32)
S3 = m2t_core.init_stats(3)
BAD_CALLS = {
    "num_views does not divide": ("momentum_batch_norm", (X, S3), {"alpha": 0.5, "num_views": 3}),
    "channel mismatch": ("momentum_batch_norm", (X, m2t_core.init_stats(4)), {"alpha": 0.5}),
    "alpha out of range": ("momentum_batch_norm", (X, S3), {"alpha": 1.5}),
    "axis 0": ("momentum_batch_norm", (X, S3), {"alpha": 0.5, "axis": 0}),
    "axis out of range": ("view_moments", (X,), {"num_views": 2, "axis": 2}),
    "n = 1 unbiased": ("view_moments", (X,), {"num_views": 4, "axis": 1, "correction": "unbiased"}),
    "unknown correction": ("view_moments", (X,), {"num_views": 2, "axis": 1, "correction": "bessel"}),
    "integer input": ("view_moments", (X.astype(np.int32),), {"num_views": 2, "axis": 1}),
    "rank 1": ("momentum_batch_norm", (np.ones(4, np.float32), S3), {"alpha": 0.5}),
    "bad scale": ("momentum_batch_norm", (X, S3), {"alpha": 0.5, "scale": np.ones(2, np.float32)}),
    "negative eps": ("momentum_batch_norm", (X, S3), {"alpha": 0.5, "eps": -1.0}),
    "ema keys": ("ema_update", ({"a": X}, {"b": X}, 0.5), {}),
    "ema shapes": ("ema_update", ({"a": X}, {"a": X[:2]}, 0.5), {}),
    "ema momentum": ("ema_update", ({"a": X}, {"a": X}, -0.1), {}),
    "ema integer": ("ema_update", ({"a": X.astype(np.int32)}, {"a": X.astype(np.int32)}, 0.5), {}),
    "schedule steps": ("cosine_schedule", (0.0, 1.0, 0), {}),
    "schedule missing steps": ("stats_momentum_schedule", (None,), {}),
    "schedule range": ("teacher_momentum_schedule", (10, 1.2), {}),
    "loss shapes": ("symmetric_loss", (X, X, X, X[:2]), {}),
    "regression shapes": ("regression_loss", (X, X[:, :2]), {}),
    "init_stats size": ("init_stats", (0,), {}),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises_like_core(name):
    fn, args, kwargs = BAD_CALLS[name]
    with pytest.raises((ValueError, TypeError)) as ref:
        getattr(m2t_core, fn)(*args, **kwargs)
    with pytest.raises(ref.type) as ours:
        getattr(kops, fn)(*args, **kwargs)
    assert str(ours.value) == str(ref.value)
