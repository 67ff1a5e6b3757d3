"""The framework-neutral modules under examples/: flags, atomic files, history, views, schedule."""

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from epoch_loop import learning_rate
from example_flags import RUNTIME_FLAGS, build_parser, run_settings
from example_runner import EXAMPLES
from run_files import atomic_write, read_json, write_json
from training_history import History, Position, plot_history, summary_lines
from view_batches import prefetched_views

from m2t_core.augment import AugmentConfig, two_views
from m2t_core.datasets import BatchIterator

SHARED = ["example_flags", "run_files", "training_history", "view_batches", "teacher_eval", "epoch_loop"]
FRAMEWORKS = ["torch", "tensorflow", "keras", "jax", "flax", "optax"]


def test_shared_modules_import_no_framework():
    script = (
        f"import sys, json; sys.path.insert(0, {str(EXAMPLES)!r})\n"
        f"for m in {SHARED!r}: __import__(m)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_atomic_write_replaces_and_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "checkpoint.bin"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"first"))
    assert target.read_bytes() == b"first"

    def broken(tmp):
        tmp.write_bytes(b"half of a checkpoint")
        raise KeyboardInterrupt  # an interrupt in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, broken)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.bin"]  # no temporary file left


def test_atomic_write_keeps_the_suffix_for_format_picking_writers(tmp_path):
    seen = []
    atomic_write(tmp_path / "model.weights.h5", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")))
    assert seen[0].endswith("model.weights.h5")
    with pytest.raises(FileNotFoundError, match="did not create"):
        atomic_write(tmp_path / "nothing.bin", lambda tmp: None)


def test_json_round_trip_is_exact(tmp_path):
    values = {"loss": 0.1 + 0.2, "tiny": 5e-324, "list": [1 / 3, 2 / 7]}
    write_json(tmp_path / "m.json", values)
    assert read_json(tmp_path / "m.json") == values


def test_learning_rate_warms_up_then_decays_to_zero():
    lrs = [learning_rate(s, peak=0.2, total_steps=100, warmup_steps=10) for s in range(101)]
    assert lrs[0] == pytest.approx(0.02)
    assert lrs[9] == pytest.approx(0.2)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(55, peak=1.0, total_steps=100, warmup_steps=10) == pytest.approx(0.5)
    assert learning_rate(0, peak=1.0, total_steps=10, warmup_steps=0) == pytest.approx(1.0)


def test_run_settings_leave_out_runtime_flags():
    args = build_parser("torch", "test").parse_args(["--device", "cpu", "--epochs", "3"])
    settings = run_settings(args)
    assert settings["epochs"] == 3
    assert settings["data"] == "digits"
    assert not set(settings) & RUNTIME_FLAGS
    assert args.out == "runs/torch"


@pytest.mark.parametrize(
    "argv", [["--epochs", "0"], ["--lr", "-1"], ["--lr", "nan"], ["--batch-size", "x"], ["--device", "tpu"]]
)
def test_bad_flags_are_rejected(argv):
    with pytest.raises(SystemExit) as info:
        build_parser("torch", "test").parse_args(argv)
    assert info.value.code == 2


def test_history_round_trip_plot_and_summary(tmp_path):
    history = History(
        epochs=[{"epoch": 1, "loss": 2.5, "step": 11}, {"epoch": 2, "loss": 1.5, "step": 22}],
        knn=[{"epoch": 0, "accuracy": 0.5}, {"epoch": 2, "accuracy": 0.75}],
        probe={"accuracy": 0.8, "train_accuracy": 0.9},
    )
    again = History.from_dict(json.loads(json.dumps(history.to_dict())))
    assert again == history
    assert again.knn_at(2) == 0.75
    assert again.knn_at(1) is None
    position = Position(1, 3, 4.5, 3)
    assert Position.from_dict(json.loads(json.dumps(position.to_dict()))) == position

    png = plot_history(history, tmp_path / "curves.png", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = summary_lines(history, epochs=2, k=20, plot=png)
    assert lines[0] == "teacher kNN accuracy (k=20): before training 50.0% -> after 2 epochs 75.0%"
    assert "80.0%" in lines[1]
    assert lines[-1] == f"plot: {png}"


@pytest.mark.parametrize(("workers", "start_step"), [(1, 0), (3, 0), (2, 4)])
def test_prefetched_views_equal_the_direct_computation(workers, start_step):
    rng = np.random.default_rng(0)
    images = rng.random((70, 8, 8, 1), dtype=np.float32)
    loader = BatchIterator(images, np.arange(70) % 10, batch_size=8, seed=3)
    config = AugmentConfig.for_image_size(8, channels=1)
    got = list(prefetched_views(loader, 2, config, start_step=start_step, workers=workers))
    expected = list(loader.epoch(2, start_step=start_step))
    assert [p.batch.step for p in got] == [b.step for b in expected]
    for pair, batch in zip(got, expected, strict=True):
        v1, v2 = two_views(batch.images, batch.rng, config)
        np.testing.assert_array_equal(pair.view1, v1)
        np.testing.assert_array_equal(pair.view2, v2)


def test_prefetched_views_stop_early_and_reraise_errors():
    images = np.zeros((40, 8, 8, 1), np.float32)
    loader = BatchIterator(images, batch_size=4)
    config = AugmentConfig.for_image_size(8, channels=1)
    gen = prefetched_views(loader, 0, config, workers=2)
    next(gen)
    gen.close()  # must not hang
    bad = BatchIterator(np.full((8, 8, 8, 1), 2.0, np.float32), batch_size=4)  # values outside [0, 1]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        list(prefetched_views(bad, 0, config))
    with pytest.raises(ValueError, match="workers"):
        next(prefetched_views(loader, 0, config, workers=0))


def test_learning_rate_is_finite_everywhere():
    assert all(
        math.isfinite(learning_rate(s, peak=0.1, total_steps=7, warmup_steps=7)) for s in range(-1, 20)
    )
