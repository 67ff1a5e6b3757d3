"""m2t_flax.nnx.MomentumBatchNorm and convert_momentum_bn (DESIGN §2, §3, §5).

float64 examples run inside the scoped ``jax.enable_x64(True)`` context (see test_functional.py).
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import m2t_core
from m2t_core.testing import assert_close, bn_cases, bn_rounding_bound
from m2t_flax.nnx import MomentumBatchNorm, convert_momentum_bn

MODES = ["eager", "jit"]
EXAMPLES = {"eager": 25, "jit": 20}


def x64_for(dtype):
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()


@nnx.jit(static_argnames="evaluate")
def jitted_call(layer, x, evaluate):
    return layer(x, use_running_average=evaluate)


def call(mode, layer, x, evaluate):
    if mode == "eager":
        return layer(x, use_running_average=evaluate)
    return jitted_call(layer, x, evaluate)


@st.composite
def layer_schedules(draw):
    """``(alpha_start, alpha_end, total_steps)``: constant or a cosine, 0 and 1 often."""
    unit = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))
    start = draw(unit)
    if draw(st.booleans()):
        return start, start, None
    return start, draw(unit), draw(st.integers(1, 2000))


def layer_from_case(case, schedule):
    kw = case.kwargs
    start, end, total = schedule
    layer = MomentumBatchNorm(
        case.x.shape[kw["axis"]],
        num_views=kw["num_views"],
        alpha_start=start,
        alpha_end=end,
        total_steps=total,
        correction=kw["correction"],
        epsilon=kw["eps"],
        axis=kw["axis"],
        use_scale=kw["scale"] is not None,
        use_bias=kw["offset"] is not None,
        rngs=nnx.Rngs(0),
    )
    if kw["scale"] is not None:
        layer.scale[...] = jnp.asarray(kw["scale"])
        layer.bias[...] = jnp.asarray(kw["offset"])
    layer.mean[...] = jnp.asarray(case.stats.mean)
    layer.var[...] = jnp.asarray(case.stats.var)
    layer.step[...] = jnp.asarray(case.stats.step, jnp.int32)
    layer.skipped[...] = jnp.asarray(case.stats.skipped, jnp.int32)
    return layer


@pytest.mark.parametrize("mode", MODES)
def test_layer_matches_core(mode):
    # The layer keeps float32 statistics (like nnx.BatchNorm), so the reference gets float32 ones too.
    @settings(max_examples=EXAMPLES[mode])
    @given(bn_cases(stats_dtype=np.float32), layer_schedules())
    def check(case, schedule):
        kw = dict(case.kwargs)
        # α_k comes from the layer's own step and schedule, evaluated in-graph.
        kw["alpha"] = m2t_core.stats_momentum_schedule(schedule[2], schedule[0], schedule[1])(
            int(case.stats.step)
        )
        y_ref, stats_ref = m2t_core.momentum_batch_norm(case.x, case.stats, **kw)
        with x64_for(case.x.dtype):
            layer = layer_from_case(case, schedule)
            y = call(mode, layer, jnp.asarray(case.x), not kw["training"])
            assert y.dtype == case.x.dtype
            assert_close(y, y_ref, atol=bn_rounding_bound(case.x, case.stats, kw))
            assert_close(layer.stats, stats_ref)

    check()


def test_layer_variables_and_names_line_up_with_nnx_batchnorm():
    layer = MomentumBatchNorm(4, total_steps=10, rngs=nnx.Rngs(0))
    bn = nnx.BatchNorm(4, rngs=nnx.Rngs(0))
    params = nnx.state(layer, nnx.Param)
    assert (
        set(nnx.to_pure_dict(params)) == set(nnx.to_pure_dict(nnx.state(bn, nnx.Param))) == {"scale", "bias"}
    )
    stats = nnx.to_pure_dict(nnx.state(layer, nnx.BatchStat))
    assert set(stats) == {"mean", "var", "step", "skipped"}
    assert stats["mean"].dtype == jnp.float32
    assert stats["step"].dtype == jnp.int32
    assert_close(layer.stats, m2t_core.init_stats(4))


def test_eval_and_train_toggle_like_nnx_batchnorm():
    model = nnx.Sequential(
        nnx.Linear(3, 4, rngs=nnx.Rngs(0)), MomentumBatchNorm(4, total_steps=10, rngs=nnx.Rngs(0))
    )
    layer = model.layers[1]
    x = jax.random.normal(jax.random.key(0), (6, 3))
    model(x)
    assert int(layer.step[...]) == 1
    before = nnx.to_pure_dict(nnx.state(layer, nnx.BatchStat))
    model.eval()
    assert layer.use_running_average is True
    y = model(jax.random.normal(jax.random.key(1), (5, 3)))  # any batch size in evaluation
    assert y.shape == (5, 4)
    assert_close(nnx.to_pure_dict(nnx.state(layer, nnx.BatchStat)), before)
    model.train()
    assert layer.use_running_average is False
    model(x)
    assert int(layer.step[...]) == 2
    # nnx.view gives an evaluation view without changing the module's own mode.
    view = nnx.view(model, use_running_average=True)
    view(x)
    assert int(layer.step[...]) == 2
    assert layer.use_running_average is False


def test_alpha_follows_the_step_variable_in_graph():
    layer = MomentumBatchNorm(2, num_views=1, total_steps=4, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(3)
    ref = m2t_core.init_stats(2)
    schedule = m2t_core.stats_momentum_schedule(4)
    for _ in range(6):  # past total_steps: α stays at 1
        x = rng.normal(1.0, 2.0, (8, 2)).astype(np.float32)
        jitted_call(layer, jnp.asarray(x), False)
        _, ref = m2t_core.momentum_batch_norm(x, ref, alpha=schedule(int(ref.step)), num_views=1)
        assert_close(layer.stats, ref)


def test_non_finite_commit_is_skipped_under_jit():
    layer = MomentumBatchNorm(3, alpha_start=0.5, alpha_end=0.5, rngs=nnx.Rngs(0))
    x = np.ones((4, 3), np.float32)
    x[0, 0] = np.nan
    jitted_call(layer, jnp.asarray(x), False)
    assert int(layer.skipped[...]) == 1
    assert int(layer.step[...]) == 1
    assert_close(layer.stats, m2t_core.init_stats(3)._replace(step=np.asarray(1), skipped=np.asarray(1)))


def test_statistics_get_no_gradient_and_parameters_do():
    layer = MomentumBatchNorm(3, total_steps=10, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 3)) * 2 + 1

    def loss(layer):
        return jnp.sum(layer(x) * jnp.arange(3.0))

    grads = nnx.grad(loss)(layer)
    assert set(nnx.to_pure_dict(grads)) == {"scale", "bias"}
    assert float(jnp.abs(grads["scale"][...]).sum()) > 0


def test_output_dtype_and_half_precision_input():
    layer = MomentumBatchNorm(3, total_steps=10, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 3))
    assert layer(x).dtype == jnp.bfloat16
    layer16 = MomentumBatchNorm(3, total_steps=10, rngs=nnx.Rngs(0))
    y = layer16(x.astype(jnp.float16))
    assert y.dtype == jnp.float16
    assert layer16.mean[...].dtype == jnp.float32


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: MomentumBatchNorm(0, rngs=nnx.Rngs(0)), ["num_features", "0"]),
        (lambda: MomentumBatchNorm(3, num_views=0, rngs=nnx.Rngs(0)), ["num_views", "0"]),
        (lambda: MomentumBatchNorm(3, alpha_end=1.5, total_steps=3, rngs=nnx.Rngs(0)), ["alpha_end", "1.5"]),
        (lambda: MomentumBatchNorm(3, rngs=nnx.Rngs(0), total_steps=None), ["total_steps is required"]),
        (lambda: MomentumBatchNorm(3, total_steps=0, rngs=nnx.Rngs(0)), ["total_steps", "0"]),
        (lambda: MomentumBatchNorm(3, correction="sample", total_steps=3, rngs=nnx.Rngs(0)), ["'sample'"]),
        (lambda: MomentumBatchNorm(3, epsilon=-1.0, total_steps=3, rngs=nnx.Rngs(0)), ["epsilon"]),
    ],
)
def test_bad_constructor_arguments(build, words):
    with pytest.raises(ValueError, match=words[0]) as info:
        build()
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("shape", "evaluate", "words"),
    [
        ((4, 5), False, ["num_features=3", "(4, 5)", "5 channels"]),
        ((4, 5), True, ["num_features=3", "(4, 5)"]),
        ((5, 3), False, ["num_features=3", "(5, 3)", "num_views=2", "batch size 5"]),
        ((2, 3), False, ["num_features=3", "(2, 3)", "n=1"]),
        ((3,), False, ["num_features=3", "(3,)", "rank"]),
    ],
)
def test_layer_errors_name_the_layer_and_the_input_shape(mode, shape, evaluate, words):
    layer = MomentumBatchNorm(3, total_steps=10, correction="unbiased", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="MomentumBatchNorm") as info:
        call(mode, layer, jnp.ones(shape), evaluate)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    with pytest.raises(TypeError, match="floating"):
        layer(jnp.ones((4, 3), jnp.int32))


# --------------------------------------------------------------------------------------------------
# convert_momentum_bn


class Block(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
        self.norm = nnx.BatchNorm(4, use_fast_variance=False, rngs=rngs)
        self.head = nnx.Sequential(
            nnx.Linear(4, 5, rngs=rngs), nnx.BatchNorm(5, use_fast_variance=False, rngs=rngs)
        )
        self.shared = self.norm  # one BatchNorm reachable by two paths

    def __call__(self, x):
        x = nnx.relu(self.norm(self.conv(x)))
        return self.head(x.mean(axis=(1, 2)))


def test_convert_replaces_every_batchnorm_and_keeps_the_parameter_tree():
    model = Block(nnx.Rngs(0))
    model.norm.scale[...] = jnp.arange(1.0, 5.0)
    before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    out = convert_momentum_bn(model, num_views=1, alpha_start=0.0, alpha_end=0.0)
    assert out is model
    assert not [p for p, n in nnx.iter_graph(model) if isinstance(n, nnx.BatchNorm)]
    assert isinstance(model.norm, MomentumBatchNorm)
    assert isinstance(model.head.layers[1], MomentumBatchNorm)
    assert model.shared is model.norm  # the shared reference moved to the one new layer
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert jax.tree.structure(after) == jax.tree.structure(before)
    jax.tree.map(np.testing.assert_array_equal, after, before)


class Containers(nnx.Module):
    def __init__(self, rngs):
        self.listed = nnx.List([nnx.Linear(3, 3, rngs=rngs), nnx.BatchNorm(3, rngs=rngs)])
        self.mapped = nnx.Dict(a=nnx.BatchNorm(3, rngs=rngs))
        self.plain = nnx.data([nnx.BatchNorm(3, rngs=rngs)])
        self.pair = nnx.data((nnx.BatchNorm(3, rngs=rngs), nnx.Linear(3, 3, rngs=rngs)))
        self.nested = nnx.data({"x": (nnx.BatchNorm(3, rngs=rngs),)})


def test_convert_reaches_batchnorms_in_every_container():
    model = convert_momentum_bn(Containers(nnx.Rngs(0)), total_steps=5)
    assert not [p for p, n in nnx.iter_graph(model) if isinstance(n, nnx.BatchNorm)]
    layers = [model.listed[1], model.mapped["a"], model.plain[0], model.pair[0], model.nested["x"][0]]
    assert all(isinstance(layer, MomentumBatchNorm) for layer in layers)
    assert isinstance(model.pair[1], nnx.Linear)
    for layer in layers:
        layer(jnp.ones((4, 3)))
    assert int(model.pair[0].step[...]) == 1


def test_converted_model_with_alpha_zero_is_plain_training_bn():
    x = jax.random.normal(jax.random.key(0), (6, 5, 5, 2)) * 3 + 1
    plain = Block(nnx.Rngs(0))
    converted = convert_momentum_bn(nnx.clone(plain), num_views=1, alpha_start=0.0, alpha_end=0.0)
    assert_close(converted(x), plain(x), rtol=1e-5, atol=1e-5)
    # ...and with two views, every half is normalised by its own moments.
    two = convert_momentum_bn(nnx.clone(Block(nnx.Rngs(0))), alpha_start=0.0, alpha_end=0.0)
    halves = jnp.concatenate([Block(nnx.Rngs(0))(x[:3]), Block(nnx.Rngs(0))(x[3:])])
    assert_close(two(x), halves, rtol=1e-5, atol=1e-5)


def test_convert_copies_configuration_and_validates_first():
    bn = nnx.BatchNorm(3, epsilon=1e-3, use_bias=False, axis=1, use_running_average=True, rngs=nnx.Rngs(0))
    layer = convert_momentum_bn(bn, total_steps=100, correction="official")
    assert isinstance(layer, MomentumBatchNorm)
    assert (layer.epsilon, layer.use_bias, layer.bias, layer.axis, layer.use_running_average) == (
        1e-3,
        False,
        None,
        1,
        True,
    )
    assert (layer.correction, layer.alpha_schedule.total_steps) == ("official", 100)
    model = nnx.Sequential(nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="total_steps is required"):
        convert_momentum_bn(model)
    assert isinstance(model.layers[0], nnx.BatchNorm)  # nothing half converted
    mixed = nnx.Sequential(
        nnx.BatchNorm(3, rngs=nnx.Rngs(0)), nnx.BatchNorm(3, axis=(1, 2), rngs=nnx.Rngs(0))
    )
    with pytest.raises(ValueError, match=r"layers.1.*axis=\(1, 2\)"):
        convert_momentum_bn(mixed, total_steps=5)
    assert isinstance(mixed.layers[0], nnx.BatchNorm)
