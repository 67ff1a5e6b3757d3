"""Torch-side argument checks that complement :mod:`m2t_core._validation`.

The core's checks work on plain numbers and NumPy dtype names; torch dtypes such as ``bfloat16`` have
no NumPy equivalent without ml_dtypes, so the dtype checks are restated here with the core's wording.
Nothing in this module touches tensor *values*: every check reads Python numbers, shapes and dtypes,
so none of them forces a host synchronisation or breaks a ``torch.compile`` graph.
"""

from __future__ import annotations

import numpy as np
import torch

from m2t_core._validation import check_unit_interval


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``, the spelling the core's messages use."""
    return str(dtype).removeprefix("torch.")


def check_floating_tensor(x: torch.Tensor, name: str = "x") -> None:
    """Raise ``TypeError`` unless ``x`` is a real floating tensor (same message as the core)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {dtype_name(x.dtype)}")


def as_torch_dtype(dtype: object, name: str = "dtype") -> torch.dtype:
    """Accept a torch dtype or anything NumPy understands as a dtype; require it to be floating."""
    if isinstance(dtype, torch.dtype):
        result = dtype
    else:
        try:
            result = torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype  # type: ignore[call-overload]
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a torch or NumPy floating dtype, got {dtype!r}") from err
    if not result.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype, got {dtype_name(result)}")
    return result


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32 or wider: half-precision inputs are upcast, float64 stays float64 (as in the core)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def check_weight(value: float | torch.Tensor, name: str) -> None:
    """Check a mixing weight: a Python number in [0, 1], or a one-element floating tensor.

    A tensor's value is not inspected: reading it would synchronise with the device (and break a
    compiled graph), which is exactly what passing a tensor avoids.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(
                f"{name} given as a tensor must be a single floating value, got shape "
                f"{tuple(value.shape)} and dtype {dtype_name(value.dtype)}"
            )
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1] or a 0-d tensor, got {value!r}")
    check_unit_interval(value, name)
