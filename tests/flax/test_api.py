"""The package surface: what importing it loads, and that every public name is documented."""

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

MODULES = [
    "m2t_flax",
    "m2t_flax.functional",
    "m2t_flax.nnx",
    "m2t_flax.linen",
    "m2t_flax.parallel",
    "m2t_flax.checkpoint",
]
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "flax.md"

SCRIPT = """
import json, sys
import m2t_flax, m2t_flax.nnx, m2t_flax.linen, m2t_flax.functional
loaded_before = sorted(m for m in ("orbax.checkpoint",) if m in sys.modules)
m2t_flax.checkpoint  # the lazy submodule loads on first use
print(json.dumps({
    "frameworks": sorted(m for m in ("torch", "tensorflow", "keras") if m in sys.modules),
    "orbax_before": loaded_before,
    "orbax_after": "orbax.checkpoint" in sys.modules,
}))
"""


def test_import_loads_jax_and_flax_only(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts == {"frameworks": [], "orbax_before": [], "orbax_after": True}


def public_objects():
    for name in MODULES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if inspect.ismodule(obj):
                continue
            yield f"{name}.{attr}", attr, obj


PUBLIC = list(public_objects())
IDS = [q for q, _, _ in PUBLIC]


@pytest.mark.parametrize(("qualname", "attr", "obj"), PUBLIC, ids=IDS)
def test_public_names_have_google_style_docstrings(qualname, attr, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), qualname
    if inspect.isclass(obj):
        assert "Args:" in doc or "Attributes:" in doc, qualname
    elif inspect.isfunction(obj) and inspect.signature(obj).parameters:
        assert "Args:" in doc, qualname


@pytest.mark.parametrize(("qualname", "attr", "obj"), PUBLIC, ids=IDS)
def test_user_guide_documents_every_public_name(qualname, attr, obj):
    text = GUIDE.read_text(encoding="utf-8")
    assert f"`{attr}`" in text or f"`{attr}(" in text, qualname


def test_user_guide_ends_with_the_readme_section():
    text = GUIDE.read_text(encoding="utf-8")
    section = text[text.index("\n## README section") :]
    assert "```python" in section
    assert "python benchmarks/bench_flax.py" in section
    assert "|" in section  # the measured table


def test_readme_example_runs_as_written(tmp_path):
    text = GUIDE.read_text(encoding="utf-8")
    section = text[text.index("\n## README section") :]
    code = section[section.index("```python\n") + len("```python\n") :]
    code = code[: code.index("```")]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-4000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("loss ")
    assert lines[0].endswith("after 3 steps")
    assert lines[1] == "(32, 128)"
