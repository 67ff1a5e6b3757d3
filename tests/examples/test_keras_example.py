"""examples/keras_m2t.py (model.fit) end to end on digits with tiny settings, in subprocesses."""

import json
import zipfile

import numpy as np
import pytest
from example_runner import STEPS_PER_EPOCH, TINY, describe, run_example
from run_files import read_json

SCRIPT = "keras_m2t.py"


def _weights(path):
    """Every array in the checkpoint's weights file, by HDF5 path (model and optimizer)."""
    import h5py

    arrays = {}
    with zipfile.ZipFile(path) as archive, h5py.File(archive.open("model.weights.h5"), "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if hasattr(obj, "shape") else None)
    return arrays


def _meta(path):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("example_meta.json"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras_full")
    proc = run_example(SCRIPT, *TINY, "--out", str(out), cwd=out)
    assert proc.returncode == 0, describe(proc)
    return out, proc


def test_end_to_end_writes_checkpoint_metrics_plot_and_summary(full_run):
    out, proc = full_run
    metrics = read_json(out / "metrics.json")
    assert metrics["status"] == "complete"
    history = metrics["history"]
    assert [r["epoch"] for r in history["epochs"]] == [1, 2]
    assert all(0.0 <= r["loss"] <= 8.0 for r in history["epochs"])
    assert [r["epoch"] for r in history["knn"]] == [0, 1, 2]
    assert 0.0 < history["probe"]["accuracy"] <= 1.0
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert _meta(out / "checkpoint.keras")["position"]["epoch"] == 2
    weights = _weights(out / "checkpoint.keras")
    assert any("optimizer" in name for name in weights)  # the optimizer state travels too
    assert "-> after 2 epochs" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == f"plot: {out / 'curves.png'}"


def test_resume_mid_epoch_equals_the_uninterrupted_run(full_run, tmp_path):
    ref_out, _ = full_run
    out = tmp_path / "pieces"
    args = [*TINY, "--out", str(out)]
    first = run_example(SCRIPT, *args, "--max-steps", str(STEPS_PER_EPOCH + 3), cwd=tmp_path)
    assert first.returncode == 0, describe(first)
    position = _meta(out / "checkpoint.keras")["position"]
    assert (position["epoch"], position["step"], position["loss_count"]) == (1, 3, 3)
    second = run_example(SCRIPT, *args, "--resume", cwd=tmp_path)
    assert second.returncode == 0, describe(second)
    assert read_json(out / "metrics.json")["history"] == read_json(ref_out / "metrics.json")["history"]
    ref, got = _weights(ref_out / "checkpoint.keras"), _weights(out / "checkpoint.keras")
    assert ref.keys() == got.keys()
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    bad = STEPS_PER_EPOCH + 2
    proc = run_example(SCRIPT, *TINY, "--out", str(tmp_path), "--debug-nan-at-step", str(bad), cwd=tmp_path)
    assert proc.returncode == 1, describe(proc)
    message = [line for line in proc.stderr.splitlines() if "non-finite" in line]
    assert len(message) == 1
    assert "keras_m2t.py: error: non-finite loss (nan) at epoch 2, batch 2" in message[0]
    assert "(after epoch 1) is kept" in message[0]
    assert _meta(tmp_path / "checkpoint.keras")["position"]["epoch"] == 1
    assert all(
        np.isfinite(a).all() for a in _weights(tmp_path / "checkpoint.keras").values() if a.dtype.kind == "f"
    )


def test_bad_data_gives_a_one_line_error(tmp_path):
    proc = run_example(SCRIPT, "--data", str(tmp_path / "no.npz"), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert errors[0].startswith("keras_m2t.py: error: --data: ")
    assert "no.npz" in errors[0]


def test_jax_backend_reads_weights_back_during_fit(tmp_path):
    """Keras's JAX trainer keeps state outside the variables mid-epoch; the callback must sync it."""
    proc = run_example(
        SCRIPT,
        *TINY,
        "--out",
        str(tmp_path),
        "--max-steps",
        str(STEPS_PER_EPOCH + 3),
        cwd=tmp_path,
        KERAS_BACKEND="jax",
    )
    assert proc.returncode == 0, describe(proc)
    assert "keras 3" in proc.stdout
    assert "on jax" in proc.stdout
    assert _meta(tmp_path / "checkpoint.keras")["position"]["step"] == 3
    metrics = read_json(tmp_path / "metrics.json")
    assert [r["epoch"] for r in metrics["history"]["knn"]] == [0, 1]
    assert metrics["history"]["knn"][1]["accuracy"] > 0.0
