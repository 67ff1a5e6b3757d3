r"""Same weights, same batches, same trajectory: the cross-framework equivalence check (``m2t-equivalence``).

The scenario: an M2T model with the reference backbone (:mod:`m2t_core.reference_net`), initialised
in NumPy from a seed (student and teacher equal) and written as a canonical checkpoint
(:mod:`m2t_core.checkpoint`); fixed NumPy batches of two views; ``steps`` training steps of SGD with
momentum 0.9 and *coupled* weight decay (``g ← g + wd·θ`` on every student parameter, as
``torch.optim.SGD(weight_decay=...)``) in every backend:

====================  ========================================================================
backend               worker (a subprocess; each Keras backend needs its own ``KERAS_BACKEND``)
====================  ========================================================================
``torch``             ``python -m m2t_torch.equivalence``
``keras-tensorflow``  ``python -m m2t_keras.equivalence`` with ``KERAS_BACKEND=tensorflow``
``keras-jax``         ``python -m m2t_keras.equivalence`` with ``KERAS_BACKEND=jax``
``keras-torch``       ``python -m m2t_keras.equivalence`` with ``KERAS_BACKEND=torch``
``flax-nnx``          ``python -m m2t_flax.equivalence --api nnx``
``flax-linen``        ``python -m m2t_flax.equivalence --api linen``
====================  ========================================================================

Each worker reads the initial checkpoint and the batches, trains with its framework's own M2T
implementation, and writes per-step losses, the teacher's momentum statistics after every step, the
final model (canonical arrays) and the teacher's projections of step 1 to an ``.npz`` file. This
module — which never imports a framework — compares them: per quantity, the largest
``max|a − b| / max(max|b|, 1e-12)`` over its arrays, against a reference backend, and step 1 against
a float64 NumPy forward of the same model (:func:`m2t_core.reference_net.teacher_forward`). Integer
counters must be equal. Workers hide GPUs: the check measures the implementations, not TF32 matmuls.

The run is float64 by default. In float32, rounding alone exceeds 1e-5 over 8 steps for some seeds
(a ReLU input within rounding of zero, or Keras's one-pass variance on the PyTorch backend, sends one
framework onto a visibly different path), while float64 keeps PyTorch and Flax within ~1e-15 of each
other, so every semantic difference shows; Keras keeps its momentum statistics in float32, which
bounds its rows near 1e-7. ``docs/interchange.md`` gives the measurements.

Command line::

    m2t-equivalence [--steps 8] [--seed 0] [--backends torch,flax-nnx,...] [--reference torch]
                    [--tolerance 1e-5] [--dtype float64|float32] [--keep DIR] [--timeout 600]

prints a progress line per backend, a table of differences and ``PASS``/``FAIL``; the exit status is
0 on PASS, 1 on FAIL, 2 on a usage error (e.g. a requested backend that is not installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from m2t_core.checkpoint import is_counter, load_checkpoint, model_config, save_checkpoint
from m2t_core.reference_net import ReferenceConfig, init_checkpoint, step_loss, teacher_forward
from m2t_core.schedules import stats_momentum_schedule

__all__ = [
    "BACKENDS",
    "DEFAULT_TOLERANCE",
    "DTYPES",
    "QUANTITIES",
    "Backend",
    "Comparison",
    "NumpyReference",
    "Recorder",
    "Scenario",
    "WorkerInputs",
    "available_backends",
    "compare",
    "format_report",
    "main",
    "numpy_reference",
    "read_inputs",
    "relative_difference",
    "run_backend",
    "run_scenario",
    "worker_main",
    "write_inputs",
]

#: Default bound on every relative difference.
DEFAULT_TOLERANCE = 1e-5
#: Precisions a scenario can run in.
DTYPES = ("float64", "float32")
_TINY = 1e-12
_SCENARIO = "scenario.json"
_CHECKPOINT = "initial.safetensors"
_BATCHES = "batches.npy"


@dataclass(frozen=True)
class Scenario:
    """The training run every backend performs.

    Attributes:
        steps: Training steps.
        seed: Seed of the initial weights and of the batches.
        batch_size: Samples per view.
        image_size: Height and width of the images.
        in_channels: Image channels.
        width: ``w`` of the reference backbone.
        hidden_dim: Hidden width of the heads.
        projection_dim: Output width of the heads.
        learning_rate: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: Coupled weight decay (added to the gradient) on every student parameter.
        total_steps: ``K`` of both cosine schedules (``None``: ``steps``, so ``m`` and ``α`` sweep
            their whole range within the run).
        base_momentum: Teacher momentum at step 0.
        alpha_start: ``α`` at step 0.
        alpha_end: ``α`` at step ``K``.
        correction: Variance estimator of the teacher's momentum BNs.
        dtype: ``"float64"`` (default) or ``"float32"``: the precision of weights, batches and every
            computation. Initial weights and batches are float32 numbers in both cases, so the two
            precisions start from the same values.
    """

    steps: int = 8
    seed: int = 0
    batch_size: int = 8
    image_size: int = 8
    in_channels: int = 3
    width: int = 8
    hidden_dim: int = 64
    projection_dim: int = 32
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    total_steps: int | None = None
    base_momentum: float = 0.99
    alpha_start: float = 0.0
    alpha_end: float = 1.0
    correction: str = "biased"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        """Validate the sizes and the dtype."""
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("steps", "batch_size", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.model  # noqa: B018  (validates the model sizes)

    @property
    def schedule_steps(self) -> int:
        """``K`` of the schedules."""
        return self.steps if self.total_steps is None else self.total_steps

    @property
    def model(self) -> ReferenceConfig:
        """The model sizes."""
        return ReferenceConfig(self.in_channels, self.width, self.hidden_dim, self.projection_dim)

    def model_config(self) -> dict[str, Any]:
        """The checkpoint config of the initial model."""
        return model_config(
            framework="numpy",
            backbone=self.model.backbone_dict(),
            feature_dim=self.model.feature_dim,
            hidden_dim=self.hidden_dim,
            projection_dim=self.projection_dim,
            total_steps=self.schedule_steps,
            base_momentum=self.base_momentum,
            final_momentum=1.0,
            alpha_start=self.alpha_start,
            alpha_end=self.alpha_end,
            correction=self.correction,
        )

    def describe(self) -> str:
        """One line for the report's header."""
        return (
            f"reference model (width {self.width}, heads {self.hidden_dim}->{self.projection_dim}), "
            f"{self.image_size}x{self.image_size}x{self.in_channels} images, 2 views of {self.batch_size}; "
            f"{self.steps} steps of SGD (lr {self.learning_rate}, momentum {self.momentum}, coupled weight "
            f"decay {self.weight_decay}); seed {self.seed}; {self.dtype}"
        )


