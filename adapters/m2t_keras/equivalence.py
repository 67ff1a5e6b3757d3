"""The Keras worker of the cross-framework equivalence check (``m2t-equivalence``).

``KERAS_BACKEND=<tensorflow|jax|torch> python -m m2t_keras.equivalence INPUT_DIR OUTPUT_NPZ`` reads
the scenario, the initial checkpoint and the batches written by
:func:`m2t_core.equivalence.write_inputs`, trains :class:`~m2t_keras.M2Teacher` with
:func:`~m2t_keras.ReferenceNet` exactly as a user would (``compile(optimizer=...)``, then one
``train_on_batch`` per step), and writes what :class:`m2t_core.equivalence.Recorder` collects. Keras
fixes its backend once per process, so each backend is its own worker process.

Keras's own ``weight_decay`` is *decoupled* (``θ ← θ − lr·wd·θ`` beside the update, as in AdamW);
the worker trains with :class:`~m2t_keras.CoupledSGD`, which adds ``wd·θ`` to the gradient, as
``torch.optim.SGD`` and ``optax.add_decayed_weights`` do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import keras
import numpy as np

from m2t_core.equivalence import Recorder, Scenario, WorkerInputs, worker_main
from m2t_keras.interchange import from_canonical, to_canonical
from m2t_keras.models import ReferenceNet
from m2t_keras.optimizers import CoupledSGD
from m2t_keras.teacher import M2Teacher

__all__ = ["build_model", "main", "run"]


def build_model(scenario: Scenario) -> M2Teacher:
    """The scenario's M2T model with the reference backbone (weights still to be loaded).

    Args:
        scenario: The run.

    Returns:
        An :class:`~m2t_keras.M2Teacher` whose layers compute in the scenario's dtype (its momentum
        statistics stay float32, as :class:`~m2t_keras.MomentumBatchNormalization` keeps them).
    """
    keras.config.set_floatx(scenario.dtype)
    size = scenario.image_size
    return M2Teacher(
        ReferenceNet((size, size, scenario.in_channels), scenario.width),
        hidden_dim=scenario.hidden_dim,
        projection_dim=scenario.projection_dim,
        total_steps=scenario.schedule_steps,
        base_momentum=scenario.base_momentum,
        alpha_start=scenario.alpha_start,
        alpha_end=scenario.alpha_end,
        correction=scenario.correction,
    )


def _allow_float64() -> None:
    """Let Keras compute in float64 on the JAX and PyTorch backends too.

    Keras 3 maps every 64-bit result type to 32 bits on backends other than TensorFlow
    (``keras.src.backend.common.dtypes.BIT64_TO_BIT32_DTYPE``, to mirror JAX's default mode), so
    ``BatchNormalization`` and the PyTorch backend's ``matmul`` quietly compute float64 inputs in
    float32. The float64 check needs float64 arithmetic: this worker (never the library) lifts the
    mapping for floats, and switches on JAX's 64-bit mode.
    """
    from keras.src.backend.common import dtypes

    mapping = getattr(dtypes, "BIT64_TO_BIT32_DTYPE", None)
    if not isinstance(mapping, dict) or "float64" not in mapping:
        # A private Keras name: fail loudly rather than compare a float32 run with float64 ones.
        raise RuntimeError(
            f"this Keras ({keras.__version__}) has no BIT64_TO_BIT32_DTYPE mapping to lift; run "
            "m2t-equivalence with --dtype float32, or update m2t_keras.equivalence"
        )
    mapping["float64"] = "float64"
    if keras.backend.backend() == "jax":
        import jax  # the JAX backend's own framework

        jax.config.update("jax_enable_x64", True)


def _first_step_targets(model: M2Teacher, view1: np.ndarray, view2: np.ndarray) -> np.ndarray:
    """The teacher's projections of step 1 from the model's own ``call``, with every variable restored."""
    saved = [np.array(keras.ops.convert_to_numpy(v), copy=True) for v in model.variables]
    out = model((view1, view2), training=True)
    z = np.concatenate([keras.ops.convert_to_numpy(out["z1"]), keras.ops.convert_to_numpy(out["z2"])])
    for variable, value in zip(model.variables, saved, strict=True):
        variable.assign(value)
    return z


def run(inputs: WorkerInputs, args: argparse.Namespace | None = None) -> dict[str, np.ndarray]:
    """Train the scenario on the current Keras backend and return the recorded trajectory.

    Args:
        inputs: Scenario, initial arrays and batches.
        args: Unused (the worker has no options of its own).

    Returns:
        :meth:`m2t_core.equivalence.Recorder.result`.
    """
    scenario = inputs.scenario
    keras.utils.set_random_seed(scenario.seed)
    if scenario.dtype == "float64":
        _allow_float64()
    model = build_model(scenario)
    # The momentum statistics are float32 in Keras whatever the policy: store them so.
    template = to_canonical(model)
    model = from_canonical(model, {n: a.astype(template[n].dtype) for n, a in inputs.arrays.items()})
    z = _first_step_targets(model, inputs.batches[0, 0], inputs.batches[0, 1])
    model.compile(
        optimizer=CoupledSGD(
            learning_rate=scenario.learning_rate,
            momentum=scenario.momentum,
            coupled_weight_decay=scenario.weight_decay,
        )
    )
    recorder = Recorder()
    for batch in inputs.batches:
        logs = model.train_on_batch((batch[0], batch[1]), return_dict=True)
        recorder.after_step(float(logs["loss"]), to_canonical(model))
    return recorder.result(to_canonical(model), z)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the worker (see the module docstring).

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    return worker_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
