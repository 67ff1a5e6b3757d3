"""Same weights, same batches, same trajectory in all six backends — and the m2t-equivalence command.

One run of the command over every backend (the integration environment installs all of them) is
shared by the tests below; they check its verdict, re-examine the kept worker results themselves, and
prove that the comparison can fail.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

from m2t_core import equivalence as eq
from m2t_core.checkpoint import load_checkpoint

COMMAND = [sys.executable, "-m", "m2t_core.equivalence"]


def run_command(*args, timeout=1500):
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("equivalence")
    done = run_command("--keep", str(folder))
    results = {}
    for name in eq.BACKENDS:
        path = folder / f"{name}.npz"
        if path.is_file():
            with np.load(path) as data:
                results[name] = {k: data[k] for k in data.files}
    return done, folder, results


def test_every_backend_is_installed_here():
    assert eq.available_backends() == list(eq.BACKENDS)


def test_the_command_passes_and_prints_the_table(report):
    done, _, _ = report
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("m2t-equivalence: reference model")
    assert "8 steps" in lines[0]
    assert "float64" in lines[0]
    for i, name in enumerate(eq.BACKENDS, 1):
        assert any(line.startswith(f"[{i}/6] {name}") and " done in " in line for line in lines), name
        assert any(line.startswith(name + " ") for line in lines), f"no table row for {name}"
    assert lines[-1] == "PASS: 6 backends agree within 1e-05"


def test_trajectories_agree_within_the_tolerance(report):
    _, folder, results = report
    assert sorted(results) == sorted(eq.BACKENDS)
    inputs = eq.read_inputs(folder)
    comparison = eq.compare(results, eq.numpy_reference(inputs), steps=8, reference="torch")
    assert comparison.passed, eq.format_report(comparison)
    for name, row in comparison.rows.items():
        assert set(row) >= {"z_step1_f64", "loss_step1_f64", "stats_step1_f64"}
        if name != "torch":
            assert max(row.values()) <= eq.DEFAULT_TOLERANCE, (name, row)


def test_the_trajectory_is_not_trivial(report):
    _, folder, results = report
    initial = load_checkpoint(folder / "initial.safetensors").arrays
    for name, result in results.items():
        loss = result["loss"]
        assert loss.shape == (8,), name
        assert np.all(np.isfinite(loss)), name
        assert np.ptp(loss) > 0.1, name
        assert result["z_step1"].shape == (16, 32), name
        kernel = "student.backbone.stage2.conv1.kernel"
        moved = np.abs(result[f"final/{kernel}"] - initial[kernel]).max() / np.abs(initial[kernel]).max()
        assert moved > 1e-3, (name, moved)  # the optimizer really trained the student
        teacher = result["final/teacher.backbone.stage2.conv1.kernel"]
        assert not np.array_equal(teacher, initial[kernel])  # moved by the EMA ...
        assert not np.array_equal(teacher, result[f"final/{kernel}"])  # ... not a copy of the student
        stats = result["stats/teacher.projector.bn.mean"]
        assert stats.shape == (8, 64), name
        assert np.all(np.ptp(stats, axis=0) > 0), name
        assert int(result["final/step"]) == 8, name
        assert int(result["final/teacher.projector.bn.step"]) == 8, name


def test_a_perturbed_result_fails_and_is_named(report):
    _, folder, results = report
    perturbed = {name: dict(result) for name, result in results.items()}
    key = "final/student.backbone.stage1.conv2.kernel"
    perturbed["flax-linen"][key] = perturbed["flax-linen"][key] * (1 + 1e-4)
    comparison = eq.compare(perturbed, eq.numpy_reference(eq.read_inputs(folder)), steps=8)
    assert not comparison.passed
    text = eq.format_report(comparison)
    assert (
        "flax-linen: student_params differs by 1.0e-04 (at final/student.backbone.stage1.conv2.kernel)"
        in text
    )
    assert text.endswith("FAIL: 1 problem(s)")
    assert comparison.pairs["student_params"][0] == pytest.approx(1e-4, rel=1e-3)


def test_wrong_counters_and_failed_workers_fail(report):
    _, folder, results = report
    reference = eq.numpy_reference(eq.read_inputs(folder))
    skipped = {"torch": dict(results["torch"], **{"final/teacher.backbone.stem.bn.skipped": np.asarray(1)})}
    assert not eq.compare(skipped, reference, steps=8).passed
    broken = {"torch": results["torch"], "keras-jax": "exit status 1\nTraceback: boom"}
    comparison = eq.compare(broken, reference, steps=8)
    assert not comparison.passed
    text = eq.format_report(comparison)
    assert "keras-jax  FAILED" in text
    assert "keras-jax: worker failed:\nexit status 1" in text


def test_a_tiny_tolerance_makes_the_command_fail():
    # float64 rounding (~1e-15) against the NumPy forward is far above 1e-300.
    done = run_command("--backends", "torch", "--steps", "1", "--tolerance", "1e-300")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL:" in done.stdout.splitlines()[-1]
    assert "torch: z_step1_f64 differs by" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backends", "torch,tensorflow"], "unknown backends ['tensorflow']"),
        (["--backends", "torch", "--reference", "flax-nnx"], "--reference 'flax-nnx' is not among"),
        (["--steps", "0"], "steps must be a positive int"),
    ],
)
def test_usage_errors_exit_with_status_2(args, message):
    done = run_command(*args, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr


def test_the_console_script_is_declared():
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("m2t-equivalence") == "m2t_core.equivalence:main"


def test_relative_difference():
    assert eq.relative_difference(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert eq.relative_difference(np.array([1.0, 2.5]), np.array([1.0, 2.0])) == pytest.approx(0.25)
    assert eq.relative_difference(np.zeros(3), np.zeros(3)) == 0.0
    assert eq.relative_difference(np.array([np.nan]), np.array([1.0])) == np.inf
    assert eq.relative_difference(np.zeros(2), np.zeros(3)) == np.inf
