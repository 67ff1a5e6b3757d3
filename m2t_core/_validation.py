"""Argument checks shared by the reference core and every adapter.

Each function raises ``ValueError``/``TypeError`` whose message names the offending values, so a
user sees the same wording whichever framework they call. Nothing here imports a framework: the
checks work on plain Python numbers, shapes and dtype names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

CORRECTIONS = ("biased", "unbiased", "official")


def normalize_axis(axis: int, ndim: int, *, what: str = "x") -> int:
    """Return ``axis`` as a non-negative index into an array of rank ``ndim``.

    The channel axis may not be axis 0: views are concatenated along axis 0.
    """
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int, got {axis!r}")
    if ndim < 2:
        raise ValueError(f"{what} must have rank >= 2 (batch and channel axes), got rank {ndim}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for {what} of rank {ndim}")
    axis = int(axis) % ndim
    if axis == 0:
        raise ValueError(
            "axis 0 is the batch axis along which views are concatenated; the channel axis must "
            f"be another axis (got axis={axis} for {what} of rank {ndim})"
        )
    return axis


def check_num_views(num_views: int, batch_size: int | None = None) -> int:
    """Check that ``num_views`` is a positive int that divides ``batch_size`` (when given)."""
    if isinstance(num_views, bool) or not isinstance(num_views, (int, np.integer)):
        raise TypeError(f"num_views must be an int, got {num_views!r}")
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if batch_size is not None and batch_size % num_views != 0:
        raise ValueError(
            f"num_views={num_views} does not divide the batch size {batch_size}: a teacher batch "
            f"holds num_views views of equal size concatenated along axis 0"
        )
    return int(num_views)


def check_correction(correction: str) -> str:
    """Check that ``correction`` names one of the variance estimators."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    return correction


def correction_factor(n: int, correction: str) -> float:
    """Factor that turns the biased (divide-by-n) variance into the ``correction`` estimator.

    ``"biased"`` -> 1, ``"unbiased"`` -> n/(n-1), ``"official"`` -> (n/(n-1))**2.

    Raises:
        ValueError: ``n == 1`` with a correction that divides by ``n - 1``, or ``n < 1``.
    """
    check_correction(correction)
    if n < 1:
        raise ValueError(f"cannot compute moments over n={n} values per channel and view")
    if correction == "biased":
        return 1.0
    if n == 1:
        raise ValueError(
            f"correction={correction!r} divides by n - 1, but each view has n=1 value per channel "
            "(samples per view x spatial positions); use correction='biased' or a larger batch"
        )
    ratio = n / (n - 1)
    return ratio if correction == "unbiased" else ratio * ratio


def check_unit_interval(value: object, name: str) -> None:
    """Check that a concrete number lies in [0, 1]; values that are not concrete are left alone."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return  # a traced / symbolic value: cannot be checked without a host sync
    if not (0.0 <= v <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {v!r}")


def check_eps(eps: float, name: str = "eps") -> float:
    """Check that the variance epsilon is a finite number >= 0."""
    v = float(eps)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {eps!r}")
    return v


def is_floating_dtype(dtype: object) -> bool:
    """True for float16/32/64 and the ml_dtypes floats (bfloat16, ...), which NumPy marks kind 'V'."""
    dt = np.dtype(dtype)  # type: ignore[call-overload]
    return dt.kind == "f" or (dt.kind == "V" and dt.name.startswith(("bfloat", "float")))


def check_floating(dtype: object, name: str = "x") -> None:
    """Raise ``TypeError`` unless ``dtype`` is a floating dtype."""
    if not is_floating_dtype(dtype):
        raise TypeError(f"{name} must have a floating dtype, got {np.dtype(dtype).name}")  # type: ignore[call-overload]


def check_channels(num_channels: int, num_features: int, shape: Sequence[int], axis: int) -> None:
    """Check that the channel axis of an input matches the statistics' feature count."""
    if num_channels != num_features:
        raise ValueError(
            f"input of shape {tuple(shape)} has {num_channels} channels on axis {axis}, but the "
            f"statistics have num_features={num_features}"
        )


def check_schedule_steps(
    start: float, end: float, total_steps: int | None, *, names=("start", "end")
) -> int | None:
    """Validate cosine-schedule arguments when the schedule is built (not when it is evaluated)."""
    check_unit_interval(start, names[0])
    check_unit_interval(end, names[1])
    if total_steps is None:
        if float(start) != float(end):
            raise ValueError(
                f"total_steps is required when {names[0]} != {names[1]} "
                f"(got {names[0]}={start}, {names[1]}={end}); "
                "omit it only for a constant schedule"
            )
        return None
    if isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer)):
        raise TypeError(f"total_steps must be an int or None, got {total_steps!r}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    return int(total_steps)


def check_param_trees(
    teacher: Mapping[str, Any],
    student: Mapping[str, Any],
    *,
    shape_of: Callable[[Any], tuple[int, ...]],
    dtype_of: Callable[[Any], str],
    check_leaf: Callable[[str, Any, Any], None] | None = None,
    prefix: str = "",
) -> None:
    """Check that two (possibly nested) mappings of arrays pair up for an EMA.

    Shared by the core and the adapters, which pass accessors for their own tensors, so every
    framework names the same offending keys, shapes and dtypes in the same words.

    Args:
        teacher: Mapping of names to arrays (nested mappings are followed).
        student: Mapping that must have the same keys, nesting and shapes.
        shape_of: Static shape of one array, as a tuple (must not read values).
        dtype_of: dtype name of one array (``"float32"``, ``"bfloat16"``, ``"int64"``, ...).
        check_leaf: Optional ``(name, teacher_array, student_array)`` hook for framework checks
            (tensor type, device), run before the shape and dtype checks.
        prefix: Key path of the mappings, for messages.

    Raises:
        ValueError: keys differ (both sets of differing keys named), a key is a mapping on one side
            only, or shapes differ (the key and both shapes named).
        TypeError: a non-floating array (its key and dtype named).
    """
    t_keys, s_keys = set(teacher), set(student)
    if t_keys != s_keys:
        missing = sorted(prefix + str(k) for k in t_keys - s_keys)
        extra = sorted(prefix + str(k) for k in s_keys - t_keys)
        raise ValueError(
            "teacher and student must have the same keys: "
            f"only in teacher: {missing}, only in student: {extra}"
        )
    for key in teacher:
        t, s = teacher[key], student[key]
        name = prefix + str(key)
        if isinstance(t, Mapping) or isinstance(s, Mapping):
            if not (isinstance(t, Mapping) and isinstance(s, Mapping)):
                raise ValueError(f"{name!r} is a mapping in only one of teacher and student")
            check_param_trees(
                t, s, shape_of=shape_of, dtype_of=dtype_of, check_leaf=check_leaf, prefix=name + "."
            )
            continue
        if check_leaf is not None:
            check_leaf(name, t, s)
        for who, arr in (("teacher", t), ("student", s)):
            dtype = dtype_of(arr)
            if not dtype.startswith(("float", "bfloat")):
                raise TypeError(
                    f"{who}[{name!r}] has dtype {dtype}; the EMA runs over floating parameters only "
                    "(keep counters and statistics out of it)"
                )
        t_shape, s_shape = tuple(shape_of(t)), tuple(shape_of(s))
        if t_shape != s_shape:
            raise ValueError(f"shape mismatch for {name!r}: teacher {t_shape} vs student {s_shape}")
