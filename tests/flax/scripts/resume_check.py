"""Run by test_checkpoint.py in a fresh process with one XLA CPU thread: resuming is bit-identical.

N steps uninterrupted vs k steps, save, restore into freshly built objects (other initial weights),
N − k steps: every leaf of the model and the optimizer, and every loss, must be equal to the bit.
Exits non-zero (AssertionError) on any difference; prints one JSON line of facts on success.
"""

import json
import sys

import jax
import numpy as np
import optax
from flax import nnx

from m2t_flax.checkpoint import restore_checkpoint, save_checkpoint
from m2t_flax.nnx import M2Teacher, make_train_step

IN, FEAT, B, N, K = 6, 8, 8, 6, 3


def build(seed):
    rngs = nnx.Rngs(seed)
    backbone = nnx.Sequential(
        nnx.Linear(IN, FEAT, rngs=rngs), nnx.BatchNorm(FEAT, use_fast_variance=False, rngs=rngs), nnx.relu
    )
    model = M2Teacher(
        backbone, feature_dim=FEAT, hidden_dim=16, projection_dim=4, total_steps=N, alpha_start=0.1, rngs=rngs
    )
    return model, nnx.Optimizer(model.student, optax.adamw(1e-2), wrt=nnx.Param)


def views(k):
    x = jax.random.normal(jax.random.fold_in(jax.random.key(5), k), (B, IN)) * 2 + 0.5
    return x, x * 0.7 + 0.1


def leaves(model, optimizer):
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state((model, optimizer))))[0]
    return {jax.tree_util.keystr(path): np.asarray(value) for path, value in flat}


def main(directory):
    straight_model, straight_optimizer = build(0)
    step = make_train_step(straight_model, straight_optimizer)
    straight = [np.asarray(step(*views(k))) for k in range(N)]

    model, optimizer = build(0)
    step = make_train_step(model, optimizer)
    resumed = [np.asarray(step(*views(k))) for k in range(K)]
    save_checkpoint(f"{directory}/step_{K}", model, optimizer)
    fresh_model, fresh_optimizer = build(1)  # other weights: everything must come from the checkpoint
    restore_checkpoint(f"{directory}/step_{K}", fresh_model, fresh_optimizer)
    assert int(fresh_model.step[...]) == K
    assert int(fresh_optimizer.step[...]) == K
    fresh_step = make_train_step(fresh_model, fresh_optimizer)
    resumed += [np.asarray(fresh_step(*views(k))) for k in range(K, N)]

    np.testing.assert_array_equal(np.asarray(resumed), np.asarray(straight))
    ours, theirs = leaves(fresh_model, fresh_optimizer), leaves(straight_model, straight_optimizer)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype, key
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    print(json.dumps({"leaves": len(theirs), "losses": [float(v) for v in straight]}))


if __name__ == "__main__":
    main(sys.argv[1])
