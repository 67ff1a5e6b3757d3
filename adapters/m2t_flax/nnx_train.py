"""The jit-compiled Momentum² Teacher training step for Flax NNX.

The public names are re-exported by :mod:`m2t_flax.nnx`; import them from there.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from m2t_flax import functional as mf
from m2t_flax.nnx_teacher import M2Teacher, Student

__all__ = ["make_train_step", "student_loss", "train_step", "train_step_body"]


def student_loss(
    student: Student, view1: jax.Array, view2: jax.Array, z1: jax.Array, z2: jax.Array
) -> jax.Array:
    """The symmetric BYOL loss of the student's predictions of both views against teacher targets.

    The student runs **per view**, so each view is normalised by its own batch statistics.

    Args:
        student: The student network.
        view1: First view.
        view2: Second view.
        z1: Teacher projection of ``view1``.
        z2: Teacher projection of ``view2``.

    Returns:
        ``mean_b[(2 − 2⟨p1, z2⟩) + (2 − 2⟨p2, z1⟩)]`` on L2-normalised vectors.
    """
    return mf.symmetric_loss(student(view1), student(view2), z1, z2)


def _check_optimizer(model: M2Teacher, optimizer: nnx.Optimizer) -> None:
    """Raise a clear error for an optimizer that was not built over ``model.student``.

    Only shapes are traced (``jax.eval_shape``), so this costs no computation.
    """
    if not isinstance(optimizer, nnx.Optimizer):
        raise TypeError(f"optimizer must be an nnx.Optimizer, got {type(optimizer).__name__}")
    params = nnx.as_pure(nnx.state(model.student, optimizer.wrt))
    try:
        jax.eval_shape(lambda p, s: optimizer.tx.update(p, s, p), params, nnx.as_pure(optimizer.opt_state))
    except (ValueError, TypeError) as err:
        raise ValueError(
            "the optimizer state does not match the student's parameters: build the optimizer as "
            f"nnx.Optimizer(model.student, tx, wrt=nnx.Param) ({type(err).__name__}: {err})"
        ) from err


def train_step_body(
    model: M2Teacher,
    optimizer: nnx.Optimizer,
    view1: jax.Array,
    view2: jax.Array,
    *,
    axis_name: str | None = None,
) -> jax.Array:
    """One M2T step in the normative order, eager (wrap it in a transform to compile it).

    1. read ``k``; ``m_k`` from the momentum schedule (each momentum BN reads ``α_k`` from its own
       step, which advances with ``k``);
    2. teacher ← EMA(teacher, student, ``m_k``);
    3. teacher forward of both views concatenated (one commit per momentum BN);
    4. student forward per view, the loss, gradients of the student only;
    5. optimizer step on the student; ``k ← k + 1``.

    With ``axis_name`` (inside ``jax.shard_map`` over a device mesh axis, with the model and
    optimizer replicated and the views split), each device normalises with its own batch moments;
    the gradient is that of the device-mean loss, and every floating BatchNorm statistic is
    averaged over ``axis_name`` after the forward (integer counters take the maximum), so all devices
    hold the same teacher and student. :func:`m2t_flax.parallel.make_parallel_train_step` builds
    this for you.

    Args:
        model: The :class:`M2Teacher`; updated in place.
        optimizer: ``nnx.Optimizer(model.student, tx, wrt=nnx.Param)``; updated in place.
        view1: First view, ``[B, ...]``.
        view2: Second view, same shape.
        axis_name: Name of the mapped device axis, or ``None`` on one device.

    Returns:
        The loss (averaged over devices when ``axis_name`` is given).

    Raises:
        ValueError: the optimizer was not built over ``model.student``, or the views' shapes differ.
    """
    _check_optimizer(model, optimizer)  # traced once per compilation, not per call
    model.update_teacher(model.momentum())
    z1, z2 = model.targets(view1, view2)
    if axis_name is None:
        loss, grads = nnx.value_and_grad(student_loss)(model.student, view1, view2, z1, z2)
    else:
        # Differentiate the device mean of the loss. Inside shard_map the parameters are replicated
        # (device-invariant), and autodiff of an invariant input sums its cotangents over devices, so
        # the gradient of the mean loss is already the device mean of the local gradients, identical
        # on every device: an extra pmean of the gradients would be a no-op, a gradient of the local
        # loss would be the device *sum*.
        def mean_loss(student: Student) -> jax.Array:
            return jax.lax.pmean(student_loss(student, view1, view2, z1, z2), axis_name)

        loss, grads = nnx.value_and_grad(mean_loss)(model.student)
        _sync_stats(model, axis_name)
    optimizer.update(model.student, grads)
    model.step[...] += 1
    return loss


def _sync_stats(model: M2Teacher, axis_name: str) -> None:
    """Average the floating BatchStats over devices; integer counters take the maximum."""
    stats = nnx.state(model, nnx.BatchStat)

    def sync(x: jax.Array) -> jax.Array:
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jax.lax.pmean(x, axis_name)
        return jax.lax.pmax(x, axis_name)

    nnx.update(model, jax.tree.map(sync, stats))


@nnx.jit
def train_step(model: M2Teacher, optimizer: nnx.Optimizer, view1: jax.Array, view2: jax.Array) -> jax.Array:
    """One M2T training step compiled with ``nnx.jit`` (the steps of :func:`train_step_body`).

    Simple and general: any ``model``/``optimizer`` pair can be passed on every call, and both are
    updated in place. ``nnx.jit`` traverses the object graph on every call, which costs a few
    milliseconds; :func:`make_train_step` binds the objects once and is several times cheaper per
    call on small models.

    Args:
        model: The :class:`M2Teacher`.
        optimizer: ``nnx.Optimizer(model.student, tx, wrt=nnx.Param)``.
        view1: First view, ``[B, ...]``.
        view2: Second view, same shape.

    Returns:
        The loss of this step (computed before the optimizer update).

    Raises:
        ValueError: the optimizer was not built over ``model.student``, or the views' shapes differ.
    """
    return train_step_body(model, optimizer, view1, view2)


def make_train_step(
    model: M2Teacher, optimizer: nnx.Optimizer
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A compiled training step bound to ``model`` and ``optimizer``: ``step(view1, view2) -> loss``.

    Equivalent to :func:`train_step` but several times cheaper per call on small models: ``model``
    and ``optimizer`` are flattened once, in NNX's tree mode (``nnx.jit_partial(..., graph=False)``),
    so each call only moves arrays; both objects are updated in place after every call. A model
    with shared submodules or variables cannot be flattened in tree mode; it gets the graph-mode
    ``nnx.cached_partial`` instead (slower per call, same results). Do not change the structure of
    ``model`` or ``optimizer`` (add or remove modules or variables) while the step is in use; build
    a new one instead.

    Args:
        model: The :class:`M2Teacher`.
        optimizer: ``nnx.Optimizer(model.student, tx, wrt=nnx.Param)``.

    Returns:
        ``step(view1, view2) -> loss``.

    Raises:
        ValueError: the optimizer does not track exactly the student's parameters.
    """
    _check_optimizer(model, optimizer)
    try:
        return nnx.jit_partial(train_step_body, model, optimizer, graph=False)
    except ValueError:
        # Tree mode rejects aliased variables (a module reachable by two paths); graph mode keeps
        # the aliasing at the cost of a graph traversal per call.
        return nnx.cached_partial(train_step, model, optimizer)
