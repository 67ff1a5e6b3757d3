"""Run by test_parallel.py with two host CPU devices: the data-parallel step vs a one-device emulation.

The emulation runs each device's share of the batch on its own copy of the model (so each copy
normalises with its own batch moments), averages gradients and floating statistics and takes the
maximum of the counters — by hand, with no collective — then applies one optimizer step. Exits
non-zero (AssertionError) on any mismatch; prints one JSON line of facts on success.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from m2t_core.testing import assert_close
from m2t_flax.nnx import M2Teacher, student_loss, train_step
from m2t_flax.parallel import make_parallel_train_step

IN, FEAT, B, DEVICES, STEPS = 6, 8, 8, 2, 3


def build():
    rngs = nnx.Rngs(0)
    backbone = nnx.Sequential(
        nnx.Linear(IN, FEAT, rngs=rngs), nnx.BatchNorm(FEAT, use_fast_variance=False, rngs=rngs), nnx.relu
    )
    model = M2Teacher(
        backbone,
        feature_dim=FEAT,
        hidden_dim=16,
        projection_dim=4,
        total_steps=10,
        alpha_start=0.2,
        rngs=rngs,
    )
    # SGD, not Adam: Adam scales the rounding-noise gradients of biases that BatchNorm cancels up to
    # the learning rate, which would turn reduction-order rounding into visible differences.
    return model, nnx.Optimizer(model.student, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)


def views(k):
    key = jax.random.fold_in(jax.random.key(3), k)
    v1 = jax.random.normal(key, (B, IN)) * 2 + 0.5
    # Give each device's share its own offset, so per-device and global moments really differ.
    v1 = v1 + jnp.repeat(jnp.arange(DEVICES, dtype=v1.dtype), B // DEVICES)[:, None]
    return v1, v1 * 0.7 + 0.1


@nnx.jit
def local_forward(model, v1, v2):
    z1, z2 = model.targets(v1, v2)
    return nnx.value_and_grad(student_loss)(model.student, v1, v2, z1, z2)


def emulated_step(model, optimizer, v1, v2):
    model.update_teacher(model.momentum())
    share = B // DEVICES
    losses, grads, stats = [], [], []
    for d in range(DEVICES):
        replica = nnx.clone(model)
        sl = slice(d * share, (d + 1) * share)
        loss, g = local_forward(replica, v1[sl], v2[sl])
        losses.append(loss)
        grads.append(g)
        stats.append(nnx.state(replica, nnx.BatchStat))

    def combine(*leaves):
        stacked = jnp.stack(leaves)
        return stacked.mean(0) if jnp.issubdtype(stacked.dtype, jnp.floating) else stacked.max(0)

    nnx.update(model, jax.tree.map(combine, *stats))
    optimizer.update(model.student, jax.tree.map(lambda *g: jnp.stack(g).mean(0), *grads))
    model.step[...] += 1
    return jnp.stack(losses).mean()


def main():
    assert len(jax.devices()) == DEVICES, jax.devices()
    par_model, par_opt = build()
    emu_model, emu_opt = build()
    one_model, one_opt = build()
    step = make_parallel_train_step(par_model, par_opt)
    emulate = nnx.jit(emulated_step)
    facts = {"losses": [], "single_device_losses": []}
    for k in range(STEPS):
        v1, v2 = views(k)
        loss = step(v1, v2)
        assert_close(loss, emulate(emu_model, emu_opt, v1, v2), err_msg=f"loss at step {k}")
        facts["losses"].append(float(loss))
        facts["single_device_losses"].append(float(train_step(one_model, one_opt, v1, v2)))
    pure = nnx.to_pure_dict
    assert_close(pure(nnx.state(par_model)), pure(nnx.state(emu_model)), err_msg="model")
    assert_close(pure(nnx.state(par_opt)), pure(nnx.state(emu_opt)), err_msg="optimizer")
    # Every device holds the same teacher: the replicated state is one array per leaf on all devices.
    leaf = par_model.teacher.projector.bn.mean[...]
    facts["stats_devices"] = len(leaf.sharding.device_set)
    facts["stats_replicated"] = bool(leaf.sharding.is_fully_replicated)
    facts["teacher_bn_step"] = int(par_model.teacher.projector.bn.step[...])
    facts["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    try:
        step(jnp.ones((5, IN)), jnp.ones((5, IN)))
    except ValueError as err:
        facts["indivisible_batch_error"] = str(err)
    print(json.dumps(facts))


if __name__ == "__main__":
    np.set_printoptions(precision=6)
    main()
