"""m2t_flax.linen.MomentumBatchNorm matches the core, and a Linen M2T step matches the NNX one.

float64 examples run inside the scoped ``jax.enable_x64(True)`` context (see test_functional.py).
"""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings

import m2t_core
from m2t_core.testing import assert_close, bn_cases, bn_rounding_bound
from m2t_flax import functional as mf
from m2t_flax.linen import MomentumBatchNorm
from m2t_flax.nnx import M2Teacher, make_train_step

MODES = ["eager", "jit"]
EXAMPLES = {"eager": 25, "jit": 20}


def x64_for(dtype):
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()


def layer_and_variables(case, alpha):
    kw = case.kwargs
    layer = MomentumBatchNorm(
        axis=kw["axis"],
        epsilon=kw["eps"],
        use_scale=kw["scale"] is not None,
        use_bias=kw["offset"] is not None,
        num_views=kw["num_views"],
        alpha_start=alpha,
        alpha_end=alpha,
        correction=kw["correction"],
    )
    variables = layer.init(jax.random.key(0), jnp.asarray(case.x), use_running_average=True)
    params = dict(variables.get("params", {}))
    if kw["scale"] is not None:
        params = {"scale": jnp.asarray(kw["scale"]), "bias": jnp.asarray(kw["offset"])}
    stats = {
        "mean": jnp.asarray(case.stats.mean),
        "var": jnp.asarray(case.stats.var),
        "step": jnp.asarray(case.stats.step, jnp.int32),
        "skipped": jnp.asarray(case.stats.skipped, jnp.int32),
    }
    return layer, {"params": params, "batch_stats": stats}


@pytest.mark.parametrize("mode", MODES)
def test_linen_layer_matches_core(mode):
    @settings(max_examples=EXAMPLES[mode])
    @given(bn_cases(stats_dtype=np.float32))
    def check(case):
        kw = case.kwargs
        y_ref, stats_ref = m2t_core.momentum_batch_norm(case.x, case.stats, **kw)
        with x64_for(case.x.dtype):
            layer, variables = layer_and_variables(case, kw["alpha"])

            def run(variables, x):
                return layer.apply(
                    variables, x, use_running_average=not kw["training"], mutable=["batch_stats"]
                )

            fn = run if mode == "eager" else jax.jit(run)
            y, updates = fn(variables, jnp.asarray(case.x))
            assert y.dtype == case.x.dtype
            assert_close(y, y_ref, atol=bn_rounding_bound(case.x, case.stats, kw))
            got = updates["batch_stats"]
            assert_close(mf.MomentumStats(got["mean"], got["var"], got["step"], got["skipped"]), stats_ref)

    check()


def test_init_does_not_commit_and_variables_are_named_like_batchnorm():
    layer = MomentumBatchNorm(total_steps=10)
    x = jax.random.normal(jax.random.key(0), (6, 3, 4)) + 2
    variables = layer.init(jax.random.key(0), x, use_running_average=False)  # training mode: no commit
    assert set(variables["params"]) == set(
        nn.BatchNorm().init(jax.random.key(0), x, use_running_average=True)["params"]
    )
    stats = variables["batch_stats"]
    assert_close(
        mf.MomentumStats(stats["mean"], stats["var"], stats["step"], stats["skipped"]), m2t_core.init_stats(4)
    )
    # Training needs a mutable batch_stats collection, as for nn.BatchNorm.
    with pytest.raises(Exception, match="batch_stats"):
        layer.apply(variables, x, use_running_average=False)
    _, updates = layer.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    assert int(updates["batch_stats"]["step"]) == 1
    _, updates = layer.apply(variables, x, use_running_average=True, mutable=["batch_stats"])
    assert int(updates["batch_stats"]["step"]) == 0


def test_alpha_follows_the_step_in_graph():
    layer = MomentumBatchNorm(num_views=1, total_steps=4, use_running_average=False)
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.normal(size=(8, 2)).astype(np.float32))
    variables = layer.init(jax.random.key(0), x0)
    apply = jax.jit(lambda v, x: layer.apply(v, x, mutable=["batch_stats"]))
    ref = m2t_core.init_stats(2)
    for _ in range(6):
        x = rng.normal(1.0, 2.0, (8, 2)).astype(np.float32)
        _, upd = apply(variables, jnp.asarray(x))
        variables = {"params": variables["params"], **upd}
        _, ref = m2t_core.momentum_batch_norm(
            x, ref, alpha=m2t_core.stats_momentum_schedule(4)(int(ref.step)), num_views=1
        )
        s = variables["batch_stats"]
        assert_close(mf.MomentumStats(s["mean"], s["var"], s["step"], s["skipped"]), ref)


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="total_steps is required"):
        MomentumBatchNorm()
    with pytest.raises(ValueError, match="num_views must be >= 1, got 0"):
        MomentumBatchNorm(num_views=0, total_steps=3)
    with pytest.raises(ValueError, match="'sample'"):
        MomentumBatchNorm(correction="sample", total_steps=3)
    with pytest.raises(ValueError, match="epsilon"):
        MomentumBatchNorm(epsilon=-1.0, total_steps=3)
    layer = MomentumBatchNorm(total_steps=3, use_running_average=False)
    variables = layer.init(jax.random.key(0), jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"num_features=3\).*\(4, 5\)"):
        layer.apply(variables, jnp.ones((4, 5)), mutable=["batch_stats"])
    with pytest.raises(ValueError, match=r"num_features=3\).*\(5, 3\).*num_views=2"):
        layer.apply(variables, jnp.ones((5, 3)), mutable=["batch_stats"])
    with pytest.raises(TypeError, match="floating"):
        layer.apply(variables, jnp.ones((4, 3), jnp.int32), mutable=["batch_stats"])


