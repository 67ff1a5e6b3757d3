"""The Linen M2T model (m2t_flax.linen_teacher): the same train step as NNX, bit for bit, and its checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import m2t_flax
from m2t_core.reference_net import ReferenceConfig, init_checkpoint
from m2t_flax.linen_teacher import M2Teacher, MomentumNorm, ReferenceNet, Student, Teacher
from m2t_flax.nnx import M2Teacher as NNXM2Teacher
from m2t_flax.nnx import ReferenceNet as NNXReferenceNet
from m2t_flax.nnx import make_train_step

CONFIG = ReferenceConfig(in_channels=3, width=4, hidden_dim=16, projection_dim=8)
VIEWS = np.random.default_rng(0).standard_normal((3, 2, 4, 8, 8, 3)).astype(np.float32)


def linen_model():
    return M2Teacher.reference(width=4, hidden_dim=16, projection_dim=8, total_steps=6, alpha_start=0.2)


def test_linen_and_nnx_train_identically_from_one_checkpoint():
    arrays = init_checkpoint(CONFIG, seed=3)
    tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.05, momentum=0.9))
    m2t = linen_model()
    state = m2t.init_state(jax.random.key(1), jnp.asarray(VIEWS[0, 0]), tx)
    state = m2t_flax.from_canonical(state, arrays)
    linen_step = m2t.make_train_step(tx)

    rngs = nnx.Rngs(2)
    model = NNXM2Teacher(
        NNXReferenceNet(3, 4, rngs=rngs),
        hidden_dim=16,
        projection_dim=8,
        total_steps=6,
        alpha_start=0.2,
        rngs=rngs,
    )
    m2t_flax.from_canonical(model, arrays)
    nnx_step = make_train_step(model, nnx.Optimizer(model.student, tx, wrt=nnx.Param))
    for v1, v2 in VIEWS:
        state, loss = linen_step(state, jnp.asarray(v1), jnp.asarray(v2))
        # The same operations in the same order: equal to the bit, not just within rounding.
        np.testing.assert_array_equal(
            np.asarray(loss), np.asarray(nnx_step(jnp.asarray(v1), jnp.asarray(v2)))
        )
    ours, theirs = m2t_flax.to_canonical(state), m2t_flax.to_canonical(model)
    assert int(ours["step"]) == 3
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)


def test_init_state_copies_the_student_into_the_teacher():
    m2t = linen_model()
    state = m2t.init_state(jax.random.key(0), jnp.asarray(VIEWS[0, 0]), optax.sgd(0.1))
    arrays = m2t_flax.to_canonical(state)
    for name, value in arrays.items():
        if name.startswith("teacher.") and name.rsplit(".", 1)[-1] in ("kernel", "bias", "scale"):
            np.testing.assert_array_equal(value, arrays["student." + name[len("teacher.") :]])
    assert int(arrays["teacher.backbone.stem.bn.step"]) == 0
    assert m2t.config(3, 8)["backbone"] == {"architecture": "m2t-reference", "in_channels": 3, "width": 4}


def test_targets_are_pure_and_features_use_stored_statistics():
    m2t = linen_model()
    state = m2t.init_state(jax.random.key(0), jnp.asarray(VIEWS[0, 0]), optax.sgd(0.1))
    z1, z2, teacher = m2t.targets(state, jnp.asarray(VIEWS[0, 0]), jnp.asarray(VIEWS[0, 1]))
    assert z1.shape == z2.shape == (4, 8)
    assert int(teacher["batch_stats"]["projector"]["bn"]["step"]) == 1
    assert int(state.teacher["batch_stats"]["projector"]["bn"]["step"]) == 0  # nothing stored
    features = m2t.features(state, jnp.asarray(VIEWS[0, 0, :3]))
    assert features.shape == (3, 8)
    with pytest.raises(ValueError, match="same shape"):
        m2t.targets(state, jnp.asarray(VIEWS[0, 0]), jnp.asarray(VIEWS[0, 1, :2]))


def test_bad_definitions_are_rejected():
    norm = MomentumNorm(total_steps=4)
    with pytest.raises(ValueError, match="student heads"):
        M2Teacher(Student(ReferenceNet(4), 16, 8), Teacher(ReferenceNet(4, norm), 16, 4, norm), total_steps=4)
    with pytest.raises(ValueError, match="total_steps is required"):
        MomentumNorm()
    with pytest.raises(ValueError, match="correction"):
        MomentumNorm(total_steps=4, correction="bessel")
    mismatched = M2Teacher(
        Student(ReferenceNet(4), 16, 8), Teacher(ReferenceNet(6, norm), 16, 8, norm), total_steps=4
    )
    with pytest.raises(ValueError, match="do not mirror"):
        mismatched.init_state(jax.random.key(0), jnp.asarray(VIEWS[0, 0]), optax.sgd(0.1))
