"""Public surface of m2t_keras: functional signatures match the core, exports, import isolation."""

import ast
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import m2t_core
import m2t_keras
from m2t_keras import ops as kops

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
FRAMEWORKS = ["tensorflow", "jax", "torch", "flax", "optax"]
PACKAGE_DIR = Path(m2t_keras.__file__).resolve().parent


@pytest.mark.parametrize("name", CORE_FUNCTIONS)
def test_functional_signature_matches_core(name):
    core = list(inspect.signature(getattr(m2t_core, name)).parameters.values())
    ours = list(inspect.signature(getattr(kops, name)).parameters.values())
    assert len(ours) >= len(core)
    for c, o in zip(core, ours[: len(core)], strict=True):
        assert (o.name, o.kind) == (c.name, c.kind)
        expected_default = -1 if c.name == "axis" and c.default is not inspect.Parameter.empty else c.default
        assert o.default == expected_default, (name, o.name, o.default, expected_default)
    extra = ours[len(core) :]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extra)


def test_exports():
    expected = {
        "CurrentValue",
        "M2Teacher",
        "MomentumBatchNormalization",
        "SymmetricRegressionLoss",
        "convert_momentum_bn",
        "ops",
        "parameter_pairs",
        "projection_head",
    }
    assert expected <= set(m2t_keras.__all__)
    assert set(CORE_FUNCTIONS) <= set(kops.__all__)
    for name in m2t_keras.__all__:
        assert getattr(m2t_keras, name).__doc__, name


def module_level(tree):
    """Statements that run on import: the module body, descending into if/try blocks only."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            pending += node.body + node.orelse + getattr(node, "finalbody", [])
            pending += [s for h in getattr(node, "handlers", []) for s in h.body]


def test_sources_import_keras_only():
    """No module of the package imports a backend framework when it is imported (DESIGN §4).

    Imports inside functions are code paths that are backend-specific by nature (e.g. JAX's 64-bit
    switch) and run only on that backend; the subprocess test below checks what importing loads.
    """
    offenders = []
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        for node in module_level(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FRAMEWORKS]
    assert offenders == []


def test_import_loads_no_framework_beyond_keras(tmp_path):
    """Importing m2t_keras loads no framework that ``import keras`` did not load already."""
    code = (
        "import json, sys; fw = json.loads(sys.argv[1]); import keras; "
        "before = sorted(m for m in fw if m in sys.modules); import m2t_keras; "
        "print(json.dumps([before, sorted(m for m in fw if m in sys.modules)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(FRAMEWORKS)],
        cwd=tmp_path,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=True,
    )
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert after == before
