"""Export and import a whole :class:`~m2t_torch.M2Teacher` in the framework-neutral checkpoint format.

The format (:mod:`m2t_core.checkpoint`) is a flat ``{canonical name: NumPy array}`` mapping in one
safetensors file, readable by ``m2t_keras`` and ``m2t_flax`` too::

    from m2t_torch import export_checkpoint, import_checkpoint

    export_checkpoint(model, "m2t.safetensors")     # student, teacher, statistics, counters, step
    import_checkpoint(other_model, "m2t.safetensors")  # same architecture; checked before writing

Name mapping from torch module paths to canonical names:

=============================  ===================================  ==================================
torch module                   torch name                           canonical name (layout)
=============================  ===================================  ==================================
``nn.Linear``                  ``weight`` ``[out, in]``, ``bias``    ``kernel`` ``[in, out]``, ``bias``
``nn.Conv1d/2d/3d``            ``weight`` ``[out, in, *k]``          ``kernel`` ``[*k, in, out]``
``nn.BatchNorm*``              ``weight``, ``bias``,                 ``scale``, ``bias``, ``mean``,
                               ``running_mean``, ``running_var``     ``var`` (torch's unbiased var)
``MomentumBatchNorm``          the above, ``num_batches_tracked``,   the above, ``step``, ``skipped``
                               ``skipped``
``MLPHead`` children           ``0``, ``1``, ``3``                   ``linear1``, ``bn``, ``linear2``
``M2Teacher.step``             ``step``                              ``step``
=============================  ===================================  ==================================

A plain BatchNorm's ``num_batches_tracked`` is not part of the format (no other framework has it);
importing leaves it as it is. Parameters and persistent buffers of any other module are stored under
their torch name and layout (``<module path>.<name>``); such checkpoints move only between torch models.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from m2t_core.checkpoint import check_matches, load_checkpoint, model_config, save_checkpoint
from m2t_torch.batchnorm import MomentumBatchNorm
from m2t_torch.models import ReferenceNet
from m2t_torch.networks import MLPHead
from m2t_torch.teacher import M2Teacher, _unwrap

__all__ = ["checkpoint_config", "export_checkpoint", "from_canonical", "import_checkpoint", "to_canonical"]

_HEAD_NAMES = {"0": "linear1", "1": "bn", "3": "linear2"}
_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


class _Entry(NamedTuple):
    """One torch tensor and how it maps to its canonical array."""

    name: str
    tensor: torch.Tensor
    permutation: tuple[int, ...] | None  # torch layout -> canonical layout; None: same layout


def _own_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The module's own parameters and persistent buffers (not its children's)."""
    for attr, param in module.named_parameters(recurse=False):
        yield attr, param
    skipped = getattr(module, "_non_persistent_buffers_set", set())
    for attr, buf in module.named_buffers(recurse=False):
        if attr not in skipped and buf is not None:
            yield attr, buf


def _module_entries(module: nn.Module, path: str) -> Iterator[_Entry]:
    tensors = dict(_own_tensors(module))
    if isinstance(module, MomentumBatchNorm):
        names = {**_BN_NAMES, "num_batches_tracked": "step", "skipped": "skipped"}
    elif isinstance(module, _BatchNorm):
        names = dict(_BN_NAMES)  # num_batches_tracked is torch-only
        tensors.pop("num_batches_tracked", None)
    elif isinstance(module, nn.Linear) or (isinstance(module, _ConvNd) and not module.transposed):
        names = {"weight": "kernel", "bias": "bias"}
    else:
        names = {}
    for attr, tensor in tensors.items():
        leaf = names.get(attr, attr)
        permutation = None
        if leaf == "kernel" and isinstance(module, nn.Linear):
            permutation = (1, 0)
        elif leaf == "kernel":  # [out, in, *k] -> [*k, in, out]
            permutation = (*range(2, tensor.dim()), 1, 0)
        yield _Entry(f"{path}.{leaf}" if path else leaf, tensor, permutation)


def _network_entries(network: nn.Module, prefix: str, head: bool) -> Iterator[_Entry]:
    for path, module in network.named_modules():
        if head and isinstance(network, MLPHead) and path:
            first, _, rest = path.partition(".")
            path = ".".join(p for p in (_HEAD_NAMES.get(first, first), rest) if p)
        for entry in _module_entries(module, path):
            yield entry._replace(name=f"{prefix}.{entry.name}")


def _entries(model: M2Teacher) -> list[_Entry]:
    if not isinstance(model, M2Teacher):
        raise TypeError(f"expected an m2t_torch.M2Teacher, got {type(model).__name__}")
    student = _unwrap(model.student)
    parts = [
        ("student.backbone", student.backbone, False),
        ("student.projector", student.projector, True),
        ("student.predictor", student.predictor, True),
        ("teacher.backbone", model.teacher.backbone, False),
        ("teacher.projector", model.teacher.projector, True),
    ]
    entries = [_Entry("step", model.step, None)]
    for prefix, network, head in parts:
        entries.extend(_network_entries(network, prefix, head))
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:  # pragma: no cover - torch module paths are unique
        raise ValueError(f"several tensors map to the canonical names {duplicates}")
    return entries


