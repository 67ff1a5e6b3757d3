"""m2t_core imports no framework, and nothing is importable as ``adapters`` (DESIGN §4)."""

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

FRAMEWORKS = ["torch", "tensorflow", "keras", "jax", "flax", "optax"]

SCRIPT = """
import json, sys
import numpy as np
import m2t_core, m2t_core.testing
from m2t_core import *
x = np.ones((4, 3), np.float32)
s = init_stats(3)
momentum_batch_norm(x, s, alpha=0.5)
view_moments(x, num_views=2, axis=1)
ema_update({"a": x}, {"a": x}, 0.9)
cosine_schedule(0.0, 1.0, 10)(3)
teacher_momentum_schedule(10)(3)
stats_momentum_schedule(10)(3)
normalize(x)
regression_loss(x, x)
symmetric_loss(x, x, x, x)
print(json.dumps(sorted(set(sys.modules) & set(json.loads(sys.argv[1])))))
"""


def test_core_imports_no_framework(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(FRAMEWORKS)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_nothing_importable_as_adapters(tmp_path):
    # From a neutral directory: whatever `adapters` resolves to (if anything) is not ours.
    code = (
        "import importlib.util, json; s = importlib.util.find_spec('adapters'); "
        "print(json.dumps(None if s is None else [str(p) for p in (s.submodule_search_locations or [s.origin])]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    locations = json.loads(out.stdout)
    root = Path(__file__).resolve().parents[2]
    assert not any(Path(p).resolve().is_relative_to(root) for p in locations or [])
    dists = list(metadata.distributions(name="momentum2-teacher"))
    assert dists, "momentum2-teacher is not installed"
    for dist in dists:
        assert "adapters" not in (dist.read_text("top_level.txt") or "").split()
        # An installed wheel's RECORD (not a source tree's egg-info SOURCES.txt) lists what it put
        # on sys.path: nothing under adapters/.
        if dist.read_text("RECORD") is not None:
            assert not [str(f) for f in dist.files or [] if str(f).split("/")[0] == "adapters"]
