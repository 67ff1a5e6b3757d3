"""The training driver shared by the examples with their own loop (PyTorch, Flax); no framework imports.

:class:`ExampleTrainer` owns everything that is the same in every framework — loading the data,
batches and views, the progress bar, kNN evaluation of the teacher, checkpoints every epoch, exact
resume, Ctrl-C, the non-finite-loss stop, metrics, the plot and the summary. A framework example
subclasses it and fills in a handful of hooks: build the model, run one step, read losses back,
encode images with the teacher backbone, save and load a checkpoint.

Guarantees, each tested in ``tests/examples``:

* **Exact resume.** A checkpoint holds the model, the optimizer, the position (epoch and batch) and
  the metric history. Batches and views depend only on ``(seed, epoch, batch)``, so a run stopped at
  any batch and resumed with ``--resume`` computes what an uninterrupted run computes.
* **Atomic checkpoints.** Each is written to a temporary file and renamed over the old one.
* **Ctrl-C** sets a flag; the step in flight finishes, a checkpoint of that consistent state is saved,
  and the program exits with status 130. A second Ctrl-C aborts at once without saving (the previous
  checkpoint stays intact).
* **Non-finite loss.** Losses are read back every ``--log-every`` steps and at every epoch end, before
  anything is saved. A NaN or infinite loss stops the run with a one-line message and exit status 1;
  the last checkpoint — written before the bad step — is kept, never overwritten by the diverged
  state.
"""

from __future__ import annotations

import abc
import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from example_flags import run_settings
from run_files import atomic_write, write_json
from teacher_eval import TeacherFeatures, teacher_features
from training_history import History, Position, plot_history, summary_lines
from view_batches import prefetched_views

from m2t_core.augment import AugmentConfig
from m2t_core.datasets import BatchIterator, Dataset, DatasetError, load_data

__all__ = [
    "CHECKPOINT_FORMAT",
    "ExampleTrainer",
    "InterruptFlag",
    "NonFiniteLossError",
    "RunState",
    "learning_rate",
    "load_example_data",
    "usable_cores",
]

#: Version of the checkpoint's metadata layout.
CHECKPOINT_FORMAT = 1

METRICS_NAME = "metrics.json"
PLOT_NAME = "curves.png"


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class NonFiniteLossError(Exception):
    """A training loss, or the student's weights, became NaN or infinite.

    Args:
        first_step: First global step (0-based) that may have produced it.
        last_step: Last such step (``first_step`` when the loss itself pins the step).
        what: ``"loss (nan)"``, ``"student weights"``, ...
    """

    def __init__(self, first_step: int, last_step: int, what: str) -> None:
        """Record where and what (arguments documented on the class)."""
        super().__init__(f"non-finite {what} at global steps {first_step}-{last_step}")
        self.first_step = first_step
        self.last_step = last_step
        self.what = what


class InterruptFlag:
    """Turns the first Ctrl-C (SIGINT) into a flag the loop checks between steps.

    Interrupting a step half-way (between the EMA and the optimizer update, say) would leave a state
    no uninterrupted run ever has; with the flag, the step in flight finishes and the loop saves a
    consistent checkpoint. The second Ctrl-C raises ``KeyboardInterrupt`` as usual. Outside the main
    thread (where Python cannot install signal handlers) this does nothing.
    """

    def __init__(self) -> None:
        """Start unset."""
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again aborts without saving)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> InterruptFlag:
        """Install the handler (main thread only)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        """Restore the previous handler."""
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


def learning_rate(step: int, *, peak: float, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up from ``peak / warmup_steps`` to ``peak``, then cosine decay to 0 at ``total_steps``.

    Args:
        step: 0-based global step.
        peak: Learning rate at the end of the warm-up.
        total_steps: Steps of the whole run.
        warmup_steps: Steps of the warm-up (0: none).

    Returns:
        The learning rate of ``step``.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return 0.5 * peak * (1.0 + math.cos(math.pi * progress))


def load_example_data(args: argparse.Namespace) -> Dataset:
    """Load ``--data``; a missing or malformed source becomes a one-line ``SystemExit`` message.

    Args:
        args: The parsed flags (``data``, ``image_size``).

    Returns:
        The data set.

    Raises:
        SystemExit: with the loader's one-line message (status 2).
    """
    try:
        return load_data(args.data, image_size=args.image_size)
    except (FileNotFoundError, DatasetError, ImportError) as err:
        print(f"{Path(sys.argv[0]).name}: error: --data: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _describe(position: Position) -> str:
    if position.step == 0:
        return f"after epoch {position.epoch}"
    return f"epoch {position.epoch + 1}, batch {position.step}"


class _Throughput:
    """Images per second over the steps after a warm-up, without epoch-end work (eval, saving)."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.started: float | None = None
        self.excluded = 0.0
        self.steps = 0

    def start(self) -> None:
        self.started = time.perf_counter()

    def result(self, batch_size: int) -> dict[str, float] | None:
        if self.started is None or self.steps == 0:
            return None
        seconds = time.perf_counter() - self.started - self.excluded
        return {
            "steps_timed": self.steps,
            "warmup_steps": self.warmup_steps,
            "seconds": seconds,
            "images_per_second": self.steps * batch_size / seconds,
        }


