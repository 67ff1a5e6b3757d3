r"""The BYOL regression loss used by Momentum² Teacher.

``normalize(a) = a / max(‖a‖₂, 1e-12)`` along the last axis. For a student prediction ``p`` and a
teacher projection ``z`` (the teacher side carries no gradient)::

    regression_loss(p, z) = ‖normalize(p) − normalize(z)‖² = 2 − 2·⟨normalize(p), normalize(z)⟩
    symmetric_loss        = mean_b[ regression_loss(p1, z2) + regression_loss(p2, z1) ]

where ``p1`` is the student's prediction for view 1 and ``z2`` the teacher's projection of view 2.
Each term lies in [0, 4], so the symmetric loss lies in [0, 8]; it is 0 exactly when every pair is
aligned, and it does not change when any vector is scaled by a positive factor.

References:
    Grill et al. *Bootstrap Your Own Latent.* NeurIPS 2020, eq. (2).
"""

from __future__ import annotations

import numpy as np

from m2t_core._validation import check_floating

__all__ = ["normalize", "regression_loss", "symmetric_loss"]

NORM_EPS = 1e-12


def _as_float(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    check_floating(a.dtype, name)
    if a.ndim < 1:
        raise ValueError(f"{name} must have rank >= 1 (a feature axis), got a scalar")
    return a.astype(np.float32) if a.dtype.itemsize < 4 else a


def normalize(x: np.ndarray, axis: int = -1, eps: float = NORM_EPS) -> np.ndarray:
    """L2-normalise along ``axis``: ``x / max(‖x‖, eps)`` (zero vectors stay zero).

    Args:
        x: Floating array.
        axis: Axis to normalise over.
        eps: Lower bound on the norm.

    Returns:
        Array of ``x``'s shape and dtype.
    """
    xf = _as_float(x, "x")
    norm = np.sqrt(np.sum(np.square(xf), axis=axis, keepdims=True))
    return (xf / np.maximum(norm, xf.dtype.type(eps))).astype(np.asarray(x).dtype)


def regression_loss(p: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Per-sample ``2 − 2·cos(p, z)`` over the last axis, in [0, 4].

    Args:
        p: Student predictions ``[..., D]``.
        z: Teacher projections, same shape.

    Returns:
        Array of shape ``p.shape[:-1]`` in float32 or wider.

    Raises:
        ValueError: shapes differ.
        TypeError: non-floating input.
    """
    pf, zf = _as_float(p, "p"), _as_float(z, "z")
    if pf.shape != zf.shape:
        raise ValueError(f"p and z must have the same shape, got {pf.shape} and {zf.shape}")
    ct = np.result_type(pf.dtype, zf.dtype)
    return 2.0 - 2.0 * np.sum(normalize(pf.astype(ct)) * normalize(zf.astype(ct)), axis=-1)


def symmetric_loss(p1: np.ndarray, p2: np.ndarray, z1: np.ndarray, z2: np.ndarray) -> np.ndarray:
    """``mean_b[regression_loss(p1, z2) + regression_loss(p2, z1)]``, a scalar in [0, 8].

    Args:
        p1: Student prediction for view 1, ``[B, D]``.
        p2: Student prediction for view 2.
        z1: Teacher projection of view 1.
        z2: Teacher projection of view 2.

    Returns:
        0-d array, float32 or wider.

    Raises:
        ValueError: the four arrays do not share one shape.
    """
    shapes = {name: np.shape(a) for name, a in (("p1", p1), ("p2", p2), ("z1", z1), ("z2", z2))}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"p1, p2, z1, z2 must have the same shape, got {shapes}")
    return np.mean(regression_loss(p1, z2) + regression_loss(p2, z1))
