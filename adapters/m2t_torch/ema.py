r"""In-place, fused teacher EMA: ``θ_t ← m·θ_t + (1−m)·θ_s`` (BYOL's target update).

:func:`ema_update_` pairs the teacher's and the student's parameters by name, checks the pairing
(missing, extra or mis-shaped names raise a clear error) and then updates every teacher tensor with
one ``torch._foreach_lerp_`` per (device, dtype) group — a handful of fused kernels instead of one
Python-level operation per parameter.

For modules, the pairing is computed and validated (names, shapes, dtypes, devices) on the first
call for a (teacher, student) pair and reused afterwards. Each later call only checks that both
modules still hold the very same tensor objects, in the same order (an identity walk over
``parameters()``, microseconds for a ResNet-50); any change — a parameter added, replaced, or swapped
by ``.to()`` — makes it pair and validate again.

``momentum`` ``m`` is the weight on the **old teacher**; ``m`` may be a Python float (checked to lie in
[0, 1]) or a 0-d tensor (not checked: reading it would synchronise with the device), which lets a
compiled training step take the momentum from a step-counter buffer without recompiling.

References:
    Grill et al. *Bootstrap Your Own Latent.* NeurIPS 2020, §3.1.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from m2t_core._validation import check_param_trees
from m2t_torch._validation import check_weight, dtype_name

__all__ = ["ema_update_"]

T = TypeVar("T", nn.Module, Mapping)


def _check_tensor_pair(name: str, t: Any, s: Any) -> None:
    for who, arr in (("teacher", t), ("student", s)):
        if not isinstance(arr, torch.Tensor):
            raise TypeError(f"{who}[{name!r}] must be a torch.Tensor, got {type(arr).__name__}")
    if t.device != s.device:
        raise ValueError(f"device mismatch for {name!r}: teacher on {t.device}, student on {s.device}")


def check_pairs(teacher: Mapping[str, Any], student: Mapping[str, Any]) -> None:
    """Check that two (possibly nested) mappings of tensors pair up: same keys, shapes, floating dtypes.

    The core's checks (:func:`m2t_core._validation.check_param_trees`, same messages) plus tensor
    type and device.

    Raises:
        ValueError: keys differ (both sets named), shapes or devices differ (the key named).
        TypeError: a value is not a floating tensor.
    """
    check_param_trees(
        teacher,
        student,
        shape_of=lambda t: tuple(t.shape),
        dtype_of=lambda t: dtype_name(t.dtype),
        check_leaf=_check_tensor_pair,
    )


def lerp_weight(
    momentum: float | torch.Tensor, dtype: torch.dtype, device: torch.device
) -> float | torch.Tensor:
    """``1 − m`` as ``torch.lerp`` wants it: a Python float, or a 0-d tensor of ``dtype`` on ``device``."""
    if isinstance(momentum, torch.Tensor):
        return (1.0 - momentum.to(device=device, dtype=dtype)).reshape(())
    return 1.0 - float(momentum)


@dataclass
class _Group:
    teacher: list[torch.Tensor]
    student: list[torch.Tensor]
    student_dtype: torch.dtype  # differs from the teacher's when the two are kept in different precisions


@dataclass
class _Plan:
    student: weakref.ReferenceType[nn.Module]
    tensors: tuple[torch.Tensor, ...]  # the teacher's, then the student's, each in its own order
    groups: list[_Group]


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def build_groups(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[_Group]:
    """Group validated (teacher, student) tensor pairs by device and dtypes, for the fused kernels."""
    groups: dict[tuple[torch.device, torch.dtype, torch.dtype], _Group] = {}
    for t, s in pairs:
        key = (t.device, t.dtype, s.dtype)
        if key not in groups:
            groups[key] = _Group([], [], s.dtype)
        groups[key].teacher.append(t)
        groups[key].student.append(s)
    return list(groups.values())


def _lerp_group_(group: _Group, momentum: float | torch.Tensor) -> None:
    teacher = group.teacher
    dtype = teacher[0].dtype
    student = group.student
    if group.student_dtype != dtype:
        student = [s.to(dtype) for s in student]
    weight = lerp_weight(momentum, dtype, teacher[0].device)
    if not isinstance(weight, torch.Tensor):
        torch._foreach_lerp_(teacher, student, weight)
    elif teacher[0].device.type == "cpu" and not torch.compiler.is_compiling():
        # CPU foreach kernels loop over the tensors anyway; a broadcast 0-d weight costs nothing.
        torch._foreach_lerp_(teacher, student, [weight] * len(teacher))
    else:
        # The fused multi-tensor lerp takes a Python-scalar weight only; with a tensor weight the
        # list overload falls back to one kernel per tensor on accelerators, so spell lerp out in
        # foreach ops that accept a 0-d tensor (inductor fuses them when compiled).
        delta = torch._foreach_sub(student, teacher)
        torch._foreach_mul_(delta, weight)
        torch._foreach_add_(teacher, delta)


def apply_groups_(groups: list[_Group], momentum: float | torch.Tensor) -> None:
    """Run the fused EMA over prepared groups (no validation; used by :class:`m2t_torch.M2Teacher`)."""
    with torch.no_grad():
        for group in groups:
            _lerp_group_(group, momentum)


_plans: weakref.WeakKeyDictionary[nn.Module, dict[str, _Plan]] = weakref.WeakKeyDictionary()


def _bn_statistics(module: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.{name}" if prefix else name: getattr(m, name)
        for prefix, m in module.named_modules()
        if isinstance(m, _BatchNorm) and m.running_mean is not None
        for name in ("running_mean", "running_var")
    }


def module_groups(teacher: nn.Module, student: nn.Module, kind: str = "parameters") -> list[_Group]:
    """Validated, cached pairing of two modules' tensors by name (see the module docstring).

    ``kind`` is ``"parameters"`` (``named_parameters()``) or ``"bn_statistics"`` (the running mean and
    variance of every ``nn.BatchNorm*``, for an EMAN teacher).
    """
    if torch.compiler.is_compiling():
        # Traced once: the pairing runs at trace time and only the fused kernels enter the graph.
        # (The cache below would make the graph guard on a weak dictionary and recompile.)
        return _pair(_named(teacher, kind), _named(student, kind))
    plans = _plans.setdefault(teacher, {})
    plan = plans.get(kind)
    if plan is not None and plan.student() is student and _same_tensors(plan.tensors, teacher, student, kind):
        return plan.groups
    t_named, s_named = _named(teacher, kind), _named(student, kind)
    groups = _pair(t_named, s_named)
    tensors = (*t_named.values(), *s_named.values())
    plans[kind] = _Plan(weakref.ref(student), tensors, groups)
    return groups


def _named(module: nn.Module, kind: str) -> dict[str, torch.Tensor]:
    return dict(module.named_parameters()) if kind == "parameters" else _bn_statistics(module)


def _current(module: nn.Module, kind: str) -> Iterable[torch.Tensor]:
    return module.parameters() if kind == "parameters" else _bn_statistics(module).values()


def _same_tensors(
    cached: tuple[torch.Tensor, ...], teacher: nn.Module, student: nn.Module, kind: str
) -> bool:
    """True when both modules still hold exactly the cached tensor objects (identity, not values)."""
    current = iter(cached)
    count = 0
    for module in (teacher, student):
        for tensor in _current(module, kind):
            count += 1
            if next(current, None) is not tensor:
                return False
    return count == len(cached)


def _pair(t_named: dict[str, torch.Tensor], s_named: dict[str, torch.Tensor]) -> list[_Group]:
    check_pairs(t_named, s_named)
    return build_groups((t_named[k], s_named[k]) for k in t_named)


def ema_update_(teacher: T, student: nn.Module | Mapping, momentum: float | torch.Tensor) -> T:
    """Move the teacher towards the student in place: ``t ← m·t + (1−m)·s`` for every paired tensor.

    Args:
        teacher: An ``nn.Module`` (its ``named_parameters()`` are updated) or a mapping of names to
            tensors (updated in place; nested mappings are followed).
        student: Same kind as ``teacher``, with exactly the same parameter names and shapes.
        momentum: ``m`` in [0, 1], the weight on the old teacher (``1`` keeps the teacher, ``0`` copies
            the student), or a 0-d floating tensor on any device.

    Returns:
        ``teacher``, updated.

    Raises:
        ValueError: names differ (both sets of differing names are listed), a name's shapes or devices
            differ, or ``momentum`` is a number outside [0, 1] or a tensor with more than one element.
        TypeError: mixed argument kinds, or a non-floating tensor.

    References:
        Grill et al. *Bootstrap Your Own Latent*, NeurIPS 2020, eq. (1).
    """
    check_weight(momentum, "momentum")
    if isinstance(teacher, nn.Module) and isinstance(student, nn.Module):
        groups = module_groups(teacher, student)
    elif isinstance(teacher, Mapping) and isinstance(student, Mapping):
        check_pairs(teacher, student)
        flat_t, flat_s = _flatten(teacher), _flatten(student)
        groups = build_groups((flat_t[k], flat_s[k]) for k in flat_t)
    else:
        raise TypeError(
            "teacher and student must both be nn.Modules or both be mappings of tensors, got "
            f"{type(teacher).__name__} and {type(student).__name__}"
        )
    apply_groups_(groups, momentum)
    return teacher
