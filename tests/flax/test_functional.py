"""m2t_flax.functional computes what m2t_core computes, eagerly and under jax.jit (DESIGN §5).

float64: JAX computes in float32 unless ``jax_enable_x64`` is on, and turning it on for the whole
process would change the default dtypes of every other test. So each float64 example runs inside the
scoped ``jax.enable_x64(True)`` context manager (``x64_for`` below); float32 examples run with the
default configuration.
"""

import contextlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import m2t_core
import m2t_flax
from m2t_core.testing import assert_close, bn_cases, bn_rounding_bound, ema_cases, loss_cases, schedule_args
from m2t_flax import functional as mf

MODES = ["eager", "jit"]
# Every new shape costs compilations, eagerly too (JAX compiles each primitive per shape), about
# 0.3 s per example on 2 cores: these caps keep the folder's CI run within its budget.
EXAMPLES = {"eager": 30, "jit": 25}


def x64_for(*dtypes):
    wide = any(np.dtype(d) == np.float64 for d in dtypes)
    return jax.enable_x64(True) if wide else contextlib.nullcontext()


def examples(mode):
    return settings(max_examples=EXAMPLES[mode])


def to_jax(stats):
    return mf.MomentumStats(*(jnp.asarray(a) for a in stats))


# --------------------------------------------------------------------------------------------------
# signatures


CORE_FUNCTIONS = [
    "init_stats",
    "view_moments",
    "momentum_batch_norm",
    "ema_update",
    "cosine_schedule",
    "teacher_momentum_schedule",
    "stats_momentum_schedule",
    "normalize",
    "regression_loss",
    "symmetric_loss",
]


@pytest.mark.parametrize("name", CORE_FUNCTIONS)
def test_signature_starts_with_the_core_parameters(name):
    core = list(inspect.signature(getattr(m2t_core, name)).parameters.values())
    ours = list(inspect.signature(getattr(mf, name)).parameters.values())
    assert [p.name for p in ours[: len(core)]] == [p.name for p in core]
    for c, o in zip(core, ours, strict=False):
        assert o.kind == c.kind, (name, c.name)
        expected = -1 if c.name == "axis" and c.default is not inspect.Parameter.empty else c.default
        assert o.default == expected, (name, c.name, o.default, expected)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[len(core) :]), name
    # The top-level package exports the same functions.
    assert getattr(m2t_flax, name) is getattr(mf, name)


# --------------------------------------------------------------------------------------------------
# momentum batch norm


def _bn(mode, x, stats, kwargs):
    kw = dict(kwargs)
    if mode == "eager":
        return mf.momentum_batch_norm(x, stats, **kw)
    alpha, scale, offset = kw.pop("alpha"), kw.pop("scale"), kw.pop("offset")

    @jax.jit
    def run(x, stats, alpha, scale, offset):
        return mf.momentum_batch_norm(x, stats, alpha=alpha, scale=scale, offset=offset, **kw)

    return run(x, stats, alpha, scale, offset)


@pytest.mark.parametrize("mode", MODES)
def test_momentum_batch_norm_matches_core(mode):
    @examples(mode)
    @given(bn_cases())
    def check(case):
        y_ref, stats_ref = m2t_core.momentum_batch_norm(case.x, case.stats, **case.kwargs)
        with x64_for(case.x.dtype):
            y, stats = _bn(mode, jnp.asarray(case.x), to_jax(case.stats), case.kwargs)
            assert y.dtype == case.x.dtype
            assert stats.mean.dtype == case.stats.mean.dtype
            assert_close(y, y_ref, atol=bn_rounding_bound(case.x, case.stats, case.kwargs))
            assert_close(stats, stats_ref)

    check()


