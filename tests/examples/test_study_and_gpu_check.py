"""The small-batch study in a tiny configuration, and the GPU check's no-CUDA path."""

import json

import numpy as np
import pytest
from example_runner import describe, run_example
from small_batch_study import format_table, parse_args, teacher_momentum_for

TINY_STUDY = [
    "--epochs",
    "1",
    "--batch-sizes",
    "128",
    "256",
    "--seeds",
    "0",
    "1",
    "--width",
    "4",
    "--hidden-dim",
    "16",
    "--projection-dim",
    "8",
    "--extra=--threads 1 --knn-k 5",
]


def test_study_writes_table_json_and_plot_and_reuses_finished_runs(tmp_path):
    out = tmp_path / "study"
    proc = run_example("small_batch_study.py", *TINY_STUDY, "--out", str(out), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, describe(proc)
    results = json.loads((out / "results.json").read_text())["runs"]
    assert len(results) == 3 * 2 * 2  # norms x batch sizes x seeds
    assert {(r["norm"], r["batch_size"], r["seed"]) for r in results} == {
        (n, b, s) for n in ("batch", "momentum", "eman") for b in (128, 256) for s in (0, 1)
    }
    assert all(0.0 < r["knn"] <= 1.0 and 0.0 < r["probe"] <= 1.0 for r in results)
    # Each run is a real example run with the study's settings.
    metrics = json.loads((out / "momentum-b128-s1" / "metrics.json").read_text())
    assert metrics["settings"]["teacher_norm"] == "momentum"
    assert metrics["settings"]["lr"] == pytest.approx(0.2 * 128 / 256)
    assert metrics["settings"]["base_momentum"] == pytest.approx(1 - 0.01 * 2)
    table = (out / "results.md").read_text()
    assert "| momentum stats (M2T) | 128 |" in table
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 1 + 6  # header, untrained reference, 3 norms x 2 batch sizes
    assert sum(row.count(" ± ") for row in rows) == 2 * 6 + 1  # kNN and probe per row, untrained kNN
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"
    assert "| batch stats (BYOL) | 256 |" in proc.stdout

    again = run_example("small_batch_study.py", *TINY_STUDY, "--out", str(out), cwd=tmp_path, timeout=600)
    assert again.returncode == 0, describe(again)
    assert again.stdout.count("(reused)") == 12
    assert (out / "results.md").read_text() == table


def test_study_table_is_mean_and_sample_std_over_seeds():
    args = parse_args(["--batch-sizes", "16", "--norms", "momentum", "--seeds", "0", "1", "2"])
    runs = [
        {
            "norm": "momentum",
            "batch_size": 16,
            "seed": s,
            "knn_before": 0.5,
            "knn": k,
            "probe": p,
            "seconds": 1.0,
        }
        for s, k, p in ((0, 0.90, 0.80), (1, 0.92, 0.82), (2, 0.94, 0.84))
    ]
    table = format_table(runs, args)
    knn_std = 100 * np.std([0.90, 0.92, 0.94], ddof=1)
    assert f"| momentum stats (M2T) | 16 | 92.0 ± {knn_std:.1f} | 82.0 ± {knn_std:.1f} | 3 |" in table
    assert "| untrained network (reference) | — | 50.0 ± 0.0 | — | 3 |" in table


def test_teacher_momentum_spans_the_same_images_at_every_batch_size():
    assert teacher_momentum_for(64, 0.99) == pytest.approx(0.99)
    assert teacher_momentum_for(256, 0.99) == pytest.approx(0.96)
    assert teacher_momentum_for(16, 0.99) == pytest.approx(0.9975)
    assert teacher_momentum_for(10_000, 0.99) == 0.0


def test_gpu_check_without_cuda_exits_non_zero_with_a_clear_message(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this path is tested on every machine.
    proc = run_example("gpu_check.py", "--out", str(tmp_path), cwd=tmp_path, CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("gpu_check.py: error: no CUDA GPU found (")
    assert "run it on a machine with an NVIDIA GPU" in lines[0]
    assert proc.stdout == ""
    assert not (tmp_path / "synthetic32.npz").exists()  # nothing was prepared or run


def test_gpu_check_synthetic_data_loads_as_a_cifar_sized_data_set(tmp_path):
    from gpu_check import synthetic_npz

    from m2t_core.datasets import load_data

    data = load_data(synthetic_npz(tmp_path / "s.npz", 300, test=20))
    assert data.image_shape == (32, 32, 3)
    assert len(data.train_labels) == 300
    assert len(data.test_labels) == 20
