"""The benchmark script runs end to end and prints every comparison with a ratio and a verdict."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_torch.py"


def test_bench_torch_prints_all_three_comparisons() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--repeats", "1", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| (")]
    assert {row.split("|")[1].strip() for row in rows} == {"(a) EMA", "(b) BN", "(c) step"}
    verdicts = [row for row in rows if re.search(r"<= [\d.]+x: (met|MISSED)", row)]
    assert len(verdicts) == 3, rows
    for row in rows:
        ratio = float(row.split("|")[4].strip().rstrip("x"))
        assert ratio > 0
