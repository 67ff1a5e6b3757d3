"""Export and import a whole :class:`~m2t_keras.M2Teacher` in the framework-neutral checkpoint format.

The format (:mod:`m2t_core.checkpoint`) is a flat ``{canonical name: NumPy array}`` mapping in one
safetensors file, readable by ``m2t_torch`` and ``m2t_flax`` too, on every Keras backend::

    from m2t_keras.interchange import export_checkpoint, import_checkpoint

    export_checkpoint(model, "m2t.safetensors")      # student, teacher, statistics, counters, step
    import_checkpoint(other_model, "m2t.safetensors")  # same architecture; checked before writing

Keras already keeps the canonical layouts (``Dense`` kernels ``[in, out]``, ``Conv`` kernels HWIO),
so only names change. A canonical name is ``<part>.<layer path>.<leaf>``, where the layer path is
the layer's name with every ``-`` read as ``.`` (Keras's PyTorch backend rejects dots in layer names),
prefixed by the names of nested Functional/Sequential models:

===============================  ===============================================  ====================
Keras layer                      variables                                        canonical leaves
===============================  ===============================================  ====================
``Dense``, ``Conv*``             ``kernel``, ``bias``                             same
``BatchNormalization``           ``gamma``, ``beta``, ``moving_mean``,            ``scale``, ``bias``,
                                 ``moving_variance``                              ``mean``, ``var``
``MomentumBatchNormalization``   the above, ``step``, ``skipped``                 the above, ``step``,
                                                                                  ``skipped``
heads (:func:`projection_head`)  layers ``dense_hidden``, ``bn``, ``dense_out``    ``linear1``, ``bn``,
                                                                                  ``linear2``
===============================  ===============================================  ====================

Variables of other layers are stored under their own names (``<layer path>.<variable name>``). The
reference backbone (:func:`~m2t_keras.ReferenceNet`) names its layers by the canonical module paths
(``stem.conv``, ``stage2.shortcut.bn``, ...), so its checkpoints move to and from PyTorch and Flax.
The optimizer state is not part of the format.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np
from keras.src.models.functional import Functional

from m2t_core.checkpoint import check_matches, load_checkpoint, model_config, save_checkpoint
from m2t_core.reference_net import backbone_description
from m2t_keras.layers import MomentumBatchNormalization
from m2t_keras.teacher import M2Teacher

__all__ = ["checkpoint_config", "export_checkpoint", "from_canonical", "import_checkpoint", "to_canonical"]

_HEAD_NAMES = {"dense_hidden": "linear1", "bn": "bn", "dense_out": "linear2"}
_BN_VARIABLES = {"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}
_REFERENCE_LAYERS = ("stem-conv", "stage1-conv1", "stage2-conv1", "stage2-shortcut-conv")


def _path(layer_name: str) -> str:
    # "-" in a layer name separates module-path segments: Keras's PyTorch backend rejects dots.
    return layer_name.replace("-", ".")


def _layer_variables(layer: keras.layers.Layer) -> Iterator[tuple[str, Any]]:
    if isinstance(layer, (keras.layers.BatchNormalization, MomentumBatchNormalization)):
        names = dict(_BN_VARIABLES)
        if isinstance(layer, MomentumBatchNormalization):
            names.update(step="step", skipped="skipped")
        for attr, leaf in names.items():
            variable = getattr(layer, attr, None)
            if variable is not None:
                yield leaf, variable
        return
    for variable in layer.weights:
        yield variable.name, variable


def _entries(
    model: keras.Model, prefix: str, rename: Mapping[str, str] | None = None
) -> Iterator[tuple[str, Any]]:
    for layer in model.layers:
        name = (rename or {}).get(layer.name, _path(layer.name))
        if isinstance(layer, (keras.Sequential, Functional)):
            yield from _entries(layer, f"{prefix}.{name}")
            continue
        for leaf, variable in _layer_variables(layer):
            yield f"{prefix}.{name}.{leaf}", variable


def _variables(model: M2Teacher) -> dict[str, Any]:
    if not isinstance(model, M2Teacher):
        raise TypeError(f"expected an m2t_keras.M2Teacher, got {type(model).__name__}")
    parts = [
        ("student.backbone", model.student_backbone, None),
        ("student.projector", model.student_projector, _HEAD_NAMES),
        ("student.predictor", model.predictor, _HEAD_NAMES),
        ("teacher.backbone", model.teacher_backbone, None),
        ("teacher.projector", model.teacher_projector, _HEAD_NAMES),
    ]
    out: dict[str, Any] = {"step": model.step}
    for prefix, network, rename in parts:
        for name, variable in _entries(network, prefix, rename):
            if name in out:
                raise ValueError(
                    f"two variables map to the canonical name {name!r}: give the layers of the backbone "
                    "unique names (and nested models unique names too)"
                )
            out[name] = variable
    return out


def _numpy(variable: Any) -> np.ndarray:
    array = np.array(keras.ops.convert_to_numpy(variable), copy=True)
    return array.astype(np.int64) if np.issubdtype(array.dtype, np.integer) else array


class _Spec(NamedTuple):
    """Canonical shape and dtype of a variable (what the checks compare), read without copying it."""

    shape: tuple[int, ...]
    dtype: np.dtype


def _spec(variable: Any) -> _Spec:
    dtype = np.dtype(keras.backend.standardize_dtype(variable.dtype))
    return _Spec(tuple(variable.shape), np.dtype(np.int64) if np.issubdtype(dtype, np.integer) else dtype)


def to_canonical(model: M2Teacher) -> dict[str, np.ndarray]:
    """The whole model as canonical arrays (host copies; the model is not changed).

    Args:
        model: An :class:`~m2t_keras.M2Teacher`.

    Returns:
        ``{canonical name: array}``: student, teacher (statistics and counters) and ``step``.

    Raises:
        TypeError: ``model`` is not an ``M2Teacher``.
        ValueError: two variables map to one name (layers with equal names in nested models).
    """
    return {name: _numpy(v) for name, v in sorted(_variables(model).items())}


def from_canonical(model: M2Teacher, arrays: Mapping[str, np.ndarray]) -> M2Teacher:
    """Load canonical arrays into ``model`` in place (exact: plain assignments, no arithmetic).

    Everything is checked first — names, shapes, dtypes against the model's own canonical arrays —
    so a mismatch changes nothing.

    Args:
        model: The target :class:`~m2t_keras.M2Teacher`, built with the checkpoint's architecture.
        arrays: ``{canonical name: array}``.

    Returns:
        ``model``.

    Raises:
        TypeError: ``model`` is not an ``M2Teacher``.
        ValueError: missing, unexpected, mis-shaped or mis-typed arrays (all named in the message).
    """
    variables = _variables(model)
    check_matches(arrays, {n: _spec(v) for n, v in variables.items()}, target=f"this {type(model).__name__}")
    for name, variable in variables.items():
        variable.assign(np.asarray(arrays[name]).astype(keras.backend.standardize_dtype(variable.dtype)))
    return model


def _describe_backbone(backbone: keras.Model) -> dict[str, Any]:
    layers = {layer.name: layer for layer in backbone.layers}
    if all(name in layers for name in _REFERENCE_LAYERS):
        stem = layers["stem-conv"]
        return backbone_description(int(backbone.inputs[0].shape[-1]), int(stem.filters))
    return {"architecture": type(backbone).__name__}


def checkpoint_config(model: M2Teacher) -> dict[str, Any]:
    """The ``config`` that :func:`export_checkpoint` writes: backbone description and hyperparameters.

    A backbone with the reference layer names is described as the reference architecture.

    Args:
        model: An :class:`~m2t_keras.M2Teacher`.

    Returns:
        A JSON-ready dict (:func:`m2t_core.checkpoint.model_config`).
    """
    momentum, alpha = model.teacher_momentum, model.stats_momentum
    return model_config(
        framework=f"keras-{keras.backend.backend()}",
        backbone=_describe_backbone(model.student_backbone),
        feature_dim=model.feature_dim,
        hidden_dim=model.hidden_dim,
        projection_dim=model.projection_dim,
        total_steps=model.total_steps,
        base_momentum=momentum.start,
        final_momentum=momentum.end,
        alpha_start=alpha.start,
        alpha_end=alpha.end,
        correction=model.correction,
    )


def export_checkpoint(model: M2Teacher, path: str | os.PathLike[str]) -> Path:
    """Write the whole model to one safetensors file in the framework-neutral format.

    Args:
        model: An :class:`~m2t_keras.M2Teacher`.
        path: File to write (overwritten if present).

    Returns:
        The path written.

    Raises:
        TypeError: ``model`` is not an ``M2Teacher``.
        ImportError: safetensors is not installed.
    """
    return save_checkpoint(path, to_canonical(model), config=checkpoint_config(model))


def import_checkpoint(model: M2Teacher, path: str | os.PathLike[str]) -> M2Teacher:
    """Load a checkpoint file (from any adapter) into ``model`` in place.

    Args:
        model: The target :class:`~m2t_keras.M2Teacher`, built with the checkpoint's architecture.
        path: A file written by any adapter's ``export_checkpoint``.

    Returns:
        ``model``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an m2t checkpoint, or arrays that do not fit the model.
        ImportError: safetensors is not installed.
    """
    return from_canonical(model, load_checkpoint(path).arrays)
