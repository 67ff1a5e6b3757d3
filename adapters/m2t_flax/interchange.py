"""Export and import a whole Flax M2T model (NNX or Linen) in the framework-neutral checkpoint format.

The format (:mod:`m2t_core.checkpoint`) is a flat ``{canonical name: NumPy array}`` mapping in one
safetensors file, readable by ``m2t_torch`` and ``m2t_keras`` too::

    from m2t_flax.interchange import export_checkpoint, import_checkpoint

    export_checkpoint(model, "m2t.safetensors")          # NNX: an m2t_flax.nnx.M2Teacher
    import_checkpoint(model, "m2t.safetensors")          # in place
    export_checkpoint(state, "m2t.safetensors")          # Linen: an m2t_flax.linen_teacher.M2TState
    state = import_checkpoint(state, "m2t.safetensors")  # returns a new state

Flax already keeps the canonical layouts — ``Linear``/``Dense`` kernels ``[in, out]``, ``Conv``
kernels HWIO, BatchNorm ``scale``/``bias``/``mean``/``var``, momentum BN also ``step``/``skipped`` —
so a canonical name is the variable's path joined by dots, e.g. ``student.backbone.stem.conv.kernel``
(NNX: the path in ``nnx.state(model)``; Linen: ``student``/``teacher`` + the path in ``params`` or
``batch_stats``). ``step`` is the model's step. Only parameters and BatchNorm statistics are stored:
the optimizer state is not part of the format. Integer counters are int32 in Flax and int64 in the
file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m2t_core.checkpoint import check_matches, load_checkpoint, model_config, save_checkpoint
from m2t_flax.linen_teacher import M2TState
from m2t_flax.models import ReferenceNet
from m2t_flax.nnx_layers import MomentumBatchNorm
from m2t_flax.nnx_teacher import M2Teacher

__all__ = ["checkpoint_config", "export_checkpoint", "from_canonical", "import_checkpoint", "to_canonical"]

_STATE = (nnx.Param, nnx.BatchStat)


def _flatten(tree: Mapping[Any, Any], prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            _flatten(value, name, out)
        else:
            out[name] = value
    return out


def _unflatten_into(tree: Mapping[Any, Any], prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[Any, Any]:
    """A copy of ``tree`` with every leaf replaced by ``arrays[name]`` in the leaf's dtype."""
    out: dict[Any, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out[key] = _unflatten_into(value, name, arrays)
        else:
            out[key] = jnp.asarray(np.asarray(arrays[name]).astype(np.dtype(value.dtype)))
    return out


def _spec(value: Any) -> jax.ShapeDtypeStruct:
    """Shape and canonical dtype of a leaf, without reading it (leaves may be abstract)."""
    dtype = np.dtype(value.dtype)
    return jax.ShapeDtypeStruct(
        tuple(value.shape), np.dtype(np.int64) if np.issubdtype(dtype, np.integer) else dtype
    )


def _numpy(value: Any) -> np.ndarray:
    array = np.array(jax.device_get(value), copy=True)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    return array


def _check_model(obj: Any) -> None:
    if not isinstance(obj, (M2Teacher, M2TState)):
        raise TypeError(
            "expected an m2t_flax.nnx.M2Teacher or an m2t_flax.linen_teacher.M2TState, got "
            f"{type(obj).__name__}"
        )


def _nnx_tree(model: M2Teacher) -> dict[Any, Any]:
    return nnx.to_pure_dict(nnx.state(model, _STATE))


def _linen_tree(state: M2TState) -> dict[Any, Any]:
    tree: dict[Any, Any] = {"step": state.step}
    for network in ("student", "teacher"):
        variables = getattr(state, network)
        merged: dict[Any, Any] = {}
        for collection in ("params", "batch_stats"):
            for name, value in _flatten(variables.get(collection, {}), "", {}).items():
                merged[name] = value
        tree[network] = merged
    return tree


def to_canonical(model: M2Teacher | M2TState) -> dict[str, np.ndarray]:
    """The whole model as canonical arrays (host copies; nothing is changed).

    Args:
        model: An NNX :class:`~m2t_flax.nnx.M2Teacher` or a Linen
            :class:`~m2t_flax.linen_teacher.M2TState`.

    Returns:
        ``{canonical name: array}``: student, teacher (statistics and counters) and ``step``.

    Raises:
        TypeError: any other object.
    """
    return {name: _numpy(value) for name, value in sorted(_leaves(model).items())}


def _leaves(model: M2Teacher | M2TState) -> dict[str, Any]:
    _check_model(model)
    tree = _nnx_tree(model) if isinstance(model, M2Teacher) else _linen_tree(model)
    return _flatten(tree, "", {})


def from_canonical(model: M2Teacher | M2TState, arrays: Mapping[str, np.ndarray]) -> M2Teacher | M2TState:
    """Load canonical arrays into a Flax model (exact: no arithmetic, only dtype-preserving copies).

    Everything is checked first (names, shapes, dtypes against the model's own), so a mismatch
    changes nothing. The model may be *abstract* — built with ``nnx.eval_shape`` (NNX) or
    ``jax.eval_shape(m2t.init_state, ...)`` (Linen), its leaves ``jax.ShapeDtypeStruct`` — which
    loads a checkpoint without computing (or compiling) any initialisation.

    Args:
        model: An NNX ``M2Teacher`` (updated in place and returned) or a Linen ``M2TState`` (left
            unchanged; a new state is returned with the same optimizer state, which for an abstract
            state is still abstract: set it with ``state.replace(opt_state=tx.init(...))``).
        arrays: ``{canonical name: array}``.

    Returns:
        The NNX model, or the new Linen state.

    Raises:
        TypeError: ``model`` is neither.
        ValueError: missing, unexpected, mis-shaped or mis-typed arrays (all named in the message).
    """
    template = {name: _spec(value) for name, value in _leaves(model).items()}
    check_matches(arrays, template, target=f"this {type(model).__name__}")
    if isinstance(model, M2Teacher):
        state = nnx.state(model, _STATE)
        nnx.replace_by_pure_dict(state, _unflatten_into(nnx.to_pure_dict(state), "", arrays))
        nnx.update(model, state)
        return model
    replaced: dict[str, Any] = {"step": _unflatten_into({"step": model.step}, "", arrays)["step"]}
    for network in ("student", "teacher"):
        variables = dict(getattr(model, network))
        for collection in ("params", "batch_stats"):
            variables[collection] = _unflatten_into(variables.get(collection, {}), network, arrays)
        replaced[network] = variables
    return model.replace(**replaced)


def checkpoint_config(model: M2Teacher | M2TState) -> dict[str, Any]:
    """The ``config`` that :func:`export_checkpoint` writes: backbone description and hyperparameters.

    Args:
        model: An NNX ``M2Teacher`` or a Linen ``M2TState`` (which carries its own config).

    Returns:
        A JSON-ready dict (:func:`m2t_core.checkpoint.model_config`).

    Raises:
        TypeError: ``model`` is neither.
    """
    _check_model(model)
    if isinstance(model, M2TState):
        return json.loads(model.config)
    backbone = model.student.backbone
    described = (
        backbone.describe()
        if isinstance(backbone, ReferenceNet)
        else {"architecture": type(backbone).__name__}
    )
    projector = model.student.projector
    bn = next(
        (node for _, node in nnx.iter_graph(model.teacher) if isinstance(node, MomentumBatchNorm)), None
    )
    momentum = model.momentum_schedule
    return model_config(
        framework="flax-nnx",
        backbone=described,
        feature_dim=projector.linear1.in_features,
        hidden_dim=projector.linear1.out_features,
        projection_dim=projector.linear2.out_features,
        total_steps=momentum.total_steps,
        base_momentum=momentum.start,
        final_momentum=momentum.end,
        alpha_start=0.0 if bn is None else bn.alpha_start,
        alpha_end=0.0 if bn is None else bn.alpha_end,
        correction="biased" if bn is None else bn.correction,
    )


def export_checkpoint(model: M2Teacher | M2TState, path: str | os.PathLike[str]) -> Path:
    """Write the whole model to one safetensors file in the framework-neutral format.

    Args:
        model: An NNX ``M2Teacher`` or a Linen ``M2TState``.
        path: File to write (overwritten if present).

    Returns:
        The path written.

    Raises:
        TypeError: ``model`` is neither.
        ImportError: safetensors is not installed.
    """
    return save_checkpoint(path, to_canonical(model), config=checkpoint_config(model))


def import_checkpoint(model: M2Teacher | M2TState, path: str | os.PathLike[str]) -> M2Teacher | M2TState:
    """Load a checkpoint file (from any adapter) into a Flax model.

    Args:
        model: An NNX ``M2Teacher`` (updated in place) or a Linen ``M2TState``.
        path: A file written by any adapter's ``export_checkpoint``.

    Returns:
        The NNX model, or a new Linen state.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an m2t checkpoint, or arrays that do not fit the model.
        ImportError: safetensors is not installed.
    """
    return from_canonical(model, load_checkpoint(path).arrays)