@pytest.mark.parametrize("mode", MODES)
def test_half_precision_inputs_are_upcast_for_the_moments(mode):
    @examples(mode)
    @given(bn_cases(dtypes=st.sampled_from([np.dtype(np.float16), np.dtype(jnp.bfloat16)])))
    def check(case):
        ref_x = case.x.astype(np.float32)  # the reference computes half precision in float32 too
        y_ref, stats_ref = m2t_core.momentum_batch_norm(ref_x, case.stats, **case.kwargs)
        y, stats = _bn(mode, jnp.asarray(case.x), to_jax(case.stats), case.kwargs)
        assert y.dtype == case.x.dtype
        # Only the output is rounded to half precision; the statistics stay float32-accurate.
        assert_close(stats, stats_ref)
        assert_close(y, y_ref.astype(case.x.dtype))

    check()


@pytest.mark.parametrize("mode", MODES)
def test_view_moments_match_core(mode):
    @examples(mode)
    @given(bn_cases())
    def check(case):
        kw = {k: case.kwargs[k] for k in ("num_views", "axis", "correction")}
        ref = m2t_core.view_moments(case.x, **kw)
        with x64_for(case.x.dtype):
            fn = (
                (lambda x: mf.view_moments(x, **kw))
                if mode == "eager"
                else jax.jit(lambda x: mf.view_moments(x, **kw))
            )
            assert_close(fn(jnp.asarray(case.x)), ref)

    check()


def test_vmap_over_independent_layers():
    # jit/vmap-safety: a batch of statistics and inputs, mapped, equals the per-item calls.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(2.0, 1.5, (3, 8, 4)).astype(np.float32))
    stats = mf.MomentumStats(
        mean=jnp.asarray(rng.normal(size=(3, 4)).astype(np.float32)),
        var=jnp.asarray(rng.uniform(0.5, 2.0, (3, 4)).astype(np.float32)),
        step=jnp.arange(3, dtype=jnp.int32),
        skipped=jnp.zeros(3, jnp.int32),
    )
    alphas = jnp.asarray([0.0, 0.3, 1.0], jnp.float32)
    y, new = jax.vmap(lambda x, s, a: mf.momentum_batch_norm(x, s, alpha=a))(x, stats, alphas)
    for i in range(3):
        s_i = m2t_core.MomentumStats(*(np.asarray(a[i]) for a in stats))
        y_ref, new_ref = m2t_core.momentum_batch_norm(np.asarray(x[i]), s_i, alpha=float(alphas[i]))
        assert_close(y[i], y_ref)
        assert_close(mf.MomentumStats(*(a[i] for a in new)), new_ref)


@pytest.mark.parametrize("mode", MODES)
def test_non_finite_commit_is_skipped_without_host_sync(mode):
    x = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    x[1, 2] = np.inf
    stats = mf.init_stats(3)
    fn = (
        mf.momentum_batch_norm
        if mode == "eager"
        else jax.jit(mf.momentum_batch_norm, static_argnames=("num_views",))
    )
    y, new = fn(jnp.asarray(x), stats, alpha=jnp.float32(0.5), num_views=2)
    with np.errstate(invalid="ignore"):  # the reference's NumPy warns about inf − inf
        y_ref, ref = m2t_core.momentum_batch_norm(x, m2t_core.init_stats(3), alpha=0.5, num_views=2)
    assert int(new.skipped) == 1
    assert int(new.step) == 1
    np.testing.assert_array_equal(new.mean, stats.mean)
    np.testing.assert_array_equal(new.var, stats.var)
    assert_close(new, ref)
    # The output is computed as usual, so the training loop sees the bad value.
    np.testing.assert_array_equal(np.isfinite(y), np.isfinite(y_ref))


