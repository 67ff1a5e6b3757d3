"""The benchmark script runs end to end (``--quick``) and prints both of its tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_flax.py"


def test_bench_flax_quick_prints_both_tables() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--repeat", "2", "--cnn", "4x8x4"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    overhead = [line for line in lines if line.startswith(("| MLP", "| CNN"))]
    assert len(overhead) == 3, lines  # MLP, CNN and the --cnn shape
    assert overhead[2].startswith("| CNN 8×8×3, width 4,"), overhead[2]
    for row in overhead:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 8, cells
        assert all(float(c.rstrip("×")) > 0 for c in cells[3:7]), cells  # the four ratios
    modes = [line for line in lines if line.startswith("| nnx.")]
    assert len(modes) == 4, lines


def test_bench_flax_rejects_a_malformed_cnn_shape() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--cnn", "16x32"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "expected WIDTHxSIDExBATCH" in result.stderr
