"""MomentumBatchNormalization: equivalence with m2t_core (eager and jit_compile), state, errors, config."""

import contextlib

import keras
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import m2t_core
from m2t_core import MomentumStats
from m2t_core.testing import assert_close, bn_cases, bn_rounding_bound
from m2t_keras import MomentumBatchNormalization
from m2t_keras._tensors import dtype_name

BACKEND = keras.backend.backend()
# A compiled example builds and compiles a small model: ~0.3 s with XLA, seconds with torch.compile.
COMPILED_EXAMPLES = 2 if BACKEND == "torch" else 12
# JAX compiles every primitive anew for each shape hypothesis draws, even eagerly.
eager_settings = settings(max_examples=25) if BACKEND == "jax" else settings()
to_np = keras.ops.convert_to_numpy


def wide_floats():
    if BACKEND == "jax":
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


class TrainingCall(keras.layers.Layer):
    """Calls the wrapped layer in a fixed mode, so ``predict`` can run a training forward compiled."""

    def __init__(self, inner, training, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner
        self.training = training

    def build(self, input_shape):
        if not self.inner.built:
            self.inner.build(input_shape)

    def call(self, x):
        return self.inner(x, training=self.training)

    def compute_output_shape(self, input_shape):
        return input_shape


def layer_for(case, scheduled, total_steps):
    """A built layer whose variables hold the case's statistics, scale and offset."""
    kw = case.kwargs
    schedule = (
        {"alpha_start": 0.0, "alpha_end": 1.0, "total_steps": total_steps}
        if scheduled
        else {"alpha_start": kw["alpha"], "alpha_end": kw["alpha"]}
    )
    layer = MomentumBatchNormalization(
        axis=kw["axis"] if kw["axis"] == 1 else -1,
        epsilon=kw["eps"],
        center=kw["offset"] is not None,
        scale=kw["scale"] is not None,
        num_views=kw["num_views"],
        correction=kw["correction"],
        dtype=case.x.dtype.name,
        **schedule,
    )
    layer.build(case.x.shape)
    layer.moving_mean.assign(case.stats.mean.astype(np.float32))
    layer.moving_variance.assign(case.stats.var.astype(np.float32))
    layer.step.assign(int(case.stats.step))
    layer.skipped.assign(int(case.stats.skipped))
    if kw["scale"] is not None:
        layer.gamma.assign(kw["scale"])
        layer.beta.assign(kw["offset"])
    return layer


def check_layer(case, scheduled, total_steps, compiled):
    with wide_floats():
        layer = layer_for(case, scheduled, total_steps)
        alpha = float(to_np(layer.alpha))
        if scheduled:
            assert_close(
                alpha, np.float32(m2t_core.stats_momentum_schedule(total_steps)(int(case.stats.step)))
            )
        # The layer stores float32 statistics whatever its dtype; the reference gets the same.
        stats = case.stats._replace(
            mean=case.stats.mean.astype(np.float32), var=case.stats.var.astype(np.float32)
        )
        kw = dict(case.kwargs, alpha=alpha)
        y_ref, stats_ref = m2t_core.momentum_batch_norm(case.x, stats, **kw)
        tolerance = {}
        if compiled:
            tolerance = {"atol": bn_rounding_bound(case.x, stats, kw)}
            model = keras.Sequential(
                [keras.Input(case.x.shape[1:], dtype=case.x.dtype.name), TrainingCall(layer, kw["training"])]
            )
            model.compile(jit_compile=True)
            y = model.predict(case.x, batch_size=case.x.shape[0], verbose=0)
        else:
            y = layer(case.x, training=kw["training"])
        assert dtype_name(keras.ops.convert_to_tensor(y)) == case.x.dtype.name
        assert_close(y, y_ref, **tolerance)
        assert_close(tuple(layer.stats), tuple(stats_ref))


AXES = [-1, 1]


@pytest.mark.parametrize("axis", AXES)
@eager_settings
@given(data=st.data(), scheduled=st.booleans(), total_steps=st.integers(1, 2000))
def test_layer_matches_core(axis, data, scheduled, total_steps):
    case = data.draw(bn_cases(axis=axis, max_rank=4 if axis == -1 else 3))
    check_layer(case, scheduled, total_steps, compiled=False)


@pytest.mark.parametrize("axis", AXES)
@settings(max_examples=COMPILED_EXAMPLES)
@given(data=st.data(), scheduled=st.booleans(), total_steps=st.integers(1, 2000))
def test_layer_matches_core_jit_compiled(axis, data, scheduled, total_steps):
    # float32 only: Keras's data adapters hand predict() float64 arrays as floatx (float32).
    case = data.draw(bn_cases(axis=axis, max_rank=3, dtypes=st.just(np.dtype(np.float32))))
    check_layer(case, scheduled, total_steps, compiled=True)


def views(seed=0, shape=(8, 3), loc=2.0):
    rng = np.random.default_rng(seed)
    return (loc + rng.standard_normal(shape)).astype(np.float32)


def test_training_updates_statistics_even_when_frozen():
    layer = MomentumBatchNormalization(alpha_start=0.5, alpha_end=0.5)
    layer.trainable = False
    x = views()
    layer(x, training=True)
    _, ref = m2t_core.momentum_batch_norm(x, m2t_core.init_stats(3), alpha=0.5, eps=1e-3)
    assert_close(tuple(layer.stats), tuple(ref))
    assert layer.trainable_weights == []
    assert {v.name for v in layer.non_trainable_weights} >= {
        "moving_mean",
        "moving_variance",
        "step",
        "skipped",
    }


@pytest.mark.parametrize("training", [False, None])
def test_evaluation_changes_nothing(training):
    layer = MomentumBatchNormalization(alpha_start=0.5, alpha_end=0.5, total_steps=None)
    x = views()
    layer(x, training=True)
    before = [to_np(v) for v in layer.weights]
    y = layer(views(seed=1), training=training)
    assert all(np.array_equal(b, to_np(v)) for b, v in zip(before, layer.weights, strict=True))
    y_ref, _ = m2t_core.momentum_batch_norm(
        views(seed=1), MomentumStats(*[to_np(t) for t in layer.stats]), alpha=0.5, eps=1e-3, training=False
    )
    assert_close(y, y_ref)


def test_alpha_follows_the_schedule_over_steps():
    layer = MomentumBatchNormalization(total_steps=4)
    schedule = m2t_core.stats_momentum_schedule(4)
    stats = m2t_core.init_stats(3)
    for k in range(6):
        x = views(seed=k)
        assert_close(layer.alpha, np.float32(schedule(k)))
        y = layer(x, training=True)
        y_ref, stats = m2t_core.momentum_batch_norm(x, stats, alpha=float(np.float32(schedule(k))), eps=1e-3)
        assert_close(y, y_ref)
        assert_close(tuple(layer.stats), tuple(stats))
    assert int(to_np(layer.step)) == 6


def test_non_finite_commit_is_skipped():
    layer = MomentumBatchNormalization(alpha_start=0.3, alpha_end=0.3)
    layer(views(), training=True)
    before = [to_np(layer.moving_mean), to_np(layer.moving_variance)]
    x = views(seed=1)
    x[3, 0] = np.inf
    layer(x, training=True)
    np.testing.assert_array_equal(to_np(layer.moving_mean), before[0])
    np.testing.assert_array_equal(to_np(layer.moving_variance), before[1])
    assert (int(to_np(layer.step)), int(to_np(layer.skipped))) == (2, 1)


def test_mixed_bfloat16_keeps_float32_statistics(float32_policy):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    layer = MomentumBatchNormalization(alpha_start=0.25, alpha_end=0.25)
    x = views(shape=(8, 4), loc=3.0)
    y = layer(x, training=True)
    assert dtype_name(y) == "bfloat16"
    assert {dtype_name(v.value) for v in (layer.moving_mean, layer.moving_variance, layer.gamma)} == {
        "float32"
    }
    # The layer sees the input cast to its compute dtype; the statistics are float32 moments of it.
    xb = x.astype(ml_dtypes.bfloat16)
    y_ref, ref = m2t_core.momentum_batch_norm(xb, m2t_core.init_stats(4), alpha=0.25, eps=1e-3)
    assert_close(tuple(layer.stats), tuple(ref))
    assert_close(y, y_ref, rtol=2.0**-7, atol=2.0**-7)
    mean = to_np(layer.moving_mean)
    assert not np.array_equal(mean, mean.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_inside_a_functional_model():
    inputs = keras.Input((5, 5, 3))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = MomentumBatchNormalization(num_views=2, total_steps=10, name="mbn")(h)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))
    x = np.random.default_rng(0).standard_normal((6, 5, 5, 3)).astype(np.float32)
    out = model(x, training=True)
    assert tuple(out.shape) == (6, 4)
    assert int(to_np(model.get_layer("mbn").step)) == 1


