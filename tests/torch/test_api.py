"""Public surface of m2t_torch: the functional API mirrors the core's signatures, exports, isolation."""

import inspect
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import m2t_core
import m2t_torch
from m2t_torch import functional

CORE_FUNCTIONS = [
    "init_stats",
    "view_moments",
    "momentum_batch_norm",
    "ema_update",
    "cosine_schedule",
    "teacher_momentum_schedule",
    "stats_momentum_schedule",
    "normalize",
    "regression_loss",
    "symmetric_loss",
]
# Functions whose `axis` is a channel axis: torch's is 1 (the core's default is -1).
CHANNEL_AXIS_FUNCTIONS = {"momentum_batch_norm"}


def _same_default(name, param, core_default, torch_default):
    if name == "axis":
        return True  # checked separately
    if core_default is inspect.Parameter.empty or torch_default is inspect.Parameter.empty:
        return core_default is torch_default
    if isinstance(core_default, type) and issubclass(core_default, np.generic):
        # dtype defaults: the core's NumPy float32 and torch's float32 are the same choice
        return (
            isinstance(torch_default, torch.dtype)
            and str(torch_default) == f"torch.{np.dtype(core_default).name}"
        )
    return core_default == torch_default and type(core_default) is type(torch_default)


@pytest.mark.parametrize("name", CORE_FUNCTIONS)
def test_functional_signature_starts_with_the_core_signature(name):
    core_params = list(inspect.signature(getattr(m2t_core, name)).parameters.values())
    torch_params = list(inspect.signature(getattr(functional, name)).parameters.values())
    assert len(torch_params) >= len(core_params)
    for c, t in zip(core_params, torch_params, strict=False):
        assert (t.name, t.kind) == (c.name, c.kind), f"{name}: {t} vs core {c}"
        assert _same_default(c.name, t, c.default, t.default), (
            f"{name}.{c.name}: {t.default!r} vs {c.default!r}"
        )
        if c.name == "axis":
            expected = 1 if name in CHANNEL_AXIS_FUNCTIONS else c.default
            assert t.default == expected, f"{name}.axis default {t.default!r}, expected {expected!r}"
    for extra in torch_params[len(core_params) :]:
        assert extra.kind is inspect.Parameter.KEYWORD_ONLY, (
            f"{name}: extra parameter {extra} must be keyword-only"
        )


def test_signature_check_can_fail():
    # The comparison above must notice a reordered or renamed parameter.
    def bad(x, stats, *, num_views=2, alpha=0.5, axis=1):
        return x

    core = list(inspect.signature(m2t_core.momentum_batch_norm).parameters.values())
    mine = list(inspect.signature(bad).parameters.values())
    assert any((t.name, t.kind) != (c.name, c.kind) for c, t in zip(core, mine, strict=False))


def test_exports_are_documented():
    for name in m2t_torch.__all__:
        obj = getattr(m2t_torch, name)
        assert obj.__doc__, name
        assert obj.__doc__.strip(), name
    for name in functional.__all__:
        assert getattr(functional, name).__doc__, name
    assert set(CORE_FUNCTIONS) <= set(functional.__all__)


def test_layer_is_not_a_torch_batchnorm():
    layer = m2t_torch.MomentumBatchNorm2d(4, total_steps=10)
    assert not isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), layer)
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted[1] is layer


def test_layer_constructor_signature():
    params = inspect.signature(m2t_torch.MomentumBatchNorm).parameters
    assert list(params)[:3] == ["num_features", "eps", "affine"]
    for name, default in [
        ("num_views", 2),
        ("alpha_start", 0.0),
        ("alpha_end", 1.0),
        ("total_steps", None),
        ("correction", "biased"),
        ("sync_stats", None),
        ("device", None),
        ("dtype", None),
    ]:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default == default, name


def test_teacher_constructor_signature():
    params = inspect.signature(m2t_torch.M2Teacher).parameters
    assert next(iter(params)) == "backbone"
    expected = {
        "feature_dim": None,
        "hidden_dim": 4096,
        "projection_dim": 256,
        "total_steps": None,
        "base_momentum": 0.99,
        "final_momentum": 1.0,
        "alpha_start": 0.0,
        "alpha_end": 1.0,
        "correction": "biased",
        "teacher_norm": "momentum",
        "sync_stats": None,
    }
    for name, default in expected.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default == default, name


def test_import_loads_no_other_framework(tmp_path):
    code = (
        "import json, sys, torch, m2t_torch, m2t_torch.functional; "
        "print(json.dumps(sorted(m for m in ('jax', 'flax', 'keras', 'tensorflow', 'optax') if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
