"""The data modules import NumPy alone; scikit-learn and Pillow load lazily, with a clear ImportError."""

import json
import subprocess
import sys

import pytest

from m2t_core import datasets

HEAVY = ["sklearn", "scipy", "PIL", "torch", "tensorflow", "keras", "jax", "flax", "optax"]

SCRIPT = """
import json, sys
import numpy as np
import m2t_core.datasets, m2t_core.augment, m2t_core.evaluation
from m2t_core.augment import two_views
from m2t_core.datasets import BatchIterator
from m2t_core.evaluation import knn_accuracy, linear_probe
x = np.random.default_rng(0).random((8, 6, 6, 3), dtype=np.float32)
y = np.arange(8) % 2
batch = next(BatchIterator(x, y, batch_size=4).epoch(0))
v1, v2 = two_views(batch.images, batch.rng)
f = x.reshape(8, -1)
knn_accuracy(f, y, f, y, k=3)
linear_probe(f, y, f, y)
print(json.dumps(sorted(m.split(".")[0] for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[1]))))
"""


def test_data_modules_import_numpy_only(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(HEAVY)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize(
    "blocked, call, package",
    [
        ("sklearn", lambda tmp: datasets.load_digits(), "scikit-learn"),
        ("PIL", lambda tmp: datasets.load_image_folder(tmp), "pillow"),
    ],
)
def test_missing_optional_dependency_is_named(monkeypatch, tmp_path, blocked, call, package):
    # A None entry in sys.modules makes `import name` raise ImportError, as if it were not installed.
    for name in [m for m in sys.modules if m == blocked or m.startswith(blocked + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, blocked, None)
    with pytest.raises(ImportError, match=f"pip install {package}") as err:
        call(tmp_path)
    assert "\n" not in str(err.value)