def test_step_counter_depends_on_the_commit():
    # The step is computed from this commit's outcome, not as a constant "+ 1" (see _train_bn: with a
    # data-independent counter update XLA:CPU usually runs the whole train step 5–13% slower).
    # vmap with out_axes=None refuses an output that depends on the mapped input, so it tells them apart.
    xs = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4, 2)).astype(np.float32))
    stats = mf.init_stats(2)

    def step_of(x):
        return mf.momentum_batch_norm(x, stats, alpha=0.5)[1].step

    def constant_step(x):
        return stats.step + 1

    assert jax.vmap(constant_step, out_axes=None)(xs) == 1  # the probe accepts an independent output
    with pytest.raises(ValueError, match="out_axes"):
        jax.vmap(step_of, out_axes=None)(xs)
    np.testing.assert_array_equal(jax.vmap(step_of)(xs), [1, 1, 1])


def test_init_stats_matches_core():
    ours, ref = mf.init_stats(5), m2t_core.init_stats(5)
    assert isinstance(ours.mean, jax.Array)
    assert_close(ours, ref)
    with jax.enable_x64(True):
        assert mf.init_stats(2, np.float64).mean.dtype == jnp.float64


# --------------------------------------------------------------------------------------------------
# EMA, schedules, loss


@pytest.mark.parametrize("mode", MODES)
def test_ema_update_matches_core(mode):
    @examples(mode)
    @given(ema_cases())
    def check(case):
        ref = m2t_core.ema_update(case.teacher, case.student, case.momentum)
        dtype = next(iter(case.teacher.values())).dtype
        with x64_for(dtype):
            t = {k: jnp.asarray(v) for k, v in case.teacher.items()}
            s = {k: jnp.asarray(v) for k, v in case.student.items()}
            fn = mf.ema_update if mode == "eager" else jax.jit(mf.ema_update)
            out = fn(t, s, case.momentum)
            assert_close(out, ref)
            assert all(out[k].dtype == t[k].dtype for k in t)

    check()


def test_ema_update_keeps_bfloat16_moving():
    # 1 − m = 1e-3 is below bfloat16's resolution near 1; mixing in float32 still moves the teacher.
    t = {"w": jnp.zeros((4,), jnp.bfloat16)}
    s = {"w": jnp.full((4,), 8.0, jnp.bfloat16)}
    out = mf.ema_update(t, s, 0.999)
    assert out["w"].dtype == jnp.bfloat16
    assert_close(out["w"], np.full(4, 0.008, np.float32))


def test_ema_update_works_on_nested_pytrees_and_names_mismatches():
    t = {"a": {"w": jnp.ones((2, 3))}, "b": [jnp.zeros(2)]}
    s = {"a": {"w": jnp.zeros((2, 3))}, "b": [jnp.ones(2)]}
    out = mf.ema_update(t, s, 0.25)
    assert_close(out["a"]["w"], np.full((2, 3), 0.25, np.float32))
    assert_close(out["b"][0], np.full(2, 0.75, np.float32))
    with pytest.raises(ValueError, match=r"only in teacher: \['a.w'\], only in student: \['a.v'\]"):
        mf.ema_update({"a": {"w": jnp.ones(2)}}, {"a": {"v": jnp.ones(2)}}, 0.5)
    with pytest.raises(ValueError, match=r"'w'.*\(2,\).*\(3,\)"):
        mf.ema_update({"w": jnp.ones(2)}, {"w": jnp.ones(3)}, 0.5)
    with pytest.raises(TypeError, match="int32"):
        mf.ema_update({"w": jnp.ones(2, jnp.int32)}, {"w": jnp.ones(2, jnp.int32)}, 0.5)
    with pytest.raises(ValueError, match="momentum"):
        mf.ema_update(t, s, 1.5)


@settings(max_examples=EXAMPLES["jit"])
@given(schedule_args(), st.lists(st.integers(-3, 2 * 10**6), min_size=1, max_size=6))
def test_schedules_match_core(args, steps):
    ref = m2t_core.cosine_schedule(*args)
    ours = mf.cosine_schedule(*args)
    assert isinstance(ours, m2t_core.CosineSchedule)
    assert (ours.start, ours.end, ours.total_steps) == (ref.start, ref.end, ref.total_steps)
    k = np.asarray(steps)
    # float32 steps are exact only below 2**24; beyond that the clamp at K hides the difference.
    assert_close(ours(jnp.asarray(k, jnp.int32)), ref(k).astype(np.float32), atol=2e-6)
    assert_close(jax.jit(ours)(jnp.asarray(k, jnp.int32)), ref(k).astype(np.float32), atol=2e-6)
    with jax.enable_x64(True):
        assert_close(ours(jnp.asarray(k)), ref(k))


