"""m2t_flax.nnx.M2Teacher and its training steps follow DESIGN §2 step by step."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import m2t_core
from m2t_core.testing import assert_close
from m2t_flax.nnx import M2Teacher, MomentumBatchNorm, make_train_step, train_step

IN, FEAT, HIDDEN, PROJ, B = 6, 8, 16, 4, 8


def backbone(seed=0):
    rngs = nnx.Rngs(seed)
    return nnx.Sequential(
        nnx.Linear(IN, FEAT, rngs=rngs), nnx.BatchNorm(FEAT, use_fast_variance=False, rngs=rngs), nnx.relu
    )


def build(seed=0, tx=None, **kw):
    kw = {"hidden_dim": HIDDEN, "projection_dim": PROJ, "total_steps": 20, "alpha_start": 0.3, **kw}
    model = M2Teacher(backbone(seed), feature_dim=FEAT, rngs=nnx.Rngs(seed + 1), **kw)
    optimizer = nnx.Optimizer(model.student, tx or optax.adam(1e-2), wrt=nnx.Param)
    return model, optimizer


def views(step, batch=B):
    key = jax.random.fold_in(jax.random.key(42), step)
    x = jax.random.normal(key, (batch, IN)) * 2 + 0.5
    return x, x * 0.8 + 0.1 * jax.random.normal(jax.random.fold_in(key, 1), x.shape)


def pure(node, filt=nnx.Param):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(node, filt)))


# --------------------------------------------------------------------------------------------------
# a NumPy forward of the same networks, on m2t_core


def np_linear(p, x):
    return x @ p["kernel"] + p["bias"]


def np_bn_train(p, x):
    mean, var = x.mean(0), x.var(0)
    return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def np_student(p, x):
    bb = p["backbone"]["layers"]
    h = np.maximum(np_bn_train(bb[1], np_linear(bb[0], x)), 0)
    for head in ("projector", "predictor"):
        q = p[head]
        h = np_linear(q["linear2"], np.maximum(np_bn_train(q["bn"], np_linear(q["linear1"], h)), 0))
    return h


def np_teacher(p, x, alpha):
    """Teacher forward with the reference momentum BN from fresh statistics; returns z and commits."""
    commits = []

    def mbn(q, h):
        y, stats = m2t_core.momentum_batch_norm(
            h, m2t_core.init_stats(h.shape[1]), alpha=alpha, num_views=2, scale=q["scale"], offset=q["bias"]
        )
        commits.append(stats)
        return y

    bb = p["backbone"]["layers"]
    h = np.maximum(mbn(bb[1], np_linear(bb[0], x)), 0)
    q = p["projector"]
    z = np_linear(q["linear2"], np.maximum(mbn(q["bn"], np_linear(q["linear1"], h)), 0))
    return z, commits


def test_first_step_matches_a_numpy_reference():
    model, optimizer = build()
    student = pure(model.student)
    v1, v2 = views(0)
    x1, x2 = np.asarray(v1), np.asarray(v2)
    # Step 0: the teacher is an exact copy, α_0 = alpha_start.
    z, commits = np_teacher({k: student[k] for k in ("backbone", "projector")}, np.concatenate([x1, x2]), 0.3)
    p1, p2 = np_student(student, x1), np_student(student, x2)
    ref_loss = m2t_core.symmetric_loss(p1, p2, z[:B], z[B:])
    loss = train_step(model, optimizer, v1, v2)
    assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert_close(model.teacher.backbone.layers[1].stats, commits[0], rtol=1e-5, atol=1e-5)
    assert_close(model.teacher.projector.bn.stats, commits[1], rtol=1e-5, atol=1e-5)
    assert int(model.step[...]) == 1
    assert int(optimizer.step[...]) == 1
    # EMA at step 0 copies a copy; the teacher has no predictor and moves only by EMA.
    teacher = pure(model.teacher)
    assert_close(teacher, {k: student[k] for k in ("backbone", "projector")})


def test_ema_runs_before_the_teacher_forward_with_the_scheduled_momentum():
    model, optimizer = build()
    step = make_train_step(model, optimizer)
    for k in range(3):
        teacher_before, student_before = pure(model.teacher), pure(model.student)
        del student_before["predictor"]
        step(*views(k))
        m_k = m2t_core.teacher_momentum_schedule(20)(k)
        assert_close(pure(model.teacher), m2t_core.ema_update(teacher_before, student_before, m_k))
        # Every momentum BN committed once per step, so their steps follow the model's.
        for layer in (model.teacher.backbone.layers[1], model.teacher.projector.bn):
            assert int(layer.step[...]) == k + 1
    assert int(model.step[...]) == 3


def test_only_the_student_is_optimised():
    model, optimizer = build(tx=optax.sgd(0.5))
    teacher_before = pure(model.teacher)
    student_before = pure(model.student)
    train_step(model, optimizer, *views(0))
    student_after = pure(model.student)
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), student_after, student_before)
    assert all(jax.tree.leaves(moved["predictor"]))
    assert any(jax.tree.leaves(moved["backbone"]))
    # At step 0 the EMA of a copy is the copy (to rounding): the optimizer never touched the teacher.
    assert_close(pure(model.teacher), teacher_before)


def test_make_train_step_equals_train_step():
    a_model, a_opt = build()
    b_model, b_opt = build()
    fast = make_train_step(b_model, b_opt)
    for k in range(3):
        la = train_step(a_model, a_opt, *views(k))
        lb = fast(*views(k))
        assert_close(lb, la)
    assert_close(pure(b_model, ...), pure(a_model, ...))
    assert_close(pure(b_opt, ...), pure(a_opt, ...))


class SharedBackbone(nnx.Module):
    """A backbone that uses one layer twice: NNX tree mode cannot flatten it, graph mode can."""

    def __init__(self, rngs):
        self.linear = nnx.Linear(FEAT, FEAT, rngs=rngs)
        self.again = self.linear
        self.inp = nnx.Linear(IN, FEAT, rngs=rngs)
        self.feature_dim = FEAT

    def __call__(self, x):
        return self.again(nnx.relu(self.linear(self.inp(x))))


def test_make_train_step_falls_back_to_graph_mode_for_shared_modules():
    def make():
        model = M2Teacher(
            SharedBackbone(nnx.Rngs(0)),
            hidden_dim=HIDDEN,
            projection_dim=PROJ,
            total_steps=9,
            rngs=nnx.Rngs(1),
        )
        return model, nnx.Optimizer(model.student, optax.sgd(0.1), wrt=nnx.Param)

    a_model, a_opt = make()
    b_model, b_opt = make()
    fast = make_train_step(b_model, b_opt)
    for k in range(2):
        assert_close(fast(*views(k)), train_step(a_model, a_opt, *views(k)))
    assert b_model.student.backbone.again is b_model.student.backbone.linear
    assert_close(pure(b_model, ...), pure(a_model, ...))


def test_teacher_is_a_converted_copy_with_the_same_parameter_tree():
    model, _ = build()
    teacher, student = pure(model.teacher), pure(model.student)
    assert set(student) == {"backbone", "projector", "predictor"}
    assert set(teacher) == {"backbone", "projector"}
    for part in ("backbone", "projector"):
        assert jax.tree.structure(teacher[part]) == jax.tree.structure(student[part])
    assert isinstance(model.teacher.backbone.layers[1], MomentumBatchNorm)
    assert isinstance(model.student.backbone.layers[1], nnx.BatchNorm)
    assert model.teacher_backbone is model.teacher.backbone
    assert model.teacher.backbone is not model.student.backbone


def test_features_come_from_the_teacher_backbone_in_evaluation_mode():
    model, optimizer = build()
    step = make_train_step(model, optimizer)
    for k in range(2):
        step(*views(k))
    stats_before = pure(model, nnx.BatchStat)
    x = views(9, batch=5)[0]  # any batch size
    feats = model.features(x)
    assert feats.shape == (5, FEAT)
    assert_close(pure(model, nnx.BatchStat), stats_before)
    assert model.teacher.backbone.layers[1].use_running_average is False
    bb = pure(model.teacher.backbone)["layers"]
    stats = model.teacher.backbone.layers[1].stats
    h = np_linear(bb[0], np.asarray(x))
    ref = np.maximum(
        (h - stats.mean) / np.sqrt(np.asarray(stats.var) + 1e-5) * bb[1]["scale"] + bb[1]["bias"], 0
    )
    assert_close(feats, ref, rtol=1e-5, atol=1e-5)


def test_loss_decreases_on_a_fixed_batch():
    model, optimizer = build(tx=optax.adam(3e-2))
    step = make_train_step(model, optimizer)
    losses = [float(step(*views(0))) for _ in range(15)]
    assert losses[-1] < losses[0]
    assert all(0.0 <= v <= 8.0 for v in losses)


def test_bad_configuration_and_inputs():
    with pytest.raises(ValueError, match="total_steps is required"):
        M2Teacher(backbone(), feature_dim=FEAT, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="feature_dim"):
        M2Teacher(backbone(), total_steps=5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="hidden_dim must be a positive int, got 0"):
        M2Teacher(backbone(), feature_dim=FEAT, hidden_dim=0, total_steps=5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="base_momentum"):
        M2Teacher(backbone(), feature_dim=FEAT, base_momentum=1.5, total_steps=5, rngs=nnx.Rngs(0))
    # Constant schedules need no total_steps.
    M2Teacher(
        backbone(), feature_dim=FEAT, base_momentum=0.99, final_momentum=0.99, alpha_end=0.0, rngs=nnx.Rngs(0)
    )
    # Width inferred from the backbone's out_features.
    assert M2Teacher(
        nnx.Linear(IN, 7, rngs=nnx.Rngs(0)), total_steps=5, hidden_dim=8, projection_dim=4, rngs=nnx.Rngs(0)
    )

    model, _ = build()
    whole = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    with pytest.raises(ValueError, match=r"nnx.Optimizer\(model.student"):
        make_train_step(model, whole)
    model, optimizer = build()
    with pytest.raises(ValueError, match="same shape"):
        train_step(model, optimizer, views(0)[0], views(0, batch=6)[1])
