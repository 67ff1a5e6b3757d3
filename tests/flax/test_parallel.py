"""Data-parallel training: per-device moments, averaged commits, one teacher on every device."""

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

from m2t_core.testing import assert_close
from m2t_flax.nnx import M2Teacher, train_step
from m2t_flax.parallel import make_parallel_train_step

SCRIPT = Path(__file__).parent / "scripts" / "data_parallel_check.py"


def test_two_devices_match_a_one_device_emulation():
    # XLA reads the device count once, at start-up: the two-device run needs its own process.
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["stats_devices"] == 2
    assert facts["stats_replicated"] is True
    assert facts["teacher_bn_step"] == 3
    assert "batch size 5" in facts["indivisible_batch_error"]
    assert "2 devices" in facts["indivisible_batch_error"]
    # Per-device moments are not the moments of the whole batch: the losses differ from a
    # one-device step on the full batch (which would be what SyncBN computes).
    assert abs(facts["losses"][0] - facts["single_device_losses"][0]) > 1e-3


def build():
    rngs = nnx.Rngs(0)
    backbone = nnx.Sequential(
        nnx.Linear(6, 8, rngs=rngs), nnx.BatchNorm(8, use_fast_variance=False, rngs=rngs)
    )
    model = M2Teacher(backbone, feature_dim=8, hidden_dim=16, projection_dim=4, total_steps=10, rngs=rngs)
    return model, nnx.Optimizer(model.student, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)


def test_one_device_equals_the_single_device_step():
    a_model, a_opt = build()
    b_model, b_opt = build()
    step = make_parallel_train_step(b_model, b_opt, devices=jax.devices()[:1])
    for k in range(2):
        x = jax.random.normal(jax.random.key(k), (4, 6)) + 1
        assert_close(step(x, 0.5 * x), train_step(a_model, a_opt, x, 0.5 * x))
    assert_close(nnx.to_pure_dict(nnx.state(b_model)), nnx.to_pure_dict(nnx.state(a_model)))
    assert_close(nnx.to_pure_dict(nnx.state(b_opt)), nnx.to_pure_dict(nnx.state(a_opt)))


def test_parallel_step_errors():
    model, optimizer = build()
    with pytest.raises(ValueError, match="at least one device"):
        make_parallel_train_step(model, optimizer, devices=[])
    whole = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    with pytest.raises(ValueError, match=r"nnx.Optimizer\(model.student"):
        make_parallel_train_step(model, whole)
    step = make_parallel_train_step(model, optimizer, devices=jax.devices()[:1])
    assert np.isfinite(float(step(np.ones((2, 6), np.float32), np.zeros((2, 6), np.float32))))