def test_named_schedules_use_the_design_defaults():
    m = mf.teacher_momentum_schedule(100)
    a = mf.stats_momentum_schedule(100)
    assert (m.start, m.end) == (0.99, 1.0)
    assert (a.start, a.end) == (0.0, 1.0)
    assert float(m(0)) == pytest.approx(0.99)
    assert float(m(100)) == 1.0
    assert float(a(0)) == 0.0
    assert float(a(100)) == 1.0


@pytest.mark.parametrize("mode", MODES)
def test_losses_match_core(mode):
    @examples(mode)
    @given(loss_cases())
    def check(case):
        ref = m2t_core.symmetric_loss(*case)
        ref_per_sample = m2t_core.regression_loss(case.p1, case.z2)
        ref_norm = m2t_core.normalize(case.p1)
        with x64_for(case.p1.dtype):
            args = [jnp.asarray(a) for a in case]
            sym = mf.symmetric_loss if mode == "eager" else jax.jit(mf.symmetric_loss)
            reg = mf.regression_loss if mode == "eager" else jax.jit(mf.regression_loss)
            nrm = mf.normalize if mode == "eager" else jax.jit(mf.normalize)
            assert_close(sym(*args), ref)
            assert_close(reg(args[0], args[3]), ref_per_sample)
            assert_close(nrm(args[0]), ref_norm)

    check()


def test_normalize_keeps_zero_vectors_zero():
    out = mf.normalize(jnp.zeros((2, 3)))
    np.testing.assert_array_equal(out, np.zeros((2, 3)))


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_zero_prediction_has_a_finite_gradient(mode):
    # A zero prediction row (all ReLUs off, zero bias) must not turn the gradient NaN: d/dp of
    # p / max(|p|, eps) at p = 0 is I / eps, as torch.nn.functional.normalize gives.
    p = jnp.zeros((2, 4)).at[1].set(jnp.arange(1.0, 5.0))
    z = jnp.ones((2, 4))

    def loss(p):
        return mf.symmetric_loss(p, p, z, z)

    grad = jax.jit(jax.grad(loss))(p) if mode == "jit" else jax.grad(loss)(p)
    assert np.isfinite(np.asarray(grad)).all()
    # Row 0: L = mean_b[2·(2 − 2⟨p/eps, ẑ⟩)] with ẑ = z/2, so dL/dp = −4·ẑ / (eps · B).
    np.testing.assert_allclose(np.asarray(grad[0]), -4 * 0.5 / (1e-12 * 2) * np.ones(4), rtol=1e-6)
    assert float(loss(p)) == pytest.approx(
        0.5 * (4.0 + 2 * (2 - 2 * float(jnp.sum(p[1] / jnp.linalg.norm(p[1]) * 0.5))))
    )


# --------------------------------------------------------------------------------------------------
# bad input: the same errors as the reference


def _x(shape=(4, 3), dtype=np.float32):
    return np.ones(shape, dtype)


