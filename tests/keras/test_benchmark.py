"""The benchmark script runs end to end on the current Keras backend and prints its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_keras.py"


def test_bench_keras_prints_the_backend_row() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--backends",
            BACKEND,
            "--steps",
            "1",
            "--repeats",
            "1",
            "--batch",
            "4",
            "--size",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(f"| {BACKEND} ")]
    assert len(rows) == 1, result.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert float(cells[1]) > 0
    assert float(cells[2]) > 0
    assert float(cells[3].rstrip("x")) > 0
