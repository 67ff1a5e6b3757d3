"""Save and restore the whole training state of an NNX model with orbax-checkpoint.

The state is everything that a resumed run needs to continue exactly: the student's and the
teacher's parameters, every BatchNorm statistic (including the momentum statistics and their
``step``/``skipped`` counters), the model's step counter and the optimizer (its optax state and step).
It is stored as a nested dict of arrays, so a checkpoint can be read without this package
(``orbax.checkpoint.StandardCheckpointer().restore(path)``).

Example::

    save_checkpoint("/tmp/run/step_1000", model, optimizer)
    # ... later, in a fresh process, with objects built the same way:
    restore_checkpoint("/tmp/run/step_1000", model, optimizer)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

__all__ = ["restore_checkpoint", "save_checkpoint"]


def _tree(model: Any, optimizer: Any | None) -> dict[str, Any]:
    tree = {"model": nnx.to_pure_dict(nnx.state(model))}
    if optimizer is not None:
        tree["optimizer"] = nnx.to_pure_dict(nnx.state(optimizer))
    return tree


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """Leaf path (keys joined by '.') to shape, for array metadata and arrays alike."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
        for path, leaf in flat
    }


def _mismatches(stored: dict[str, tuple[int, ...]], wanted: dict[str, tuple[int, ...]]) -> list[str]:
    problems = [f"{k} is missing from the checkpoint" for k in sorted(set(wanted) - set(stored))]
    problems += [
        f"{k} is in the checkpoint but not in the objects" for k in sorted(set(stored) - set(wanted))
    ]
    problems += [
        f"{k} has shape {wanted[k]} but the checkpoint stores {stored[k]}"
        for k in sorted(set(stored) & set(wanted))
        if stored[k] != wanted[k]
    ]
    return problems


def save_checkpoint(
    path: str | os.PathLike[str], model: Any, optimizer: Any | None = None, *, force: bool = False
) -> Path:
    """Write the whole state of ``model`` (and ``optimizer``) to the directory ``path``.

    Blocks until the checkpoint is complete on disk.

    Args:
        path: Checkpoint directory (made absolute; its parent is created).
        model: An NNX module, e.g. :class:`~m2t_flax.nnx.M2Teacher`.
        optimizer: Its ``nnx.Optimizer``, or ``None`` to save the model only.
        force: Overwrite an existing checkpoint at ``path``.

    Returns:
        The absolute checkpoint path.

    Raises:
        ValueError: ``path`` exists and ``force`` is False.
    """
    target = Path(path).absolute()
    if target.exists() and not force:
        raise ValueError(
            f"checkpoint directory {str(target)!r} already exists; pass force=True to overwrite it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(target, _tree(model, optimizer), force=force)
    return target


def restore_checkpoint(path: str | os.PathLike[str], model: Any, optimizer: Any | None = None) -> None:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``), in place.

    The objects must be built the same way as the saved ones (same structure, shapes and dtypes);
    their current values are replaced. Arrays are restored with the dtypes and shardings of the
    current values.

    Args:
        path: Checkpoint directory.
        model: The NNX module to load into.
        optimizer: Its ``nnx.Optimizer`` (``None`` restores the model only, e.g. for evaluation).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: the checkpoint's structure or shapes do not match the objects.
    """
    source = Path(path).absolute()
    if not source.exists():
        raise FileNotFoundError(f"no checkpoint at {str(source)!r}")
    target = _tree(model, optimizer)
    with ocp.StandardCheckpointer() as checkpointer:
        stored = checkpointer.metadata(source).item_metadata
        if optimizer is not None and "optimizer" not in stored:
            raise ValueError(f"the checkpoint at {str(source)!r} holds no optimizer state")
        if optimizer is None and "optimizer" in stored:
            # Restoring needs the whole stored tree; read the optimizer part as plain arrays.
            target["optimizer"] = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored["optimizer"]
            )
        # Compare before restoring: a restore that fails half way leaves orbax's reads pending.
        problems = _mismatches(_shapes(stored), _shapes(target))
        if problems:
            raise ValueError(
                f"the checkpoint at {str(source)!r} does not match the objects to restore into "
                f"(build them as the saved ones were built): {'; '.join(problems[:5])}"
                + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            )
        restored = checkpointer.restore(source, target)
    for key, node in (("model", model), ("optimizer", optimizer)):
        if node is not None:
            state = nnx.state(node)
            nnx.replace_by_pure_dict(state, restored[key])
            nnx.update(node, state)