BAD_CALLS = [
    (
        "momentum_batch_norm",
        lambda m: m.momentum_batch_norm(_x((6, 3)), m.init_stats(3), alpha=0.5, num_views=4),
    ),
    ("momentum_batch_norm", lambda m: m.momentum_batch_norm(_x((4, 5)), m.init_stats(3), alpha=0.5)),
    (
        "momentum_batch_norm",
        lambda m: m.momentum_batch_norm(_x((2, 3)), m.init_stats(3), alpha=0.5, correction="unbiased"),
    ),
    ("momentum_batch_norm", lambda m: m.momentum_batch_norm(_x(), m.init_stats(3), alpha=1.5)),
    ("momentum_batch_norm", lambda m: m.momentum_batch_norm(_x(dtype=np.int32), m.init_stats(3), alpha=0.5)),
    (
        "momentum_batch_norm",
        lambda m: m.momentum_batch_norm(_x(), m.init_stats(3), alpha=0.5, correction="sample"),
    ),
    ("momentum_batch_norm", lambda m: m.momentum_batch_norm(_x(), m.init_stats(3), alpha=0.5, axis=0)),
    ("momentum_batch_norm", lambda m: m.momentum_batch_norm(_x(), m.init_stats(3), alpha=0.5, axis=2)),
    (
        "momentum_batch_norm",
        lambda m: m.momentum_batch_norm(np.ones(3, np.float32), m.init_stats(3), alpha=0.5),
    ),
    ("momentum_batch_norm", lambda m: m.momentum_batch_norm(_x(), m.init_stats(3), alpha=0.5, num_views=0)),
    (
        "momentum_batch_norm",
        lambda m: m.momentum_batch_norm(_x(), m.init_stats(3), alpha=0.5, scale=np.ones(2)),
    ),
    ("momentum_batch_norm", lambda m: m.momentum_batch_norm(_x(), m.init_stats(3), alpha=0.5, eps=-1.0)),
    (
        "momentum_batch_norm",
        lambda m: m.momentum_batch_norm(
            _x(), m.init_stats(3)._replace(var=np.ones(4, np.float32)), alpha=0.5
        ),
    ),
    ("view_moments", lambda m: m.view_moments(_x((6, 3)), num_views=4, axis=1)),
    ("init_stats", lambda m: m.init_stats(0)),
    ("init_stats", lambda m: m.init_stats(3, np.int32)),
    ("cosine_schedule", lambda m: m.cosine_schedule(0.0, 1.0, 0)),
    ("cosine_schedule", lambda m: m.cosine_schedule(0.0, 1.0, None)),
    ("teacher_momentum_schedule", lambda m: m.teacher_momentum_schedule(10, base_momentum=1.2)),
    ("stats_momentum_schedule", lambda m: m.stats_momentum_schedule(None)),
    ("symmetric_loss", lambda m: m.symmetric_loss(_x((2, 3)), _x((2, 3)), _x((2, 3)), _x((2, 4)))),
    ("regression_loss", lambda m: m.regression_loss(_x((2, 3)), _x((3, 3)))),
    ("normalize", lambda m: m.normalize(np.ones(3, np.int32))),
]


@pytest.mark.parametrize(("name", "call"), BAD_CALLS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_CALLS)])
def test_bad_input_raises_what_the_core_raises(name, call):
    with pytest.raises((ValueError, TypeError)) as ref:
        call(m2t_core)
    with pytest.raises(ref.type) as ours:
        call(mf)
    assert str(ours.value) == str(ref.value)


def test_bad_static_arguments_fail_at_trace_time_under_jit():
    fn = jax.jit(lambda x: mf.momentum_batch_norm(x, mf.init_stats(3), alpha=0.5, num_views=4))
    with pytest.raises(ValueError, match="num_views=4 does not divide the batch size 6"):
        fn(jnp.ones((6, 3)))
    with pytest.raises(TypeError, match="training must be a Python bool"):
        mf.momentum_batch_norm(jnp.ones((4, 3)), mf.init_stats(3), alpha=0.5, training=jnp.bool_(True))


def test_traced_alpha_is_accepted_and_used():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32))
    stats = mf.init_stats(3)
    fn = jax.jit(lambda a: mf.momentum_batch_norm(x, stats, alpha=a)[1].mean)
    assert_close(
        fn(0.25), m2t_core.momentum_batch_norm(np.asarray(x), m2t_core.init_stats(3), alpha=0.25)[1].mean
    )
