"""Each adapter imports only its own framework (DESIGN §4), checked where every framework is installed."""

import json
import os
import subprocess
import sys

import pytest

FRAMEWORKS = ["torch", "tensorflow", "keras", "jax", "flax", "optax", "orbax"]

# Each adapter's own framework stack. `import keras` itself also loads its configured backend
# (TensorFlow here) and, when installed, JAX for some utilities: what the framework's own import loads
# is allowed too, and measured rather than listed.
OWN = {
    "m2t_torch": {"torch"},
    "m2t_keras": {"keras"},
    "m2t_flax": {"flax", "jax", "optax", "orbax"},
}
ENTRY = {"m2t_torch": "torch", "m2t_keras": "keras", "m2t_flax": "flax"}


def _loaded_frameworks(module: str, cwd) -> set[str]:
    code = (
        f"import json, sys, {module}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r}))))"
    )
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("package", sorted(OWN))
def test_adapter_loads_only_its_framework(package, tmp_path):
    loaded = _loaded_frameworks(package, tmp_path)
    allowed = OWN[package] | _loaded_frameworks(ENTRY[package], tmp_path)
    assert ENTRY[package] in loaded
    assert loaded <= allowed, f"{package} loads {sorted(loaded - allowed)}, which its framework does not need"
