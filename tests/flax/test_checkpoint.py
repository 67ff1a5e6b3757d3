"""Checkpoints with orbax-checkpoint: the whole state round-trips and a resumed run is bit-identical."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from m2t_flax.checkpoint import restore_checkpoint, save_checkpoint
from m2t_flax.nnx import M2Teacher, train_step

SCRIPT = Path(__file__).parent / "scripts" / "resume_check.py"


def test_resume_is_bit_identical(tmp_path):
    # Bits are compared, so the run gets a fresh process with one XLA CPU thread (DESIGN §5).
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["leaves"] > 40  # student, teacher, statistics, counters and Adam's moments
    assert len(set(facts["losses"])) == len(facts["losses"])  # the run really trained


def build(seed):
    rngs = nnx.Rngs(seed)
    backbone = nnx.Sequential(nnx.Linear(4, 6, rngs=rngs), nnx.BatchNorm(6, rngs=rngs), nnx.relu)
    model = M2Teacher(backbone, feature_dim=6, hidden_dim=8, projection_dim=4, total_steps=5, rngs=rngs)
    return model, nnx.Optimizer(model.student, optax.adam(1e-2), wrt=nnx.Param)


def test_round_trip_restores_every_leaf_and_model_only_restore(tmp_path):
    model, optimizer = build(0)
    x = jax.random.normal(jax.random.key(0), (4, 4))
    train_step(model, optimizer, x, x + 1)
    path = save_checkpoint(tmp_path / "ckpt", model, optimizer)
    assert path.is_absolute()

    other_model, other_optimizer = build(1)
    restore_checkpoint(path, other_model, other_optimizer)
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.to_pure_dict(nnx.state((other_model, other_optimizer))),
        nnx.to_pure_dict(nnx.state((model, optimizer))),
    )
    # For evaluation, the model alone can be restored from a full checkpoint.
    eval_model, _ = build(2)
    restore_checkpoint(path, eval_model)
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.to_pure_dict(nnx.state(eval_model)),
        nnx.to_pure_dict(nnx.state(model)),
    )


def test_checkpoint_errors(tmp_path):
    model, optimizer = build(0)
    path = save_checkpoint(tmp_path / "ckpt", model)
    with pytest.raises(ValueError, match="already exists"):
        save_checkpoint(path, model, optimizer)
    save_checkpoint(path, model, optimizer, force=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        restore_checkpoint(tmp_path / "missing", model)
    model_only = save_checkpoint(tmp_path / "model_only", model)
    with pytest.raises(ValueError, match="no optimizer state"):
        restore_checkpoint(model_only, model, optimizer)
    no_bn = M2Teacher(
        nnx.Sequential(nnx.Linear(4, 6, rngs=nnx.Rngs(0)), nnx.relu),
        feature_dim=6,
        hidden_dim=8,
        projection_dim=4,
        total_steps=5,
        rngs=nnx.Rngs(0),
    )
    with pytest.raises(ValueError, match=r"layers.1.mean is in the checkpoint but not in the objects"):
        restore_checkpoint(path, no_bn)
    wider = M2Teacher(
        nnx.Sequential(nnx.Linear(4, 6, rngs=nnx.Rngs(0)), nnx.BatchNorm(6, rngs=nnx.Rngs(0)), nnx.relu),
        feature_dim=6,
        hidden_dim=12,
        projection_dim=4,
        total_steps=5,
        rngs=nnx.Rngs(0),
    )
    with pytest.raises(
        ValueError,
        match=r"does not match the objects.*predictor.bn.bias has shape \(12,\) but the checkpoint stores \(8,\)",
    ):
        restore_checkpoint(path, wider)