# --------------------------------------------------------------------------------------------------
# the same M2T training in Linen and in NNX

IN, FEAT, HIDDEN, PROJ, B, K = 6, 8, 16, 4, 8, 20


def norm(momentum, name):
    if momentum:
        return MomentumBatchNorm(use_running_average=False, total_steps=K, alpha_start=0.3, name=name)
    return nn.BatchNorm(use_running_average=False, use_fast_variance=False, name=name)


class LinenHead(nn.Module):
    hidden: int
    out: int
    momentum: bool

    @nn.compact
    def __call__(self, x):
        x = nn.relu(norm(self.momentum, "bn")(nn.Dense(self.hidden, name="linear1")(x)))
        return nn.Dense(self.out, name="linear2")(x)


class LinenBackbone(nn.Module):
    momentum: bool

    @nn.compact
    def __call__(self, x):
        return nn.relu(norm(self.momentum, "bn")(nn.Dense(FEAT, name="dense")(x)))


class LinenStudent(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = LinenHead(HIDDEN, PROJ, False, name="projector")(LinenBackbone(False, name="backbone")(x))
        return LinenHead(HIDDEN, PROJ, False, name="predictor")(x)


class LinenTeacher(nn.Module):
    @nn.compact
    def __call__(self, x):
        return LinenHead(HIDDEN, PROJ, True, name="projector")(LinenBackbone(True, name="backbone")(x))


def to_linen(tree):
    """NNX pure-dict naming (Sequential layers 0, 1) to the Linen modules' names (dense, bn)."""
    out = dict(tree)
    layers = out.pop("backbone")["layers"]
    out["backbone"] = {"dense": layers[0], "bn": layers[1]} if 0 in layers else {"bn": layers[1]}
    return out


def linen_train_step(tx):
    schedule = mf.teacher_momentum_schedule(K)

    @jax.jit
    def step(carry, v1, v2):
        sp, ss, tp, ts, opt, k = carry
        tp = mf.ema_update(tp, {"backbone": sp["backbone"], "projector": sp["projector"]}, schedule(k))
        z, upd = LinenTeacher().apply(
            {"params": tp, "batch_stats": ts}, jnp.concatenate([v1, v2]), mutable=["batch_stats"]
        )
        z = jax.lax.stop_gradient(z)

        def loss_fn(sp, ss):
            p1, u = LinenStudent().apply({"params": sp, "batch_stats": ss}, v1, mutable=["batch_stats"])
            p2, u = LinenStudent().apply(
                {"params": sp, "batch_stats": u["batch_stats"]}, v2, mutable=["batch_stats"]
            )
            return mf.symmetric_loss(p1, p2, z[:B], z[B:]), u["batch_stats"]

        (loss, ss), grads = jax.value_and_grad(loss_fn, has_aux=True)(sp, ss)
        updates, opt = tx.update(grads, opt, sp)
        return (optax.apply_updates(sp, updates), ss, tp, upd["batch_stats"], opt, k + 1), loss

    return step


def test_nnx_and_linen_train_identically_from_the_same_weights():
    tx = optax.sgd(0.05, momentum=0.9)
    rngs = nnx.Rngs(0)
    backbone = nnx.Sequential(
        nnx.Linear(IN, FEAT, rngs=rngs), nnx.BatchNorm(FEAT, use_fast_variance=False, rngs=rngs), nnx.relu
    )
    model = M2Teacher(
        backbone,
        feature_dim=FEAT,
        hidden_dim=HIDDEN,
        projection_dim=PROJ,
        total_steps=K,
        alpha_start=0.3,
        rngs=rngs,
    )
    optimizer = nnx.Optimizer(model.student, tx, wrt=nnx.Param)

    def snapshot():
        pure = nnx.to_pure_dict
        return (
            to_linen(pure(nnx.state(model.student, nnx.Param))),
            to_linen(pure(nnx.state(model.student, nnx.BatchStat))),
            to_linen(pure(nnx.state(model.teacher, nnx.Param))),
            to_linen(pure(nnx.state(model.teacher, nnx.BatchStat))),
        )

    sp, ss, tp, ts = snapshot()
    carry = (sp, ss, tp, ts, tx.init(sp), jnp.zeros((), jnp.int32))
    linen_step = linen_train_step(tx)
    nnx_step = make_train_step(model, optimizer)
    for k in range(4):
        key = jax.random.fold_in(jax.random.key(7), k)
        v1 = jax.random.normal(key, (B, IN)) * 2 + 0.5
        v2 = v1 * 0.7 + 0.2
        carry, linen_loss = linen_step(carry, v1, v2)
        # Same ops in the same order: the two frameworks agree to the bit, not just to rounding.
        np.testing.assert_array_equal(nnx_step(v1, v2), linen_loss)
    for ours, theirs in zip(snapshot(), carry[:4], strict=True):
        assert jax.tree.structure(ours) == jax.tree.structure(theirs)
        jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    assert int(carry[5]) == int(model.step[...]) == 4