class WorkerInputs(NamedTuple):
    """What a worker reads (:func:`read_inputs`).

    Attributes:
        scenario: The run to perform.
        arrays: The initial canonical arrays.
        batches: ``[steps, 2, B, H, W, C]`` in the scenario's dtype, NHWC.
    """

    scenario: Scenario
    arrays: dict[str, np.ndarray]
    batches: np.ndarray


@dataclass(frozen=True)
class Backend:
    """One framework/API the scenario runs in.

    Attributes:
        name: Name on the command line and in the report.
        module: The worker module (``python -m <module>``).
        requires: Top-level packages that must be importable.
        args: Extra worker arguments.
        env: Extra environment variables of the worker.
    """

    name: str
    module: str
    requires: tuple[str, ...]
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


#: Every backend, in report order.
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("torch", "m2t_torch.equivalence", ("torch", "safetensors")),
        Backend(
            "keras-tensorflow",
            "m2t_keras.equivalence",
            ("keras", "tensorflow", "safetensors"),
            env={"KERAS_BACKEND": "tensorflow"},
        ),
        Backend(
            "keras-jax",
            "m2t_keras.equivalence",
            ("keras", "jax", "safetensors"),
            env={"KERAS_BACKEND": "jax"},
        ),
        Backend(
            "keras-torch",
            "m2t_keras.equivalence",
            ("keras", "torch", "safetensors"),
            env={"KERAS_BACKEND": "torch"},
        ),
        Backend("flax-nnx", "m2t_flax.equivalence", ("flax", "optax", "safetensors"), args=("--api", "nnx")),
        Backend(
            "flax-linen", "m2t_flax.equivalence", ("flax", "optax", "safetensors"), args=("--api", "linen")
        ),
    )
}


