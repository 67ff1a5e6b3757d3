"""convert_momentum_bn and parameter_pairs."""

import keras
import numpy as np
import pytest

from m2t_core.testing import assert_close
from m2t_keras import MomentumBatchNormalization, convert_momentum_bn, parameter_pairs
from m2t_keras.convert import leaf_layers

to_np = keras.ops.convert_to_numpy


def trained_bn(model, x, steps=3):
    """Move every BatchNormalization's statistics and affine weights away from their initial values."""
    for _ in range(steps):
        model(x, training=True)
    for layer in leaf_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(np.linspace(0.5, 1.5, layer.gamma.shape[0]).astype(np.float32))
            layer.beta.assign(np.linspace(-0.2, 0.3, layer.beta.shape[0]).astype(np.float32))
    return model


def functional_conv_net(data_format="channels_last"):
    axis = -1 if data_format == "channels_last" else 1
    shape = (6, 6, 3) if data_format == "channels_last" else (3, 6, 6)
    inner = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(momentum=0.5),
            keras.layers.ReLU(),
        ],
        name="inner",
    )
    inputs = keras.Input(shape)
    h = keras.layers.Conv2D(4, 3, padding="same", data_format=data_format)(inputs)
    h = keras.layers.BatchNormalization(axis=axis, epsilon=1e-5, momentum=0.5, name="conv_bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D(data_format=data_format)(h)
    h = keras.layers.Dense(8)(h)
    out = inner(h)
    return keras.Model(inputs, out, name="net"), shape


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_converted_model_matches_original_in_evaluation(data_format):
    keras.utils.set_random_seed(0)
    model, shape = functional_conv_net(data_format)
    x = np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)
    trained_bn(model, x)
    before = [to_np(v) for v in model.weights]
    teacher = convert_momentum_bn(model, num_views=2, total_steps=100, correction="unbiased")
    # Inference BN and evaluation-mode momentum BN are the same function of the same variables.
    assert_close(teacher(x, training=False), model(x, training=False))
    assert all(np.array_equal(b, to_np(v)) for b, v in zip(before, model.weights, strict=True))
    kinds = [type(layer).__name__ for layer in leaf_layers(teacher)]
    assert kinds.count("MomentumBatchNormalization") == 2
    assert "BatchNormalization" not in kinds
    conv_bn = teacher.get_layer("conv_bn")
    assert (conv_bn.axis, conv_bn.epsilon, conv_bn.num_views) == (
        (-1 if data_format == "channels_last" else 1),
        1e-5,
        2,
    )
    assert (conv_bn.total_steps, conv_bn.correction, int(to_np(conv_bn.step))) == (100, "unbiased", 0)
    assert_close(conv_bn.moving_mean, model.get_layer("conv_bn").moving_mean)


def test_converted_model_trains_its_statistics_with_momentum():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5), keras.layers.BatchNormalization()])
    teacher = convert_momentum_bn(model, alpha_start=0.5, alpha_end=0.5)
    teacher.trainable = False
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    teacher(x, training=True)
    mbn = teacher.layers[-1]
    assert isinstance(mbn, MomentumBatchNormalization)
    assert int(to_np(mbn.step)) == 1
    assert not np.array_equal(to_np(mbn.moving_mean), np.zeros(5, np.float32))


def test_sequential_stays_sequential_and_names_are_kept():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, name="d"), keras.layers.BatchNormalization(name="bn")]
    )
    teacher = convert_momentum_bn(model, total_steps=10)
    assert isinstance(teacher, keras.Sequential)
    assert [layer.name for layer in teacher.layers] == ["d", "bn"]


def test_parameter_pairs_skip_statistics():
    keras.utils.set_random_seed(0)
    model, _ = functional_conv_net()
    teacher = convert_momentum_bn(model, total_steps=10)
    pairs = parameter_pairs(model, teacher)
    names = [s.name for _, s in pairs]
    assert "moving_mean" not in names
    assert "moving_variance" not in names
    assert names.count("gamma") == 2
    assert names.count("beta") == 2
    # conv kernel+bias, 2x BN gamma+beta, dense kernel+bias, inner dense kernel+bias
    assert len(pairs) == 2 + 4 + 2 + 2
    for t, s in pairs:
        assert t is not s
        np.testing.assert_array_equal(to_np(t), to_np(s))


def test_subclassed_model_is_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.bn = keras.layers.BatchNormalization()

        def call(self, x):
            return self.bn(x)

    with pytest.raises(TypeError, match="Functional or Sequential"):
        convert_momentum_bn(Net())


def test_batch_norm_hidden_in_a_custom_layer_is_rejected():
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(3)
            self.bn = keras.layers.BatchNormalization()

        def call(self, x, training=None):
            return self.bn(self.dense(x), training=training)

    model = keras.Sequential([keras.Input((3,)), Block(name="block")])
    with pytest.raises(ValueError, match="'block'"):
        convert_momentum_bn(model, total_steps=10)


def test_renorm_is_rejected():
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(renorm=True, name="rn")])
    with pytest.raises(ValueError, match="'rn' uses renorm=True"):
        convert_momentum_bn(model, total_steps=10)


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"momentum": 0.9}, TypeError, "unexpected keyword arguments ['momentum']"),
        ({"num_views": 0}, ValueError, "num_views must be >= 1"),
        ({}, ValueError, "total_steps is required"),
    ],
)
def test_bad_arguments(kwargs, exc, fragment):
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    with pytest.raises(exc) as info:
        convert_momentum_bn(model, **kwargs)
    assert fragment in str(info.value)