def test_config_round_trip():
    layer = MomentumBatchNormalization(
        axis=1,
        epsilon=1e-5,
        center=False,
        num_views=3,
        alpha_start=0.1,
        alpha_end=0.9,
        total_steps=50,
        correction="official",
        gamma_regularizer="l2",
        name="mbn",
    )
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is MomentumBatchNormalization
    assert clone.get_config() == layer.get_config()
    assert (clone.num_views, clone.total_steps, clone.correction, clone.center) == (3, 50, "official", False)


def test_saved_model_file_restores_statistics(tmp_path):
    model = keras.Sequential([keras.Input((3,)), MomentumBatchNormalization(total_steps=5, name="mbn")])
    for k in range(3):
        model(views(seed=k), training=True)
    path = tmp_path / "mbn.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(to_np(a), to_np(b))
    assert_close(loaded(views(seed=9)), model(views(seed=9)))


def expect_error(exc, *fragments):
    ctx = pytest.raises(exc)

    @contextlib.contextmanager
    def check():
        with ctx as info:
            yield
        for fragment in fragments:
            assert fragment in str(info.value), (fragment, str(info.value))

    return check()


def test_wrong_channel_count_names_layer_and_shape():
    layer = MomentumBatchNormalization(total_steps=10, name="teacher_bn")
    layer(views(shape=(4, 3)), training=True)
    with expect_error(ValueError, "'teacher_bn'", "num_features=3", "(4, 5)"):
        layer(views(shape=(4, 5)), training=True)


