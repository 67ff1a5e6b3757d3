"""Dtypes, shapes and reductions of backend tensors, written with ``keras.ops`` (internal helpers).

Keras's type promotion maps 64-bit results to 32 bits on the JAX and PyTorch backends (``ops.mean``,
``ops.maximum`` and ``ops.cast`` of a Python float all lose float64 precision there), so the few
operations the statistics need are spelled out here in forms that keep the input's precision.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

Tensor = Any  # a tensor of the active Keras backend (or anything keras.ops converts)


def dtype_name(x: Tensor) -> str:
    """Standard Keras name of the dtype of ``x`` (``"float32"``, ``"bfloat16"``, ...)."""
    return keras.backend.standardize_dtype(x.dtype)


def check_floating(x: Tensor, name: str = "x") -> None:
    """Raise ``TypeError`` unless ``x`` has a floating dtype (same message as the reference)."""
    if not keras.backend.is_float_dtype(dtype_name(x)):
        raise TypeError(f"{name} must have a floating dtype, got {dtype_name(x)}")


def compute_dtype(*dtypes: str) -> str:
    """float32 or wider: half-precision dtypes are upcast, float64 stays float64."""
    # Spelled out rather than keras.backend.result_type, whose lattice maps (float32, float64)
    # to float32.
    return "float64" if "float64" in dtypes else "float32"


def int_dtype() -> str:
    """The backend's default integer for counters: int64, or int32 on JAX.

    JAX disallows int64 unless ``jax_enable_x64`` is set; Keras's optimizer iteration counter makes
    the same choice.
    """
    return keras.backend.standardize_dtype("int")


def static_shape(x: Tensor) -> tuple[int | None, ...]:
    """Shape of ``x`` with ``None`` for every dimension unknown while tracing."""
    return tuple(d if isinstance(d, int) else None for d in x.shape)


def dynamic_shape(x: Tensor) -> tuple[Any, ...]:
    """Static sizes where known, scalar tensors where not (e.g. TF's unknown batch size)."""
    static = static_shape(x)
    if all(d is not None for d in static):
        return static
    dyn = ops.shape(x)
    return tuple(s if s is not None else dyn[i] for i, s in enumerate(static))


def values_per_view(shape: tuple[int | None, ...], axis: int, num_views: int) -> int | None:
    """``n``: values per channel and view, or ``None`` when a dimension is unknown."""
    if any(d is None for d in shape):
        return None
    rest = math.prod(d for i, d in enumerate(shape) if i not in (0, axis))
    return (shape[0] // num_views) * rest


def mean_over(x: Tensor, axes: tuple[int, ...], keepdims: bool = True) -> Tensor:
    """Mean over ``axes`` as a sum divided by the count, in ``x``'s dtype.

    ``keras.ops.mean`` accumulates float64 inputs in float32 on the JAX and PyTorch backends
    (Keras's promotion maps 64-bit results to 32 bits), which would cost float64 callers eight
    digits; a sum keeps the input's precision on every backend.
    """
    shape = dynamic_shape(x)
    count = 1
    for a in axes:
        count = count * shape[a]
    total = ops.sum(x, axis=axes, keepdims=keepdims)
    if isinstance(count, int):
        return total / count  # a Python number meets the tensor in the tensor's own dtype
    return total / as_dtype(count, dtype_name(x))


def to_dtype(x: Tensor, dtype: str) -> Tensor:
    """``x`` (tensor or variable) as a tensor of ``dtype``, with no cast op when it already is."""
    x = ops.convert_to_tensor(x)
    return x if dtype_name(x) == dtype else ops.cast(x, dtype)


def scalar(value: Any, dtype: str) -> Any:
    """A Python number as a Python float, anything else as a tensor of ``dtype``.

    Backends apply a Python number in the other operand's dtype (exactly, for float64), with no
    conversion op; ``ops.cast(0.3, "float64")`` would round through float32 first.
    """
    if isinstance(value, (int, float)):
        return float(value)
    return to_dtype(value, dtype)


def as_dtype(value: Any, dtype: str) -> Tensor:
    """``value`` as a tensor of ``dtype``; a Python number goes straight to ``dtype``.

    ``ops.cast(0.001, "float64")`` would first make a float32 tensor (Keras's floatx) and widen
    it, carrying float32 rounding into a float64 computation.
    """
    if isinstance(value, (int, float, np.number)):
        return ops.convert_to_tensor(value, dtype=dtype)
    return ops.cast(value, dtype)