def available_backends() -> list[str]:
    """The backends whose packages are installed (``importlib.util.find_spec``; nothing is imported).

    Returns:
        Names from :data:`BACKENDS`, in report order.
    """
    return [
        name
        for name, backend in BACKENDS.items()
        if all(
            importlib.util.find_spec(p) is not None for p in (*backend.requires, backend.module.split(".")[0])
        )
    ]


# --------------------------------------------------------------------------------------------------
# files shared by the parent and the workers


def write_inputs(scenario: Scenario, directory: str | os.PathLike[str]) -> Path:
    """Write the scenario, its initial checkpoint and its batches into ``directory``.

    Args:
        scenario: The run.
        directory: An existing folder.

    Returns:
        The folder, as a path.
    """
    folder = Path(directory)
    # float32 numbers stored in the scenario's dtype: float32 and float64 runs start from one point.
    arrays = {
        n: v if is_counter(n) else v.astype(np.float32).astype(scenario.dtype)
        for n, v in init_checkpoint(scenario.model, scenario.seed, np.float64).items()
    }
    save_checkpoint(folder / _CHECKPOINT, arrays, config=scenario.model_config())
    rng = np.random.default_rng([scenario.seed, 1])
    shape = (
        scenario.steps,
        2,
        scenario.batch_size,
        scenario.image_size,
        scenario.image_size,
        scenario.in_channels,
    )
    base = rng.standard_normal(shape[:1] + shape[2:])
    # Two correlated views of one batch, with a per-channel offset, as augmentations would give.
    views = np.stack([base, 0.7 * base + 0.5 * rng.standard_normal(base.shape)], axis=1)
    views = views + rng.standard_normal(scenario.in_channels) * 0.5
    np.save(folder / _BATCHES, views.astype(np.float32))
    (folder / _SCENARIO).write_text(json.dumps(asdict(scenario), sort_keys=True, indent=1), encoding="utf-8")
    return folder


def read_inputs(directory: str | os.PathLike[str]) -> WorkerInputs:
    """Read what :func:`write_inputs` wrote (the worker side).

    Args:
        directory: The folder.

    Returns:
        The :class:`WorkerInputs`, batches in the scenario's dtype.
    """
    folder = Path(directory)
    scenario = Scenario(**json.loads((folder / _SCENARIO).read_text(encoding="utf-8")))
    batches = np.load(folder / _BATCHES).astype(scenario.dtype)
    return WorkerInputs(scenario, load_checkpoint(folder / _CHECKPOINT).arrays, batches)


def _teacher_stat_names(arrays: Mapping[str, np.ndarray]) -> list[str]:
    return sorted(n for n in arrays if n.startswith("teacher.") and n.endswith((".mean", ".var")))


