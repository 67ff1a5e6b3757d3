"""Every adapter's export/import of the canonical checkpoint, on the reference model and on other backbones.

All adapters run in this one process (the integration environment has every framework; Keras on its
default TensorFlow backend). Each is driven through the same small harness so that every test runs
for torch, Keras, Flax NNX and Flax Linen alike.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from m2t_core.checkpoint import load_checkpoint, read_config
from m2t_core.reference_net import ReferenceConfig, canonical_spec, init_checkpoint, teacher_forward

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

CONFIG = ReferenceConfig(in_channels=3, width=4, hidden_dim=16, projection_dim=8)
IMAGES = np.random.default_rng(3).standard_normal((6, 8, 8, 3)).astype(np.float32)


class Torch:
    framework = "torch"

    def __init__(self):
        import torch

        import m2t_torch

        self.torch, self.m2t = torch, m2t_torch
        self.model = m2t_torch.M2Teacher(
            m2t_torch.ReferenceNet(3, CONFIG.width), hidden_dim=16, projection_dim=8, total_steps=10
        )

    def to_canonical(self):
        return self.m2t.to_canonical(self.model)

    def from_canonical(self, arrays):
        self.m2t.from_canonical(self.model, arrays)

    def export(self, path):
        return self.m2t.export_checkpoint(self.model, path)

    def import_(self, path):
        self.m2t.import_checkpoint(self.model, path)

    def teacher_eval(self, x):
        self.model.eval()
        with self.torch.no_grad():
            out = self.model.teacher(self.torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
        self.model.train()
        return out.numpy()


class Keras:
    framework = "keras-tensorflow"

    def __init__(self):
        from m2t_keras import M2Teacher, interchange
        from m2t_keras.models import ReferenceNet

        self.ic = interchange
        self.model = M2Teacher(
            ReferenceNet((8, 8, 3), CONFIG.width), hidden_dim=16, projection_dim=8, total_steps=10
        )

    def to_canonical(self):
        return self.ic.to_canonical(self.model)

    def from_canonical(self, arrays):
        self.ic.from_canonical(self.model, arrays)

    def export(self, path):
        return self.ic.export_checkpoint(self.model, path)

    def import_(self, path):
        self.ic.import_checkpoint(self.model, path)

    def teacher_eval(self, x):
        import keras

        h = self.model.teacher_backbone(x, training=False)
        return keras.ops.convert_to_numpy(self.model.teacher_projector(h, training=False))


class FlaxNNX:
    framework = "flax-nnx"

    def __init__(self):
        from flax import nnx

        from m2t_flax import interchange
        from m2t_flax.nnx import M2Teacher, ReferenceNet

        self.nnx, self.ic = nnx, interchange
        rngs = nnx.Rngs(0)
        self.model = M2Teacher(
            ReferenceNet(3, CONFIG.width, rngs=rngs),
            hidden_dim=16,
            projection_dim=8,
            total_steps=10,
            rngs=rngs,
        )

    def to_canonical(self):
        return self.ic.to_canonical(self.model)

    def from_canonical(self, arrays):
        self.ic.from_canonical(self.model, arrays)

    def export(self, path):
        return self.ic.export_checkpoint(self.model, path)

    def import_(self, path):
        self.ic.import_checkpoint(self.model, path)

    def teacher_eval(self, x):
        view = self.nnx.view(self.model.teacher, use_running_average=True, raise_if_not_found=False)
        return np.asarray(view(x))


class FlaxLinen:
    framework = "flax-linen"

    def __init__(self):
        import jax
        import optax

        from m2t_flax import interchange
        from m2t_flax.linen_teacher import M2Teacher

        self.ic = interchange
        self.m2t = M2Teacher.reference(width=CONFIG.width, hidden_dim=16, projection_dim=8, total_steps=10)
        self.state = self.m2t.init_state(jax.random.key(0), IMAGES[:2], optax.sgd(0.1))

    def to_canonical(self):
        return self.ic.to_canonical(self.state)

    def from_canonical(self, arrays):
        self.state = self.ic.from_canonical(self.state, arrays)

    def export(self, path):
        return self.ic.export_checkpoint(self.state, path)

    def import_(self, path):
        self.state = self.ic.import_checkpoint(self.state, path)

    def teacher_eval(self, x):
        return np.asarray(self.m2t.teacher.apply(self.state.teacher, x, train=False))


HARNESSES = [Torch, Keras, FlaxNNX, FlaxLinen]


def trained_like(seed):
    """Canonical arrays with non-trivial statistics and counters, as after some training."""
    rng = np.random.default_rng(seed)
    arrays = init_checkpoint(CONFIG, seed)
    for name in arrays:
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "mean":
            arrays[name] = rng.normal(0, 0.3, arrays[name].shape).astype(np.float32)
        elif leaf == "var":
            arrays[name] = rng.uniform(0.5, 2.0, arrays[name].shape).astype(np.float32)
        elif leaf in ("step", "skipped") or name == "step":
            arrays[name] = np.asarray(rng.integers(1, 1000), np.int64)
        elif name.startswith("teacher."):  # a teacher that has drifted from the student
            arrays[name] = (arrays[name] * 1.01).astype(np.float32)
    return arrays


@pytest.mark.parametrize("harness", HARNESSES, ids=lambda h: h.framework)
def test_the_reference_model_has_exactly_the_canonical_names(harness):
    exported = harness().to_canonical()
    spec = canonical_spec(CONFIG)
    assert sorted(exported) == sorted(spec)
    for name, (shape, dtype) in spec.items():
        assert exported[name].shape == shape, name
        assert exported[name].dtype == dtype, name


@pytest.mark.parametrize("harness", HARNESSES, ids=lambda h: h.framework)
def test_import_then_export_is_bit_exact(harness, tmp_path):
    arrays = trained_like(7)
    h = harness()
    h.from_canonical(arrays)
    again = h.to_canonical()
    for name, value in arrays.items():
        assert again[name].dtype == value.dtype, name
        np.testing.assert_array_equal(again[name], value, err_msg=name)
    path = h.export(tmp_path / "m.safetensors")
    h2 = harness()
    h2.import_(path)
    for name, value in load_checkpoint(path).arrays.items():
        np.testing.assert_array_equal(h2.to_canonical()[name], value, err_msg=name)


@pytest.mark.parametrize("harness", HARNESSES, ids=lambda h: h.framework)
def test_every_array_lands_where_the_numpy_model_reads_it(harness):
    # Evaluation mode uses every teacher array (kernels, scales, biases, mean, var): a transposed
    # kernel or a swapped statistic would change the projections.
    arrays = trained_like(11)
    h = harness()
    h.from_canonical(arrays)
    expected, _ = teacher_forward(arrays, IMAGES.astype(np.float64), CONFIG, alpha=0.0, training=False)
    np.testing.assert_allclose(
        h.teacher_eval(IMAGES), expected, rtol=2e-5, atol=2e-5 * np.abs(expected).max()
    )


@pytest.mark.parametrize("harness", HARNESSES, ids=lambda h: h.framework)
def test_the_config_describes_the_model(harness, tmp_path):
    path = harness().export(tmp_path / "m.safetensors")
    config = read_config(path)
    assert config["framework"] == harness.framework
    assert ReferenceConfig.from_model_config(config) == CONFIG
    assert config["total_steps"] == 10
    assert config["base_momentum"] == 0.99
    assert config["correction"] == "biased"


@pytest.mark.parametrize("harness", HARNESSES, ids=lambda h: h.framework)
def test_mismatched_checkpoints_are_rejected_and_change_nothing(harness):
    h = harness()
    before = h.to_canonical()
    bad = trained_like(1)
    del bad["student.backbone.stage2.shortcut.conv.kernel"]
    bad["teacher.projector.linear1.kernel"] = np.zeros((8, 3), np.float32)
    with pytest.raises(
        ValueError, match=r"missing names: student\.backbone\.stage2\.shortcut\.conv\.kernel"
    ) as info:
        h.from_canonical(bad)
    assert "teacher.projector.linear1.kernel has shape (8, 3)" in str(info.value)
    wider = init_checkpoint(ReferenceConfig(3, 6, 16, 8), 0)
    with pytest.raises(ValueError, match="mis-shaped"):
        h.from_canonical(wider)
    as_float64 = {n: v.astype(np.float64) if v.dtype == np.float32 else v for n, v in trained_like(1).items()}
    with pytest.raises(ValueError, match="wrong dtype"):
        h.from_canonical(as_float64)
    after = h.to_canonical()
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_torch_names_follow_module_paths_for_other_backbones():
    import torch
    from torch import nn

    import m2t_torch

    backbone = nn.Sequential(
        nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten()
    )
    model = m2t_torch.M2Teacher(backbone, feature_dim=4, hidden_dim=6, projection_dim=3, total_steps=5)
    arrays = m2t_torch.to_canonical(model)
    assert arrays["student.backbone.0.kernel"].shape == (3, 2, 4)  # [k, in, out] from torch's [out, in, k]
    np.testing.assert_array_equal(
        arrays["student.backbone.0.kernel"], backbone[0].weight.detach().numpy().transpose(2, 1, 0)
    )
    assert {"teacher.backbone.1.step", "teacher.backbone.1.skipped"} <= set(arrays)
    assert "student.backbone.1.num_batches_tracked" not in arrays  # torch-only counter
    assert {"student.projector.linear1.kernel", "student.predictor.linear2.bias"} <= set(arrays)
    model.teacher.backbone[1].running_var.fill_(3.0)
    m2t_torch.from_canonical(model, arrays)
    assert torch.equal(model.teacher.backbone[1].running_var, torch.ones(4))


def test_keras_names_follow_layer_names_for_other_backbones():
    import keras

    import m2t_keras
    from m2t_keras import interchange

    inputs = keras.Input((5,))
    h = keras.layers.Dense(4, name="block-dense")(inputs)
    h = keras.layers.BatchNormalization(name="block-norm")(h)
    model = m2t_keras.M2Teacher(keras.Model(inputs, h), hidden_dim=6, projection_dim=3, total_steps=5)
    arrays = interchange.to_canonical(model)
    assert arrays["student.backbone.block.dense.kernel"].shape == (5, 4)
    assert {"teacher.backbone.block.norm.step", "student.backbone.block.norm.var"} <= set(arrays)
    assert interchange.checkpoint_config(model)["backbone"] == {"architecture": "Functional"}


def test_wrong_objects_are_rejected():
    import m2t_keras.interchange
    import m2t_torch
    from m2t_flax import interchange

    for module in (m2t_torch, m2t_keras.interchange, interchange):
        with pytest.raises(TypeError, match="M2Teacher"):
            module.to_canonical(object())