@dataclass
class RunState:
    """What a run's loop updates: position, history, counters, and the interrupt flag.

    Attributes:
        loader: The training batches.
        position: Next batch and the running sums of the current epoch.
        history: Per-epoch records.
        timer: The throughput clock.
        interrupt: Set by Ctrl-C (``None`` outside the loop).
        steps_run: Steps run by this invocation.
        saved_position: Position of the last checkpoint written (or resumed from), if any.
    """

    loader: BatchIterator
    position: Position
    history: History
    timer: _Throughput
    interrupt: InterruptFlag | None = None
    steps_run: int = 0
    saved_position: Position | None = None


class ExampleTrainer(abc.ABC):
    """The shared training loop; subclasses implement the framework hooks.

    Args:
        args: Parsed flags (:func:`example_flags.build_parser` plus the framework's own).
    """

    #: ``"torch"``, ``"keras"`` or ``"flax"``.
    framework: str = ""
    #: File name of the checkpoint inside ``--out``.
    checkpoint_name: str = ""

    def __init__(self, args: argparse.Namespace) -> None:
        """Keep the flags (arguments documented on the class)."""
        self.args = args
        self.out = Path(args.out)
        self.data: Dataset | None = None
        self.config: AugmentConfig | None = None
        self.steps_per_epoch = 0

    # -- hooks ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def setup(self, data: Dataset, steps_per_epoch: int) -> None:
        """Seed the framework, pick the device, build the model and the optimizer.

        Args:
            data: The data set (image shape, channel count).
            steps_per_epoch: Batches per epoch (``total_steps = steps_per_epoch * epochs``).
        """

    @abc.abstractmethod
    def train_step(self, view1: np.ndarray, view2: np.ndarray, step: int) -> Any:
        """Run one training step on a pair of ``[B, H, W, C]`` float32 views.

        Args:
            view1: First view (channels last).
            view2: Second view.
            step: 0-based global step (for the learning-rate schedule).

        Returns:
            The loss as a device value; it is read back later by :meth:`losses_to_floats`, so the
            host need not wait for the device after every step.
        """

    @abc.abstractmethod
    def losses_to_floats(self, losses: list[Any]) -> list[float]:
        """Read a list of losses returned by :meth:`train_step` back as Python floats (one sync)."""

    @abc.abstractmethod
    def encode(self, images: np.ndarray) -> Any:
        """Teacher-backbone features ``[B, D]`` of ``[B, H, W, C]`` images, in evaluation mode."""

    @abc.abstractmethod
    def save_checkpoint(self, path: Path, meta: dict[str, Any]) -> None:
        """Write model, optimizer and ``meta`` (JSON-able) to ``path`` (a temporary file).

        Args:
            path: Where to write; the caller renames it over the real checkpoint.
            meta: Position, history and settings to store alongside the state.
        """

    @abc.abstractmethod
    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        """Restore model and optimizer from ``path`` and return the stored ``meta``."""

    def weights_finite(self) -> bool:
        """Whether every trainable weight is finite (checked each time losses are read back)."""
        return True

    def after_save(self) -> None:  # noqa: B027 (an optional hook: most frameworks need nothing here)
        """Called once a checkpoint is in place (e.g. to delete files the new one replaced)."""

    def device_summary(self) -> str:
        """One line naming the device and precision (for the header and the metrics)."""
        return "cpu"

    def peak_memory_bytes(self) -> int | None:
        """Peak device memory in bytes, where the framework reports it."""
        return None

    def on_accelerator(self) -> bool:
        """Whether training runs on a GPU (then several threads prepare the views)."""
        return False

    def loader_threads(self) -> int:
        """``--loader-threads``, or 1 on the CPU (the cores train) and up to 8 with a GPU."""
        if self.args.loader_threads is not None:
            return self.args.loader_threads
        return min(8, max(1, usable_cores() // 2)) if self.on_accelerator() else 1

    # -- the driver -------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        """``<out>/<checkpoint_name>``."""
        return self.out / self.checkpoint_name

    def _features(self) -> TeacherFeatures:
        assert self.data is not None
        assert self.config is not None
        return teacher_features(self.encode, self.data, self.config)

    def _error(self, message: str) -> int:
        print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
        return 2

    def _meta(self, position: Position, history: History) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "framework": self.framework,
            "settings": run_settings(self.args),
            "position": position.to_dict(),
            "history": history.to_dict(),
        }

    def _save(self, position: Position, history: History) -> None:
        meta = self._meta(position, history)
        atomic_write(self.checkpoint_path, lambda tmp: self.save_checkpoint(tmp, meta))
        self.after_save()

    def _write_metrics(
        self, status: str, position: Position, history: History, throughput: dict | None = None
    ) -> None:
        assert self.data is not None
        write_json(
            self.out / METRICS_NAME,
            {
                "framework": self.framework,
                "status": status,
                "data": repr(self.data),
                "device": self.device_summary(),
                "steps_per_epoch": self.steps_per_epoch,
                "settings": run_settings(self.args),
                "position": position.to_dict(),
                "history": history.to_dict(),
                "throughput": throughput,
            },
        )

    def _plot(self, history: History) -> Path:
        assert self.data is not None
        title = f"{self.framework} M2T on {self.data.name}, batch {self.args.batch_size}"
        return plot_history(history, self.out / PLOT_NAME, title=title)

    def _resume_state(self) -> tuple[Position, History] | int:
        meta = self.load_checkpoint(self.checkpoint_path)
        if meta.get("framework") != self.framework:
            return self._error(f"{self.checkpoint_path} was written by the {meta.get('framework')} example")
        saved, now = meta["settings"], run_settings(self.args)
        diffs = [
            f"--{k.replace('_', '-')} {saved.get(k)!r} (now {now.get(k)!r})"
            for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)
        ]
        if diffs:
            return self._error(
                f"--resume: {self.checkpoint_path} was made with "
                + ", ".join(diffs)
                + "; repeat the original command's flags and add --resume"
            )
        return Position.from_dict(meta["position"]), History.from_dict(meta["history"])

    def run(self, data: Dataset | None = None) -> int:
        """Train, evaluate and report; returns the process exit status.

        Args:
            data: The data set when the caller already loaded it (default: load ``--data``).

        Returns:
            0 (finished, or stopped by ``--max-steps`` with a checkpoint), 1 (non-finite loss),
            2 (bad data or flags), 130 (interrupted; a checkpoint was saved unless aborted).
        """
        args = self.args
        data = self.data = data if data is not None else load_example_data(args)
        self.config = AugmentConfig.for_dataset(data)
        try:
            loader = BatchIterator(
                data.train_images, data.train_labels, batch_size=args.batch_size, seed=args.seed
            )
        except ValueError as err:
            return self._error(f"--batch-size: {err}")
        spe = self.steps_per_epoch = len(loader)
        ckpt = self.checkpoint_path
        if args.resume and not ckpt.exists():
            return self._error(f"--resume: there is no checkpoint {ckpt}")
        if not args.resume and ckpt.exists():
            return self._error(
                f"{ckpt} exists: add --resume to continue that run, or pass another --out (or delete it)"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        self.setup(data, spe)

        if args.resume:
            state = self._resume_state()
            if isinstance(state, int):
                return state
            position, history = state
            print(f"resuming {ckpt} ({_describe(position)})")
        else:
            position, history = Position(), History()
        total = spe * args.epochs
        h, w, c = data.image_shape
        print(
            f"{self.framework} example: {data.name} ({len(data.train_labels)} train / "
            f"{len(data.test_labels)} test images, {h}x{w}x{c}), {spe} steps/epoch x {args.epochs} epochs, "
            f"batch {args.batch_size}, {self.device_summary()}",
            flush=True,
        )
        if history.knn_at(0) is None:
            history.knn.append({"epoch": 0, "accuracy": self._features().knn(args.knn_k)})
        print(f"teacher kNN accuracy before training: {100 * history.knn_at(0):.1f}%", flush=True)

        remaining = total - (position.epoch * spe + position.step)
        planned = min(remaining, args.max_steps or remaining)
        state = RunState(
            loader=loader,
            position=position,
            history=history,
            timer=_Throughput(warmup_steps=max(1, min(50, planned // 5))),
            saved_position=Position(**position.to_dict()) if args.resume else None,
        )
        try:
            with InterruptFlag() as interrupt:
                state.interrupt = interrupt
                status = self.train(state)
        except NonFiniteLossError as bad:
            saved_position = state.saved_position
            epoch, batch = divmod(bad.first_step, spe)
            where = f"at epoch {epoch + 1}, batch {batch} (global step {bad.first_step})"
            if bad.last_step != bad.first_step:
                last_epoch, last_batch = divmod(bad.last_step, spe)
                where = (
                    f"between epoch {epoch + 1}, batch {batch} and epoch {last_epoch + 1}, "
                    f"batch {last_batch} (global steps {bad.first_step}-{bad.last_step}; "
                    "the loss itself stayed finite)"
                )
            kept = (
                f"the last good checkpoint {ckpt} ({_describe(saved_position)}) is kept"
                if saved_position is not None
                else "no checkpoint had been saved yet"
            )
            print(
                f"{Path(sys.argv[0]).name}: error: non-finite {bad.what} {where}; training stopped and "
                f"{kept}; try a lower --lr",
                file=sys.stderr,
            )
            if saved_position is not None:
                self._write_metrics(
                    f"non-finite {bad.what} at global step {bad.first_step}", saved_position, history
                )
            return 1
        except KeyboardInterrupt:
            print(f"aborted without saving; the last checkpoint ({ckpt}) is intact", file=sys.stderr)
            return 130

        throughput = state.timer.result(args.batch_size)
        if throughput is not None:
            peak = self.peak_memory_bytes()
            throughput["peak_memory_mib"] = None if peak is None else peak / 2**20
        if status != "complete":
            self._save(position, history)
            self._write_metrics(status, position, history, throughput)
            self._plot(history)
            why = (
                "interrupted"
                if status == "interrupted"
                else f"stopped after {state.steps_run} steps (--max-steps)"
            )
            print(
                f"{why}: checkpoint {ckpt} saved ({_describe(position)}); "
                "continue with the same command plus --resume"
            )
            self._report_throughput(throughput)
            return 130 if status == "interrupted" else 0

        feats = self._features()
        if history.knn_at(args.epochs) is None:
            history.knn.append({"epoch": args.epochs, "accuracy": feats.knn(args.knn_k)})
        history.probe = feats.probe()
        self._write_metrics(status, position, history, throughput)
        plot = self._plot(history)
        for line in summary_lines(history, epochs=args.epochs, k=args.knn_k, plot=plot):
            print(line)
        self._report_throughput(throughput)
        return 0

    def _report_throughput(self, throughput: dict | None) -> None:
        if self.args.report_throughput and throughput is not None:
            record = {"framework": self.framework, "device": self.device_summary(), **throughput}
            print("THROUGHPUT " + json.dumps(record), flush=True)

    def train(self, state: RunState) -> str:
        """Run the remaining epochs with this class's own loop (``train_step`` per batch).

        Subclasses whose framework owns the loop (Keras' ``fit``) override this and call
        :meth:`record_losses`, :meth:`stop_reason` and :meth:`end_epoch` from their callbacks.

        Args:
            state: The run's position, history, timer and interrupt flag (updated in place).

        Returns:
            ``"complete"``, ``"paused"`` (``--max-steps``) or ``"interrupted"`` (Ctrl-C).
        """
        spe = self.steps_per_epoch
        while state.position.epoch < self.args.epochs:
            reason = self.stop_reason(state)
            if reason is not None:
                return reason
            self._run_epoch(state)
            if state.position.step < spe:  # stopped inside the epoch
                return self.stop_reason(state) or "paused"
            self.end_epoch(state)
        return "complete"

    def stop_reason(self, state: RunState) -> str | None:
        """``"interrupted"`` after Ctrl-C, ``"paused"`` once ``--max-steps`` steps ran, else ``None``."""
        if state.interrupt is not None and state.interrupt.requested:
            return "interrupted"
        if self.args.max_steps is not None and state.steps_run >= self.args.max_steps:
            return "paused"
        return None

    def progress_bar(self, state: RunState) -> Any:
        """A tqdm bar over the batches of ``state.position.epoch`` (disabled by ``--no-progress``)."""
        from tqdm.auto import tqdm

        self._epoch_started = time.perf_counter()
        return tqdm(
            total=self.steps_per_epoch,
            initial=state.position.step,
            desc=f"epoch {state.position.epoch + 1}/{self.args.epochs}",
            unit="step",
            leave=False,
            disable=not self.args.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def step_taken(self, state: RunState) -> None:
        """Count one training step (for ``--max-steps`` and the throughput clock)."""
        state.steps_run += 1
        if state.timer.started is not None:
            state.timer.steps += 1

    def timer_due(self, state: RunState) -> bool:
        """Whether the warm-up just ended: the caller reads losses back (a sync), then starts the clock."""
        return state.timer.started is None and state.steps_run == state.timer.warmup_steps

    def _run_epoch(self, state: RunState) -> None:
        """Run the batches of the current epoch from ``state.position.step`` on."""
        args, spe = self.args, self.steps_per_epoch
        assert self.config is not None
        epoch = state.position.epoch
        bar = self.progress_bar(state)
        pending: list[tuple[int, Any]] = []
        views = prefetched_views(
            state.loader, epoch, self.config, start_step=state.position.step, workers=self.loader_threads()
        )
        try:
            for pair in views:
                if self.stop_reason(state) is not None:
                    break
                gstep = epoch * spe + pair.batch.step
                v1 = pair.view1
                if args.debug_nan_at_step == gstep:
                    v1 = v1 * np.float32(np.nan)
                pending.append((gstep, self.train_step(v1, pair.view2, gstep)))
                self.step_taken(state)
                if len(pending) >= args.log_every:
                    self.record_losses(state, pending, bar)
                if self.timer_due(state):
                    self.record_losses(state, pending, bar)  # wait for the device before the clock starts
                    state.timer.start()
            self.record_losses(state, pending, bar)
        finally:
            views.close()
            bar.close()

    def record_losses(self, state: RunState, pending: list[tuple[int, Any]], bar: Any) -> None:
        """Read pending ``(global step, loss)`` pairs back, stop on a non-finite one, add them up.

        Args:
            state: The run (its position's sums and step advance).
            pending: Losses not yet read back, in step order; emptied.
            bar: The progress bar to advance.

        Raises:
            NonFiniteLossError: a loss, or afterwards the student's weights, is not finite.
        """
        if not pending:
            return
        position = state.position
        values = self.losses_to_floats([loss for _, loss in pending])
        for (gstep, _), value in zip(pending, values, strict=True):
            if not math.isfinite(value):
                raise NonFiniteLossError(gstep, gstep, f"loss ({value})")
        # A compiled step can lose a NaN on the way to the loss (XLA's CPU code was seen to turn a NaN
        # view into a finite loss while the gradients poisoned the weights): check those too.
        if not self.weights_finite():
            raise NonFiniteLossError(pending[0][0], pending[-1][0], "student weights")
        for value in values:  # one at a time, in order: the sum does not depend on --log-every
            position.loss_sum += value
        position.loss_count += len(values)
        position.step = pending[-1][0] - position.epoch * self.steps_per_epoch + 1
        pending.clear()
        bar.update(len(values))
        bar.set_postfix(loss=f"{values[-1]:.4f}")

    def end_epoch(self, state: RunState) -> None:
        """Record the finished epoch, evaluate when due, save checkpoint and metrics, advance.

        Args:
            state: The run; its position moves to the start of the next epoch.
        """
        t0 = time.perf_counter()
        args, spe = self.args, self.steps_per_epoch
        position, history = state.position, state.history
        done = position.epoch + 1
        mean_loss = position.loss_sum / max(position.loss_count, 1)
        history.epochs.append({"epoch": done, "loss": mean_loss, "step": done * spe})
        seconds = time.perf_counter() - self._epoch_started
        line = f"epoch {done:>3}/{args.epochs}  loss {mean_loss:.4f}  ({seconds:.1f} s)"
        due = done == args.epochs or (args.eval_every > 0 and done % args.eval_every == 0)
        if due:
            acc = self._features().knn(args.knn_k)
            history.knn.append({"epoch": done, "accuracy": acc})
            line += f"  teacher kNN {100 * acc:.1f}%"
        position.epoch, position.step, position.loss_sum, position.loss_count = done, 0, 0.0, 0
        self._save(position, history)
        state.saved_position = Position(**position.to_dict())
        self._write_metrics("running" if done < args.epochs else "complete", position, history)
        if due:
            self._plot(history)
        print(line, flush=True)
        if state.timer.started is not None:  # evaluation and saving are not training time
            state.timer.excluded += time.perf_counter() - t0