def _to_numpy(entry: _Entry) -> np.ndarray:
    _check_dtype(entry)
    tensor = entry.tensor.detach()
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.int64)
    if entry.permutation is not None:
        tensor = tensor.permute(entry.permutation)
    return np.array(tensor.cpu().numpy(), order="C")  # a copy; keeps 0-d shapes


class _Spec(NamedTuple):
    """Canonical shape and dtype of an entry (what the checks compare), read without copying data."""

    shape: tuple[int, ...]
    dtype: np.dtype


_NUMPY_FLOATS = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def _check_dtype(entry: _Entry) -> None:
    if entry.tensor.is_floating_point() and entry.tensor.dtype not in _NUMPY_FLOATS:
        raise TypeError(
            f"{entry.name} is {entry.tensor.dtype}; checkpoints hold float16/32/64 arrays "
            "(cast the model first)"
        )


def _spec(entry: _Entry) -> _Spec:
    _check_dtype(entry)
    tensor = entry.tensor
    shape = (
        tuple(tensor.shape)
        if entry.permutation is None
        else tuple(tensor.shape[i] for i in entry.permutation)
    )
    dtype = _NUMPY_FLOATS[tensor.dtype] if tensor.is_floating_point() else np.int64
    return _Spec(shape, np.dtype(dtype))


def to_canonical(model: M2Teacher) -> dict[str, np.ndarray]:
    """The whole model as canonical arrays (copies; the model is not changed).

    Args:
        model: An :class:`~m2t_torch.M2Teacher` (its student may be wrapped in DDP).

    Returns:
        ``{canonical name: array}``: student, teacher (statistics and counters included) and ``step``.

    Raises:
        TypeError: ``model`` is not an ``M2Teacher``, or holds bfloat16 tensors.
    """
    return {e.name: _to_numpy(e) for e in _entries(model)}


def from_canonical(model: M2Teacher, arrays: Mapping[str, np.ndarray]) -> M2Teacher:
    """Load canonical arrays into ``model`` in place (exact: only transposes, no arithmetic).

    Everything is checked first — names, shapes, dtypes against the model's own canonical arrays —
    so a mismatch changes nothing.

    Args:
        model: The target :class:`~m2t_torch.M2Teacher`, built with the checkpoint's architecture.
        arrays: ``{canonical name: array}``, e.g. from :func:`m2t_core.checkpoint.load_checkpoint`.

    Returns:
        ``model``.

    Raises:
        TypeError: ``model`` is not an ``M2Teacher``.
        ValueError: missing, unexpected, mis-shaped or mis-typed arrays (all named in the message).
    """
    entries = _entries(model)
    check_matches(arrays, {e.name: _spec(e) for e in entries}, target=f"this {type(model).__name__}")
    with torch.no_grad():
        for entry in entries:
            value = torch.from_numpy(np.array(arrays[entry.name], order="C"))
            if entry.permutation is not None:
                inverse = tuple(int(i) for i in np.argsort(entry.permutation))
                value = value.permute(inverse)
            entry.tensor.copy_(value.to(entry.tensor.dtype))
    return model


def checkpoint_config(model: M2Teacher) -> dict[str, Any]:
    """The ``config`` that :func:`export_checkpoint` writes: backbone description and hyperparameters.

    Args:
        model: An :class:`~m2t_torch.M2Teacher`.

    Returns:
        A JSON-ready dict (:func:`m2t_core.checkpoint.model_config`).
    """
    student = _unwrap(model.student)
    backbone = student.backbone
    described = (
        backbone.describe()
        if isinstance(backbone, ReferenceNet)
        else {"architecture": type(backbone).__name__}
    )
    momentum, alpha = model.momentum_schedule, model.alpha_schedule
    first_bn = next((m for m in model.teacher.modules() if isinstance(m, MomentumBatchNorm)), None)
    return model_config(
        framework="torch",
        backbone=described,
        feature_dim=model.feature_dim,
        hidden_dim=student.projector[0].out_features,
        projection_dim=student.projector.out_features,
        total_steps=momentum.total_steps,
        base_momentum=momentum.start,
        final_momentum=momentum.end,
        alpha_start=0.0 if alpha is None else alpha.start,
        alpha_end=0.0 if alpha is None else alpha.end,
        correction="biased" if first_bn is None else first_bn.correction,
    )


def export_checkpoint(model: M2Teacher, path: str | os.PathLike[str]) -> Path:
    """Write the whole model to one safetensors file in the framework-neutral format.

    Args:
        model: An :class:`~m2t_torch.M2Teacher`.
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
        model: The target :class:`~m2t_torch.M2Teacher`, built with the checkpoint's architecture.
        path: A file written by any adapter's ``export_checkpoint``.

    Returns:
        ``model``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an m2t checkpoint, or arrays that do not fit the model.
        ImportError: safetensors is not installed.
    """
    return from_canonical(model, load_checkpoint(path).arrays)
