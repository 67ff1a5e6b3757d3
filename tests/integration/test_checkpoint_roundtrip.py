"""A checkpoint trained in PyTorch survives torch → Keras → Flax NNX → Flax Linen → torch bit for bit.

Keras runs in this process on TensorFlow (the integration environment's default backend), and in
subprocesses on JAX and PyTorch, since KERAS_BACKEND is fixed once per process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from m2t_core.checkpoint import load_checkpoint, read_config
from m2t_core.reference_net import ReferenceConfig, init_checkpoint

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

CONFIG = ReferenceConfig(in_channels=3, width=4, hidden_dim=16, projection_dim=8)


def keras_model():
    from m2t_keras import M2Teacher
    from m2t_keras.models import ReferenceNet

    return M2Teacher(ReferenceNet((8, 8, 3), CONFIG.width), hidden_dim=16, projection_dim=8, total_steps=10)


@pytest.fixture(scope="module")
def trained_in_torch(tmp_path_factory):
    import torch

    import m2t_torch

    torch.manual_seed(0)
    model = m2t_torch.M2Teacher(
        m2t_torch.ReferenceNet(3, CONFIG.width), hidden_dim=16, projection_dim=8, total_steps=10
    )
    m2t_torch.from_canonical(model, init_checkpoint(CONFIG, seed=4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        views = torch.randn(2, 4, 3, 8, 8)
        loss = model(views[0], views[1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return m2t_torch.export_checkpoint(model, tmp_path_factory.mktemp("torch") / "trained.safetensors")


def assert_identical(path, reference):
    got, want = load_checkpoint(path).arrays, load_checkpoint(reference).arrays
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        assert got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_torch_keras_flax_torch_round_trip_is_bit_exact(trained_in_torch, tmp_path):
    import jax
    import optax
    from flax import nnx

    import m2t_flax
    import m2t_torch
    from m2t_flax.linen_teacher import M2Teacher as LinenM2Teacher
    from m2t_flax.nnx import M2Teacher, ReferenceNet
    from m2t_keras import interchange as keras_interchange

    trained = load_checkpoint(trained_in_torch).arrays
    assert int(trained["step"]) == 3
    assert int(trained["teacher.backbone.stem.bn.step"]) == 3
    assert not np.array_equal(
        trained["student.backbone.stem.conv.kernel"],
        init_checkpoint(CONFIG, seed=4)["student.backbone.stem.conv.kernel"],
    )

    keras_m = keras_model()
    keras_interchange.import_checkpoint(keras_m, trained_in_torch)
    from_keras = keras_interchange.export_checkpoint(keras_m, tmp_path / "keras.safetensors")

    # Flax models built abstractly (shapes only): importing fills every value, nothing is initialised.
    def build_nnx():
        rngs = nnx.Rngs(0)
        return M2Teacher(
            ReferenceNet(3, CONFIG.width, rngs=rngs),
            hidden_dim=16,
            projection_dim=8,
            total_steps=10,
            rngs=rngs,
        )

    nnx_m = m2t_flax.import_checkpoint(nnx.eval_shape(build_nnx), from_keras)
    from_nnx = m2t_flax.export_checkpoint(nnx_m, tmp_path / "nnx.safetensors")

    linen = LinenM2Teacher.reference(width=CONFIG.width, hidden_dim=16, projection_dim=8, total_steps=10)
    state = jax.eval_shape(
        lambda key, x: linen.init_state(key, x, optax.sgd(0.1)),
        jax.random.key(0),
        np.zeros((2, 8, 8, 3), np.float32),
    )
    state = m2t_flax.import_checkpoint(state, from_nnx)
    from_linen = m2t_flax.export_checkpoint(state, tmp_path / "linen.safetensors")

    back = m2t_torch.M2Teacher(
        m2t_torch.ReferenceNet(3, CONFIG.width), hidden_dim=16, projection_dim=8, total_steps=10
    )
    m2t_torch.import_checkpoint(back, from_linen)
    final = m2t_torch.export_checkpoint(back, tmp_path / "back.safetensors")

    for path, framework in (
        (from_keras, "keras-tensorflow"),
        (from_nnx, "flax-nnx"),
        (from_linen, "flax-linen"),
        (final, "torch"),
    ):
        assert_identical(path, trained_in_torch)
        config = read_config(path)
        assert config["framework"] == framework
        assert ReferenceConfig.from_model_config(config) == CONFIG


KERAS_ROUND_TRIP = """
import sys
from m2t_keras import M2Teacher, interchange
from m2t_keras.models import ReferenceNet
model = M2Teacher(ReferenceNet((8, 8, 3), 4), hidden_dim=16, projection_dim=8, total_steps=10)
interchange.import_checkpoint(model, sys.argv[1])
interchange.export_checkpoint(model, sys.argv[2])
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_keras_round_trip_on_the_other_backends(trained_in_torch, tmp_path, backend):
    out = tmp_path / f"keras-{backend}.safetensors"
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", KERAS_ROUND_TRIP, str(trained_in_torch), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_identical(out, trained_in_torch)
    assert read_config(out)["framework"] == f"keras-{backend}"
