"""examples/torch_m2t.py end to end on digits with tiny settings, in subprocesses."""

import signal
import subprocess
import sys
import time

import matplotlib.image
import pytest
import torch
from example_runner import EXAMPLES, STEPS_PER_EPOCH, TINY, describe, example_env, run_example
from run_files import read_json

SCRIPT = "torch_m2t.py"
ONE_THREAD = ["--threads", "1"]  # bit-for-bit comparisons need the same reduction order


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Two uninterrupted epochs: the reference for the other tests."""
    out = tmp_path_factory.mktemp("full")
    proc = run_example(SCRIPT, *TINY, *ONE_THREAD, "--out", str(out), cwd=out)
    assert proc.returncode == 0, describe(proc)
    return out, proc


def test_end_to_end_writes_checkpoint_metrics_plot_and_summary(full_run):
    out, proc = full_run
    metrics = read_json(out / "metrics.json")
    assert metrics["status"] == "complete"
    history = metrics["history"]
    assert [r["epoch"] for r in history["epochs"]] == [1, 2]
    assert [r["step"] for r in history["epochs"]] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert all(0.0 <= r["loss"] <= 8.0 for r in history["epochs"])
    assert [r["epoch"] for r in history["knn"]] == [0, 1, 2]
    assert all(0.0 < r["accuracy"] <= 1.0 for r in history["knn"])
    assert 0.0 < history["probe"]["accuracy"] <= 1.0
    image = matplotlib.image.imread(out / "curves.png")
    assert image.ndim == 3
    assert image.shape[0] > 100
    ckpt = _load(out / "checkpoint.pt")
    assert ckpt["meta"]["position"] == {"epoch": 2, "step": 0, "loss_sum": 0.0, "loss_count": 0}
    assert int(ckpt["model"]["step"]) == 2 * STEPS_PER_EPOCH
    lines = proc.stdout.strip().splitlines()
    assert lines[-3].startswith("teacher kNN accuracy (k=5): before training ")
    assert "-> after 2 epochs" in lines[-3]
    assert lines[-1] == f"plot: {out / 'curves.png'}"
    assert not list(out.glob(".tmp-*"))  # no temporary file left behind


def test_resume_from_any_batch_equals_the_uninterrupted_run(full_run, tmp_path):
    """2 epochs in one go == 7 steps, resume for 8 more (across the epoch end), resume to the end."""
    ref_out, _ = full_run
    out = tmp_path / "pieces"
    args = [*TINY, *ONE_THREAD, "--out", str(out)]
    first = run_example(SCRIPT, *args, "--max-steps", "7", cwd=tmp_path)
    assert first.returncode == 0, describe(first)
    assert "stopped after 7 steps (--max-steps)" in first.stdout
    assert read_json(out / "metrics.json")["status"] == "paused"
    assert _load(out / "checkpoint.pt")["meta"]["position"]["step"] == 7
    second = run_example(SCRIPT, *args, "--resume", "--max-steps", "8", "--log-every", "3", cwd=tmp_path)
    assert second.returncode == 0, describe(second)
    assert _load(out / "checkpoint.pt")["meta"]["position"]["epoch"] == 1
    third = run_example(SCRIPT, *args, "--resume", cwd=tmp_path)
    assert third.returncode == 0, describe(third)

    ref, got = read_json(ref_out / "metrics.json"), read_json(out / "metrics.json")
    assert got["history"] == ref["history"]  # losses, kNN and probe, bit for bit
    a, b = _load(ref_out / "checkpoint.pt"), _load(out / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]) for k in sa)


def test_a_second_run_refuses_to_overwrite_and_resume_checks_the_settings(full_run):
    out, _ = full_run
    again = run_example(SCRIPT, *TINY, "--out", str(out), cwd=out)
    assert again.returncode == 2
    assert "exists: add --resume" in again.stderr
    changed = [a if a != "2" else "3" for a in TINY]  # --epochs 3
    mismatch = run_example(SCRIPT, *changed, "--out", str(out), "--resume", cwd=out)
    assert mismatch.returncode == 2
    assert "--epochs 2 (now 3)" in mismatch.stderr
    assert len(mismatch.stderr.strip().splitlines()) == 1


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    bad_step = STEPS_PER_EPOCH + 2  # epoch 2, batch 2
    proc = run_example(
        SCRIPT, *TINY, "--out", str(tmp_path), "--debug-nan-at-step", str(bad_step), cwd=tmp_path
    )
    assert proc.returncode == 1, describe(proc)
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1
    assert "non-finite loss (nan) at epoch 2, batch 2" in errors[0]
    assert "last good checkpoint" in errors[0]
    ckpt = _load(tmp_path / "checkpoint.pt")  # loadable, from the end of epoch 1, finite
    assert ckpt["meta"]["position"]["epoch"] == 1
    assert int(ckpt["model"]["step"]) == STEPS_PER_EPOCH
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    assert read_json(tmp_path / "metrics.json")["status"].startswith("non-finite loss")


def test_non_finite_loss_in_the_first_epoch_saves_nothing(tmp_path):
    proc = run_example(SCRIPT, *TINY, "--out", str(tmp_path), "--debug-nan-at-step", "0", cwd=tmp_path)
    assert proc.returncode == 1, describe(proc)
    assert "no checkpoint had been saved yet" in proc.stderr
    assert not (tmp_path / "checkpoint.pt").exists()


def test_ctrl_c_saves_a_loadable_checkpoint_and_exits_cleanly(tmp_path):
    log = tmp_path / "stdout.txt"
    args = [a if a != "2" else "200" for a in TINY]  # long enough to be interrupted while training
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / SCRIPT), *args, "--out", str(tmp_path / "run")],
            cwd=tmp_path,
            env=example_env(),
            stdout=fh,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while "accuracy before training" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # inside the training loop now
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted: checkpoint" in log.read_text()
    ckpt = _load(tmp_path / "run" / "checkpoint.pt")
    position = ckpt["meta"]["position"]
    done = position["epoch"] * STEPS_PER_EPOCH + position["step"]
    assert 0 < done < 200 * STEPS_PER_EPOCH
    assert int(ckpt["model"]["step"]) == done  # the model state matches the recorded position
    assert read_json(tmp_path / "run" / "metrics.json")["status"] == "interrupted"
    resumed = run_example(
        SCRIPT, *args, "--out", str(tmp_path / "run"), "--resume", "--max-steps", "2", cwd=tmp_path
    )
    assert resumed.returncode == 0, describe(resumed)
    assert int(_load(tmp_path / "run" / "checkpoint.pt")["model"]["step"]) == done + 2


@pytest.mark.parametrize(
    "data",
    ["/nonexistent/cifar-10-batches-py", "broken.npz", "empty_folder"],
    ids=["missing", "npz", "folder"],
)
def test_bad_data_gives_a_one_line_error(tmp_path, data):
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    (tmp_path / "empty_folder").mkdir()
    proc = run_example(SCRIPT, "--data", data, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("torch_m2t.py: error: --data: ")
    assert data in lines[0]
    assert "expected" in lines[0]


# Only meaningful where CUDA is absent (CI, laptops): collected there only.
@pytest.mark.parametrize("machine", [] if torch.cuda.is_available() else ["without-cuda"])
def test_cuda_request_without_cuda_is_a_clear_error(tmp_path, machine):
    proc = run_example(SCRIPT, *TINY, "--device", "cuda", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "CUDA is not available" in proc.stderr
