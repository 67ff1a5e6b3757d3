"""Data-parallel Momentum² Teacher training over several devices, without SyncBN.

Momentum statistics make cross-device BatchNorm unnecessary: each device normalises its own share
of the batch with its own per-view moments mixed with the shared history, so the forward needs no
communication at all. After the forward, the devices agree again: the loss, the student's gradients
and every BatchNorm statistic are averaged over the device axis (integer counters take the
maximum), so the committed momentum statistics are the mean of the per-device commits and every
device holds the same teacher and student.

Built on ``jax.shard_map`` over a one-dimensional device mesh; the model and optimizer state are
replicated, the views are split along the batch axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from m2t_flax.nnx_teacher import M2Teacher
from m2t_flax.nnx_train import _check_optimizer, train_step_body

__all__ = ["make_parallel_train_step"]


def make_parallel_train_step(
    model: M2Teacher,
    optimizer: nnx.Optimizer,
    *,
    devices: Sequence[jax.Device] | None = None,
    axis_name: str = "data",
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A compiled data-parallel training step: ``step(view1, view2) -> loss``.

    Each call splits both views along axis 0 into one equal share per device, runs the normative
    M2T step on every device with its own batch moments (see
    :func:`~m2t_flax.nnx.train_step_body` with ``axis_name``), averages gradients and statistics
    across devices, and writes the new state back into ``model`` and ``optimizer`` (replicated on
    the devices). With one device it computes what :func:`~m2t_flax.nnx.train_step` computes.

    Args:
        model: The :class:`~m2t_flax.nnx.M2Teacher`.
        optimizer: ``nnx.Optimizer(model.student, tx, wrt=nnx.Param)``.
        devices: Devices to use (default: all of ``jax.devices()``).
        axis_name: Name of the device axis of the mesh.

    Returns:
        ``step(view1, view2) -> loss``; the batch size must be a multiple of the device count.

    Raises:
        ValueError: no devices, or the optimizer does not track exactly the student's parameters.
            The returned step raises ``ValueError`` when the device count does not divide the batch.
    """
    _check_optimizer(model, optimizer)
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("devices must name at least one device")
    mesh = Mesh(np.asarray(devs), (axis_name,))
    graphdef = nnx.graphdef((model, optimizer))
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P(axis_name))

    def local_step(state: nnx.State, view1: jax.Array, view2: jax.Array) -> tuple[jax.Array, nnx.State]:
        local_model, local_optimizer = nnx.merge(graphdef, state)
        loss = train_step_body(local_model, local_optimizer, view1, view2, axis_name=axis_name)
        return loss, nnx.state((local_model, local_optimizer))

    compiled = jax.jit(
        jax.shard_map(
            local_step,
            mesh=mesh,
            in_specs=(P(), P(axis_name), P(axis_name)),
            out_specs=(P(), P()),
        )
    )

    def step(view1: jax.Array, view2: jax.Array) -> jax.Array:
        for name, view in (("view1", view1), ("view2", view2)):
            if np.shape(view)[0] % len(devs):
                raise ValueError(
                    f"{name} has batch size {np.shape(view)[0]}, which the {len(devs)} devices do not divide"
                )
        # Read the state from the objects on every call, so that changes made between calls (a
        # restored checkpoint, a new learning rate) are seen; device_put is a no-op once replicated.
        state = jax.device_put(nnx.state((model, optimizer)), replicated)
        loss, new_state = compiled(state, jax.device_put(view1, batch), jax.device_put(view2, batch))
        nnx.update((model, optimizer), new_state)
        return loss

    return step
