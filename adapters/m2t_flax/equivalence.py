"""The Flax workers of the cross-framework equivalence check (``m2t-equivalence``).

``python -m m2t_flax.equivalence INPUT_DIR OUTPUT_NPZ --api nnx|linen`` reads the scenario, the
initial checkpoint and the batches written by :func:`m2t_core.equivalence.write_inputs`, trains the
reference model with the chosen API exactly as a user would — NNX: :class:`~m2t_flax.nnx.M2Teacher`
and :func:`~m2t_flax.nnx.make_train_step`; Linen: :class:`~m2t_flax.linen_teacher.M2Teacher` and its
``make_train_step`` — with ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum))``
(weight decay coupled: added to the gradient, as ``torch.optim.SGD`` does), and writes what
:class:`m2t_core.equivalence.Recorder` collects.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from m2t_core.equivalence import Recorder, Scenario, WorkerInputs, worker_main
from m2t_flax import linen_teacher
from m2t_flax.interchange import from_canonical, to_canonical
from m2t_flax.models import ReferenceNet
from m2t_flax.nnx_teacher import M2Teacher
from m2t_flax.nnx_train import make_train_step

__all__ = ["APIS", "coupled_sgd", "main", "run"]

#: The Flax APIs the worker can train with.
APIS = ("nnx", "linen")


def coupled_sgd(scenario: Scenario) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay: ``g ← g + wd·θ`` before the momentum trace.

    Args:
        scenario: The run (learning rate, momentum, weight decay).

    Returns:
        The optax transformation (the same update as ``torch.optim.SGD(weight_decay=wd)``).
    """
    return optax.chain(
        optax.add_decayed_weights(scenario.weight_decay),
        optax.sgd(scenario.learning_rate, momentum=scenario.momentum),
    )


def _cast(tree: Any, dtype: str) -> Any:
    """Floating leaves in ``dtype`` (Flax layers create float32 parameters unless told otherwise)."""

    def cast(x: Any) -> Any:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype))
        return x.astype(dtype)

    return jax.tree.map(cast, tree)


def _run_nnx(inputs: WorkerInputs) -> dict[str, np.ndarray]:
    s = inputs.scenario

    def build() -> M2Teacher:
        rngs = nnx.Rngs(s.seed)
        return M2Teacher(
            ReferenceNet(s.in_channels, s.width, rngs=rngs),
            hidden_dim=s.hidden_dim,
            projection_dim=s.projection_dim,
            total_steps=s.schedule_steps,
            base_momentum=s.base_momentum,
            alpha_start=s.alpha_start,
            alpha_end=s.alpha_end,
            correction=s.correction,
            rngs=rngs,
        )

    @nnx.jit
    def probe(model: M2Teacher, view1: jax.Array, view2: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Step 1's teacher forward with the step's own methods: EMA, then targets.
        model.update_teacher(model.momentum())
        return model.targets(view1, view2)

    # Abstract (shapes only): the checkpoint provides every value, so nothing is initialised.
    model = nnx.eval_shape(build)
    nnx.update(model, _cast(nnx.state(model, (nnx.Param, nnx.BatchStat)), s.dtype))
    from_canonical(model, inputs.arrays)
    optimizer = nnx.Optimizer(model.student, coupled_sgd(s), wrt=nnx.Param)
    view1, view2 = jnp.asarray(inputs.batches[0, 0]), jnp.asarray(inputs.batches[0, 1])
    z = np.concatenate([np.asarray(t) for t in probe(nnx.clone(model), view1, view2)])
    step = make_train_step(model, optimizer)
    recorder = Recorder()
    for batch in inputs.batches:
        loss = step(jnp.asarray(batch[0]), jnp.asarray(batch[1]))
        recorder.after_step(float(loss), to_canonical(model))
    return recorder.result(to_canonical(model), z)


def _run_linen(inputs: WorkerInputs) -> dict[str, np.ndarray]:
    s = inputs.scenario
    m2t = linen_teacher.M2Teacher.reference(
        width=s.width,
        hidden_dim=s.hidden_dim,
        projection_dim=s.projection_dim,
        total_steps=s.schedule_steps,
        base_momentum=s.base_momentum,
        alpha_start=s.alpha_start,
        alpha_end=s.alpha_end,
        correction=s.correction,
    )
    tx = coupled_sgd(s)
    view1, view2 = jnp.asarray(inputs.batches[0, 0]), jnp.asarray(inputs.batches[0, 1])
    # Abstract (shapes only): the checkpoint provides every value, so nothing is initialised.
    state = jax.eval_shape(lambda key, view: m2t.init_state(key, view, tx), jax.random.key(s.seed), view1)
    state = state.replace(student=_cast(state.student, s.dtype), teacher=_cast(state.teacher, s.dtype))
    state = from_canonical(state, inputs.arrays)
    state = state.replace(opt_state=tx.init(state.student["params"]))
    z1, z2, _ = jax.jit(m2t.targets)(state, view1, view2)
    step = m2t.make_train_step(tx)
    recorder = Recorder()
    for batch in inputs.batches:
        state, loss = step(state, jnp.asarray(batch[0]), jnp.asarray(batch[1]))
        recorder.after_step(float(loss), to_canonical(state))
    return recorder.result(to_canonical(state), np.concatenate([np.asarray(z1), np.asarray(z2)]))


def run(inputs: WorkerInputs, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Train the scenario with ``args.api`` and return the recorded trajectory.

    Args:
        inputs: Scenario, initial arrays and batches.
        args: Parsed options (``api``: ``"nnx"`` or ``"linen"``).

    Returns:
        :meth:`m2t_core.equivalence.Recorder.result`.
    """
    # float64 needs JAX's 64-bit mode, switched on before any array exists (the parent sets
    # JAX_ENABLE_X64 too; this covers a worker started by hand).
    jax.config.update("jax_enable_x64", inputs.scenario.dtype == "float64")
    return _run_nnx(inputs) if args.api == "nnx" else _run_linen(inputs)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", choices=APIS, default="nnx", help="Flax API to train with (default nnx)")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the worker (see the module docstring).

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    return worker_main(run, argv, extra=_options)


if __name__ == "__main__":
    sys.exit(main())