class Recorder:
    """Collects a worker's trajectory and builds its result file.

    Call :meth:`after_step` after every training step with the loss and the model's canonical
    arrays, then :meth:`result` once.
    """

    def __init__(self) -> None:
        """Start empty."""
        self.losses: list[float] = []
        self.stats: dict[str, list[np.ndarray]] = {}

    def after_step(self, loss: float, arrays: Mapping[str, np.ndarray]) -> None:
        """Record one step.

        Args:
            loss: The step's loss.
            arrays: The model's canonical arrays after the step.
        """
        self.losses.append(float(loss))
        for name in _teacher_stat_names(arrays):
            self.stats.setdefault(name, []).append(np.asarray(arrays[name]).copy())

    def result(self, final: Mapping[str, np.ndarray], z_step1: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays a worker writes.

        Args:
            final: The model's canonical arrays after the last step.
            z_step1: The teacher's projections of both views at step 1, ``[2B, projection_dim]``.

        Returns:
            ``{"loss": [S], "z_step1": ..., "stats/<name>": [S, C], "final/<name>": ...}``.
        """
        out = {"loss": np.asarray(self.losses, np.float64), "z_step1": np.asarray(z_step1)}
        out.update({f"stats/{n}": np.stack(v) for n, v in self.stats.items()})
        out.update({f"final/{n}": np.asarray(v) for n, v in final.items()})
        return out


def worker_main(
    run: Callable[[WorkerInputs, argparse.Namespace], dict[str, np.ndarray]],
    argv: Sequence[str] | None = None,
    *,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """The command line of a worker: ``python -m m2t_<x>.equivalence INPUT_DIR OUTPUT_NPZ [...]``.

    Args:
        run: ``run(inputs, args) -> arrays`` trains and returns :meth:`Recorder.result`.
        argv: Arguments (default ``sys.argv[1:]``).
        extra: Adds the worker's own options to the parser.

    Returns:
        The exit status (0).
    """
    parser = argparse.ArgumentParser(description="an m2t-equivalence worker")
    parser.add_argument("inputs", help="folder written by m2t_core.equivalence.write_inputs")
    parser.add_argument("output", help=".npz file to write")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    result = run(read_inputs(args.inputs), args)
    np.savez(args.output, **result)
    return 0


# --------------------------------------------------------------------------------------------------
# running and comparing


def relative_difference(actual: np.ndarray, desired: np.ndarray) -> float:
    """``max|a − b| / max(max|b|, 1e-12)``, norm-wise relative (``inf`` for mismatched shapes or NaN).

    Args:
        actual: Array of one backend.
        desired: The same array of the reference.

    Returns:
        The relative difference.
    """
    a = np.asarray(actual, np.float64)
    b = np.asarray(desired, np.float64)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    diff = float(np.max(np.abs(a - b)))
    scale = max(float(np.max(np.abs(b))), _TINY)
    return math.inf if not math.isfinite(diff) else diff / scale


class NumpyReference(NamedTuple):
    """Step 1 computed in float64 by :mod:`m2t_core.reference_net`.

    Attributes:
        loss: The loss of step 1.
        z: The teacher's projections of both views.
        stats: The teacher's committed statistics (``{canonical name: array}``).
    """

    loss: float
    z: np.ndarray
    stats: dict[str, np.ndarray]


def numpy_reference(inputs: WorkerInputs) -> NumpyReference:
    """Step 1 of the scenario in float64 NumPy: teacher projections, loss, committed statistics.

    Args:
        inputs: The scenario's inputs.

    Returns:
        A :class:`NumpyReference`.
    """
    s = inputs.scenario
    alpha = stats_momentum_schedule(s.schedule_steps, s.alpha_start, s.alpha_end)(0)
    v1, v2 = inputs.batches[0, 0], inputs.batches[0, 1]
    z, committed = teacher_forward(
        inputs.arrays, np.concatenate([v1, v2]), s.model, alpha=alpha, correction=s.correction
    )
    loss, _ = step_loss(inputs.arrays, v1, v2, s.model, alpha=alpha, correction=s.correction)
    stats = {n: v for n, v in committed.items() if n.endswith((".mean", ".var"))}
    return NumpyReference(float(loss), z, stats)


#: Columns of the report: (key, header).
QUANTITIES = (
    ("loss", "loss"),
    ("teacher_stats", "t.stats"),
    ("student_params", "s.params"),
    ("teacher_params", "t.params"),
    ("z_step1_f64", "z1 vs f64"),
    ("loss_step1_f64", "loss1 vs f64"),
    ("stats_step1_f64", "stats1 vs f64"),
)
_CROSS = ("loss", "teacher_stats", "student_params", "teacher_params")


def _is_parameter(name: str) -> bool:
    # A student's BatchNorm statistics are each framework's own (torch stores the unbiased variance)
    # and take no part in training; the teacher's are compared step by step as "teacher_stats".
    return not name.endswith((".mean", ".var"))


def _group(result: Mapping[str, np.ndarray], key: str) -> dict[str, np.ndarray]:
    if key == "loss":
        return {"loss": result["loss"]}
    if key == "teacher_stats":
        return {n: v for n, v in result.items() if n.startswith("stats/")}
    network = "student" if key == "student_params" else "teacher"
    return {
        n: v
        for n, v in result.items()
        if n.startswith(f"final/{network}.") and not is_counter(n[len("final/") :]) and _is_parameter(n)
    }


def _max_difference(actual: Mapping[str, np.ndarray], desired: Mapping[str, np.ndarray]) -> tuple[float, str]:
    if set(actual) != set(desired):
        missing = sorted(set(desired) ^ set(actual))
        return math.inf, f"names differ: {missing[:3]}"
    worst, where = 0.0, ""
    for name in sorted(desired):
        d = relative_difference(actual[name], desired[name])
        if not d <= worst:  # also takes inf / NaN
            worst, where = d, name
    return worst, where


def _counters(result: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: v for n, v in result.items() if n.startswith("final/") and is_counter(n[len("final/") :])}


@dataclass
class Comparison:
    """The outcome of :func:`compare`.

    Attributes:
        tolerance: The bound every difference must stay under.
        reference: The backend the others are compared with.
        rows: ``{backend: {quantity: difference}}`` (the reference has no cross-backend entries).
        worst: ``{backend: {quantity: array name of the largest difference}}``.
        counters_ok: ``{backend: whether every integer counter equals the reference's / the expected}``.
        pairs: ``{quantity: (difference, backend_a, backend_b)}`` — the largest over all pairs.
        errors: ``{backend: error text}`` for workers that failed.
    """

    tolerance: float
    reference: str
    rows: dict[str, dict[str, float]]
    worst: dict[str, dict[str, str]]
    counters_ok: dict[str, bool]
    pairs: dict[str, tuple[float, str, str]]
    errors: dict[str, str]

    @property
    def passed(self) -> bool:
        """Every backend ran, every difference is within the tolerance, every counter is equal."""
        within = all(d <= self.tolerance for row in self.rows.values() for d in row.values())
        return not self.errors and within and all(self.counters_ok.values()) and bool(self.rows)


def compare(
    results: Mapping[str, Mapping[str, np.ndarray] | str],
    numpy_ref: NumpyReference,
    *,
    steps: int,
    reference: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Comparison:
    """Compare the backends' results with each other and step 1 with the float64 NumPy forward.

    Args:
        results: ``{backend: result arrays}`` (:meth:`Recorder.result`), or ``{backend: error text}``
            for a worker that failed.
        numpy_ref: :func:`numpy_reference` of the same scenario.
        steps: Number of steps run (every counter must show it; ``skipped`` must be 0).
        reference: Backend the others are compared with (default: the first that ran).
        tolerance: Bound on every relative difference.

    Returns:
        A :class:`Comparison`.

    Raises:
        ValueError: ``reference`` names a backend without results.
    """
    ok = {name: r for name, r in results.items() if not isinstance(r, str)}
    errors = {name: r for name, r in results.items() if isinstance(r, str)}
    if reference is None:
        reference = next(iter(ok), "")
    elif reference not in ok:
        raise ValueError(f"reference backend {reference!r} has no results; ran: {sorted(ok)}")
    rows: dict[str, dict[str, float]] = {}
    worst: dict[str, dict[str, str]] = {}
    counters_ok: dict[str, bool] = {}
    for name, result in ok.items():
        row: dict[str, float] = {}
        where: dict[str, str] = {}
        if name != reference:
            for key in _CROSS:
                row[key], where[key] = _max_difference(_group(result, key), _group(ok[reference], key))
        row["z_step1_f64"] = relative_difference(result["z_step1"], numpy_ref.z)
        row["loss_step1_f64"] = relative_difference(result["loss"][:1], np.asarray([numpy_ref.loss]))
        first = {n: v[0] for n, v in _group(result, "teacher_stats").items()}
        expected = {f"stats/{n}": v for n, v in numpy_ref.stats.items()}
        row["stats_step1_f64"], where["stats_step1_f64"] = _max_difference(first, expected)
        rows[name], worst[name] = row, where
        counters = _counters(result)
        counters_ok[name] = bool(counters) and all(
            int(v) == (0 if n.endswith(".skipped") else steps) for n, v in counters.items()
        )
    pairs: dict[str, tuple[float, str, str]] = {}
    names = list(ok)
    for key in _CROSS:
        best = (0.0, "", "")
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                d, _ = _max_difference(_group(ok[a], key), _group(ok[b], key))
                if not d <= best[0]:
                    best = (d, a, b)
        pairs[key] = best
    return Comparison(tolerance, reference, rows, worst, counters_ok, pairs, errors)


def _fmt(value: float | None) -> str:
    if value is None:
        return "(ref)"
    return "inf" if not math.isfinite(value) else f"{value:.1e}"


def format_report(comparison: Comparison) -> str:
    """The report's table, worst pairs and verdict, as text.

    Args:
        comparison: From :func:`compare`.

    Returns:
        Lines ending in ``PASS`` or ``FAIL``.
    """
    c = comparison
    headers = ["backend", *(h for _, h in QUANTITIES), "counters"]
    body = []
    for name, row in c.rows.items():
        cells = [name, *(_fmt(row.get(k)) for k, _ in QUANTITIES)]
        cells.append("ok" if c.counters_ok[name] else "WRONG")
        body.append(cells)
    for name in c.errors:
        body.append([name, "FAILED", *([""] * (len(headers) - 2))])
    widths = [max(len(r[i]) for r in [headers, *body]) for i in range(len(headers))]
    lines = [
        f"max |a - b| / max |b| per quantity: backends vs {c.reference}; step 1 vs the float64 NumPy forward "
        f"(m2t_core.reference_net); tolerance {c.tolerance:.0e}",
        "",
    ]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *body]
    ]
    if len(c.rows) > 2:
        lines.append("")
        lines.append(
            "largest difference between any two backends: "
            + ", ".join(f"{k} {_fmt(d)} ({a} vs {b})" for k, (d, a, b) in c.pairs.items() if a)
        )
    failures = []
    for name, row in c.rows.items():
        for key, d in row.items():
            if not d <= c.tolerance:
                detail = c.worst[name].get(key, "")
                failures.append(f"{name}: {key} differs by {_fmt(d)}" + (f" (at {detail})" if detail else ""))
        if not c.counters_ok[name]:
            failures.append(f"{name}: counters differ from {{step, momentum-BN step}} = steps, skipped = 0")
    failures += [f"{name}: worker failed:\n{error}" for name, error in c.errors.items()]
    lines.append("")
    if c.passed:
        lines.append(f"PASS: {len(c.rows)} backends agree within {c.tolerance:.0e}")
    else:
        lines.extend(failures)
        lines.append(f"FAIL: {len(failures)} problem(s)")
    return "\n".join(lines)


def run_backend(
    backend: Backend, directory: Path, *, dtype: str = "float64", timeout: float = 600.0
) -> dict[str, np.ndarray] | str:
    """Run one worker on the inputs in ``directory``.

    Args:
        backend: The backend.
        directory: Folder written by :func:`write_inputs`; the result goes to ``<name>.npz`` there.
        dtype: The scenario's dtype (JAX needs 64-bit mode switched on for float64 before it starts).
        timeout: Seconds before the worker is stopped.

    Returns:
        The worker's result arrays, or the tail of its error output when it failed.
    """
    output = directory / f"{backend.name}.npz"
    env = dict(os.environ)
    env.pop("KERAS_BACKEND", None)
    env.update(backend.env)
    # CPU only: on GPUs, TF32 matmuls and convolutions (torch's and XLA's defaults on recent GPUs)
    # would differ by ~1e-3 and hide what the check is for.
    env.update({"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"})
    env["JAX_ENABLE_X64"] = "1" if dtype == "float64" else "0"
    command = [sys.executable, "-m", backend.module, str(directory), str(output), *backend.args]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if done.returncode != 0 or not output.is_file():
        return f"exit status {done.returncode}\n{done.stderr[-3000:]}"
    with np.load(output) as data:
        return {name: data[name] for name in data.files}


def run_scenario(
    scenario: Scenario,
    backends: Sequence[str],
    directory: str | os.PathLike[str],
    *,
    progress: Callable[[str], None] | None = None,
    timeout: float = 600.0,
) -> tuple[dict[str, dict[str, np.ndarray] | str], NumpyReference]:
    """Write the inputs, run every backend's worker one after the other, compute the NumPy reference.

    Args:
        scenario: The run.
        backends: Names from :data:`BACKENDS`.
        directory: An existing folder for the inputs and the workers' results.
        progress: Called with one line per backend.
        timeout: Seconds allowed per worker.

    Returns:
        ``(results, numpy_reference)``: ``{backend: arrays or error text}`` and step 1 in float64.

    Raises:
        ValueError: an unknown backend name.
    """
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backends {unknown}; known: {list(BACKENDS)}")
    folder = write_inputs(scenario, directory)
    results: dict[str, dict[str, np.ndarray] | str] = {}
    for i, name in enumerate(backends, 1):
        start = time.perf_counter()
        results[name] = run_backend(BACKENDS[name], folder, dtype=scenario.dtype, timeout=timeout)
        status = "failed" if isinstance(results[name], str) else "done"
        if progress is not None:
            progress(f"[{i}/{len(backends)}] {name:<17} {status} in {time.perf_counter() - start:.1f} s")
    return results, numpy_reference(read_inputs(folder))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="m2t-equivalence",
        description=(
            "Train the same Momentum² Teacher model from the same weights on the same batches in every "
            "installed backend and report the largest differences."
        ),
    )
    parser.add_argument("--steps", type=int, default=8, help="training steps (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and batches (default 0)")
    parser.add_argument(
        "--backends",
        default=None,
        help=f"comma-separated subset of {','.join(BACKENDS)} (default: every installed one)",
    )
    parser.add_argument("--reference", default=None, help="backend to compare with (default: the first)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"bound on every difference ({DEFAULT_TOLERANCE})",
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, default="float64", help="precision of the run (default float64)"
    )
    parser.add_argument("--keep", default=None, help="folder to keep the inputs and results in")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per backend (default 600)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``m2t-equivalence`` command (see the module docstring).

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        0 on PASS, 1 on FAIL, 2 on a usage error.
    """
    args = _parse_args(argv)
    installed = available_backends()
    if args.backends is None:
        backends = installed
    else:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        unknown = [b for b in backends if b not in BACKENDS]
        missing = [b for b in backends if b in BACKENDS and b not in installed]
        if unknown or missing:
            problem = f"unknown backends {unknown}; known: {list(BACKENDS)}" if unknown else ""
            problem += f"backends not installed: {missing}" if missing else ""
            print(f"m2t-equivalence: {problem}", file=sys.stderr)
            return 2
    if not backends:
        print("m2t-equivalence: no backend is installed (torch, keras, flax)", file=sys.stderr)
        return 2
    if args.reference is not None and args.reference not in backends:
        print(f"m2t-equivalence: --reference {args.reference!r} is not among {backends}", file=sys.stderr)
        return 2
    try:
        scenario = Scenario(steps=args.steps, seed=args.seed, dtype=args.dtype)
    except ValueError as err:
        print(f"m2t-equivalence: {err}", file=sys.stderr)
        return 2
    print(f"m2t-equivalence: {scenario.describe()}")
    print(f"backends: {', '.join(backends)}", flush=True)

    def progress(line: str) -> None:
        print(line, flush=True)

    if args.keep is not None:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        results, ref = run_scenario(scenario, backends, args.keep, progress=progress, timeout=args.timeout)
    else:
        with tempfile.TemporaryDirectory(prefix="m2t-equivalence-") as tmp:
            results, ref = run_scenario(scenario, backends, tmp, progress=progress, timeout=args.timeout)
    comparison = compare(
        results, ref, steps=scenario.steps, reference=args.reference, tolerance=args.tolerance
    )
    print()
    print(format_report(comparison))
    return 0 if comparison.passed else 1


if __name__ == "__main__":
    sys.exit(main())
