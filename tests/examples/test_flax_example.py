"""examples/flax_m2t.py end to end on digits with tiny settings, in subprocesses."""

import json

import numpy as np
import pytest
from example_runner import STEPS_PER_EPOCH, TINY, describe, run_example
from run_files import read_json

SCRIPT = "flax_m2t.py"
# Bit-for-bit comparisons need one XLA CPU thread (a fixed reduction order).
ONE_THREAD = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


def _state_arrays(out):
    """Every array of the orbax checkpoint the pointer names, flattened by path."""
    import orbax.checkpoint as ocp

    pointer = json.loads((out / "checkpoint.json").read_text())
    tree = ocp.StandardCheckpointer().restore((out / pointer["state"]).absolute())
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}")
        else:
            flat[prefix] = np.asarray(node)

    walk(tree, "")
    return pointer, flat


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flax_full")
    proc = run_example(SCRIPT, *TINY, "--out", str(out), cwd=out, **ONE_THREAD)
    assert proc.returncode == 0, describe(proc)
    return out, proc


def test_end_to_end_writes_checkpoint_metrics_plot_and_summary(full_run):
    out, proc = full_run
    metrics = read_json(out / "metrics.json")
    assert metrics["status"] == "complete"
    history = metrics["history"]
    assert [r["epoch"] for r in history["epochs"]] == [1, 2]
    assert [r["epoch"] for r in history["knn"]] == [0, 1, 2]
    assert 0.0 < history["probe"]["accuracy"] <= 1.0
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    pointer, arrays = _state_arrays(out)
    assert pointer["meta"]["position"]["epoch"] == 2
    assert int(arrays["/model/step"]) == 2 * STEPS_PER_EPOCH
    assert len(list(out.glob("state-*"))) == 1  # older checkpoint folders are removed
    assert "-> after 2 epochs" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == f"plot: {out / 'curves.png'}"


def test_resume_mid_epoch_equals_the_uninterrupted_run(full_run, tmp_path):
    ref_out, _ = full_run
    out = tmp_path / "pieces"
    args = [*TINY, "--out", str(out)]
    first = run_example(SCRIPT, *args, "--max-steps", str(STEPS_PER_EPOCH + 4), cwd=tmp_path, **ONE_THREAD)
    assert first.returncode == 0, describe(first)
    assert read_json(out / "metrics.json")["position"] == {
        "epoch": 1,
        "step": 4,
        "loss_sum": read_json(out / "metrics.json")["position"]["loss_sum"],
        "loss_count": 4,
    }
    second = run_example(SCRIPT, *args, "--resume", cwd=tmp_path, **ONE_THREAD)
    assert second.returncode == 0, describe(second)
    assert read_json(out / "metrics.json")["history"] == read_json(ref_out / "metrics.json")["history"]
    _, ref = _state_arrays(ref_out)
    _, got = _state_arrays(out)
    assert ref.keys() == got.keys()
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    proc = run_example(
        SCRIPT,
        *TINY,
        "--out",
        str(tmp_path),
        "--debug-nan-at-step",
        str(STEPS_PER_EPOCH + 1),
        cwd=tmp_path,
        **ONE_THREAD,  # the XLA flags are part of the compilation cache's key: reuse the other runs' steps
    )
    assert proc.returncode == 1, describe(proc)
    # XLA's CPU code turns this NaN view into a finite loss, but the weights are caught.
    message = [line for line in proc.stderr.splitlines() if "non-finite" in line]
    assert len(message) == 1
    assert "epoch 2, batch 1" in message[0] or "between epoch 2, batch 0 and epoch 2" in message[0]
    assert "last good checkpoint" in message[0]
    assert "(after epoch 1)" in message[0]
    pointer, arrays = _state_arrays(tmp_path)
    assert pointer["meta"]["position"]["epoch"] == 1
    assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")


def test_bad_data_gives_a_one_line_error(tmp_path):
    proc = run_example(
        SCRIPT, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), cwd=tmp_path
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == [line for line in proc.stderr.splitlines() if line.strip()]  # nothing else printed
    assert errors[0].startswith("flax_m2t.py: error: --data: data path ")
    assert "does not exist; expected" in errors[0]