def test_views_must_divide_the_batch():
    layer = MomentumBatchNormalization(num_views=3, total_steps=10, name="mbn")
    with expect_error(ValueError, "'mbn'", "num_views=3", "batch size 4", "(4, 3)"):
        layer(views(shape=(4, 3)), training=True)
    # Evaluation mode takes any batch size.
    assert tuple(layer(views(shape=(4, 3)), training=False).shape) == (4, 3)


def test_one_value_per_view_with_unbiased_correction():
    layer = MomentumBatchNormalization(correction="unbiased", total_steps=10, name="mbn")
    with expect_error(ValueError, "'mbn'", "n=1", "(2, 3)"):
        layer(views(shape=(2, 3)), training=True)


def test_channel_axis_cannot_be_the_batch_axis():
    with expect_error(ValueError, "axis 0", "(4, 3)"):
        MomentumBatchNormalization(axis=0, total_steps=10)(views(shape=(4, 3)))


def test_integer_input_is_rejected():
    with expect_error(TypeError, "floating dtype", "int32"):
        MomentumBatchNormalization(total_steps=10)(np.ones((4, 3), np.int32), training=True)


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"num_views": 0}, ValueError, "num_views must be >= 1"),
        ({"num_views": 2.0}, TypeError, "num_views must be an int"),
        ({"correction": "bessel"}, ValueError, "correction must be one of"),
        ({"epsilon": -1.0}, ValueError, "epsilon must be a finite number"),
        ({"alpha_start": 1.5}, ValueError, "alpha_start must be in [0, 1]"),
        ({"total_steps": None}, ValueError, "total_steps is required"),
        ({"total_steps": 0}, ValueError, "total_steps must be > 0"),
        ({"axis": "last"}, TypeError, "axis must be an int"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, fragment):
    with expect_error(exc, fragment):
        MomentumBatchNormalization(**{"total_steps": 10, **kwargs})


if BACKEND == "tensorflow":

    @pytest.mark.parametrize("correction", ["biased", "unbiased", "official"])
    def test_unknown_batch_size_in_a_graph(correction):
        """TensorFlow graphs fed by a dataset without drop_remainder see the batch size as None."""
        import tensorflow as tf

        layer = MomentumBatchNormalization(alpha_start=0.3, alpha_end=0.3, correction=correction)
        layer.build((None, 3))
        step = tf.function(
            lambda x: layer(x, training=True), input_signature=[tf.TensorSpec([None, 3], tf.float32)]
        )
        x = views(shape=(6, 3))
        y_ref, ref = m2t_core.momentum_batch_norm(
            x, m2t_core.init_stats(3), alpha=0.3, eps=1e-3, correction=correction
        )
        assert_close(step(x), y_ref)
        assert_close(tuple(layer.stats), tuple(ref))
        if correction != "biased":
            # One value per channel and view is only known at run time: the commit is skipped.
            before = to_np(layer.moving_variance)
            step(views(shape=(2, 3)))
            np.testing.assert_array_equal(to_np(layer.moving_variance), before)
            assert (int(to_np(layer.step)), int(to_np(layer.skipped))) == (2, 1)
