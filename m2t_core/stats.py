r"""Momentum BatchNorm: the teacher normalisation of Momentum² Teacher, as a pure NumPy function.

The teacher of Momentum² Teacher (M2T) normalises with *momentum statistics*: a running mix of the
current batch moments and their own history, instead of the noisy moments of one small batch.

Conventions
-----------
``alpha`` is the weight on the **stored history** (the paper's α); ``1 - alpha`` weights the current
batch. Frameworks name their BatchNorm momentum the other way round, or the same way, so:

=======================================  =============  ==========================  =========================
quantity                                 this project   ``torch.nn.BatchNorm*``     Keras / Flax BatchNorm
=======================================  =============  ==========================  =========================
weight on the stored running statistics  ``alpha``      ``1 - momentum``            ``momentum``
weight on the current batch's moments    ``1 - alpha``  ``momentum`` (default 0.1)  ``1 - momentum`` (0.01)
variance used to normalise / to store    one estimator  biased / unbiased           biased / biased
=======================================  =============  ==========================  =========================

(The teacher-parameter EMA weight ``teacher_momentum`` ``m`` is the weight on the **old teacher**,
BYOL's τ; see :mod:`m2t_core.ema`.)

Layout
------
The channel (feature) axis is ``axis``; moments reduce over every other axis. A teacher batch holds
``V = num_views`` views concatenated along axis 0, each of ``B`` samples: view ``v`` is rows
``v*B:(v+1)*B``. ``n = B × (product of the spatial sizes)`` values per channel and view.

Variance estimator ``correction`` (used both to normalise and to store):

* ``"biased"``   — ÷n (the default, what BatchNorm normalises with);
* ``"unbiased"`` — ÷(n−1);
* ``"official"`` — biased × (n/(n−1))², exactly what the original PyTorch release computes
  (``torch.var`` is already unbiased and it multiplies by n/(n−1) once more).

Training mode, at commit step ``k`` with stored ``(μ, σ²)`` (initially 0 and 1)::

    μ_v, σ²_v = moments of view v                      per channel, in float32 or wider, two-pass
    μ̂_v  = (1−α)·μ_v  + α·μ                            every view mixes with the SAME history
    σ̂²_v = (1−α)·σ²_v + α·σ²
    y_v  = γ·(x_v − μ̂_v)/sqrt(σ̂²_v + eps) + β
    commit, once per step after all views:
    μ  ← (1−α)·mean_v(μ_v)  + α·μ
    σ² ← (1−α)·mean_v(σ²_v) + α·σ²
    k  ← k + 1

This is the paper's *lazy update*: no view is normalised with statistics built from another view of
the same step, so nothing leaks between the student's target and its input. ``V = 1`` is plain
momentum BN (the MoCo case), ``V = 2`` the paper's setting, ``V > 2`` serves multi-crop teachers.
``α`` usually follows :func:`m2t_core.schedules.stats_momentum_schedule` (cosine from 0 to 1).

Evaluation mode: ``y = γ·(x − μ)/sqrt(σ² + eps) + β``; nothing is committed, ``k`` does not advance.

Non-finite guard: if any committed moment would be non-finite, the whole commit is skipped (the stored
statistics keep their values), ``skipped`` is incremented, and ``k`` still advances. The output is
computed as usual, so the training loop sees the bad loss. Adapters implement the guard with
``where`` rather than ``if``, so it needs no host synchronisation.

Precision: moments and the mix are computed in ``result_type(float32, x.dtype, stats dtype)`` —
float16/bfloat16 inputs are upcast to float32, float64 stays float64 — and ``y`` is returned in the
input dtype. Stored statistics keep their own dtype.

References:
    Zeming Li, Songtao Liu, Jian Sun. *Momentum² Teacher: Momentum Teacher with Momentum Statistics
    for Self-Supervised Learning.* arXiv:2101.07525, 2021.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from m2t_core._validation import (
    check_channels,
    check_correction,
    check_eps,
    check_floating,
    check_num_views,
    check_unit_interval,
    correction_factor,
    normalize_axis,
)

__all__ = ["MomentumStats", "init_stats", "momentum_batch_norm", "view_moments"]


class MomentumStats(NamedTuple):
    """The stored statistics of one momentum-BN layer (an immutable value; functions return new ones).

    Attributes:
        mean: Running mean ``μ``, shape ``[C]``.
        var: Running variance ``σ²``, shape ``[C]``, under the layer's ``correction``.
        step: Number of commits so far, ``k`` (0-d int64).
        skipped: Number of commits skipped by the non-finite guard (0-d int64).
    """

    mean: np.ndarray
    var: np.ndarray
    step: np.ndarray
    skipped: np.ndarray


def init_stats(num_features: int, dtype: np.typing.DTypeLike = np.float32) -> MomentumStats:
    """Fresh statistics: mean 0, variance 1, step 0, nothing skipped.

    Args:
        num_features: Number of channels ``C``.
        dtype: Floating dtype of ``mean`` and ``var`` (float32 unless you need float64).

    Returns:
        A :class:`MomentumStats`.

    Raises:
        ValueError: ``num_features < 1``.
        TypeError: ``dtype`` is not floating.
    """
    if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)):
        raise TypeError(f"num_features must be an int, got {num_features!r}")
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    check_floating(dtype, "dtype")
    return MomentumStats(
        mean=np.zeros((num_features,), dtype),
        var=np.ones((num_features,), dtype),
        step=np.asarray(0, np.int64),
        skipped=np.asarray(0, np.int64),
    )


def _compute_dtype(*dtypes: np.dtype) -> np.dtype:
    """float32 or wider: half-precision inputs are upcast, float64 stays float64."""
    wide = [np.dtype(np.float32)] + [np.dtype(d) for d in dtypes if np.dtype(d).itemsize >= 4]
    return np.result_type(*wide)


def _views_last(x: np.ndarray, num_views: int, axis: int) -> np.ndarray:
    """Reshape ``x`` to ``[V, n, C]``: views first, channels last, everything else flattened."""
    xt = np.moveaxis(x, axis, -1)
    return xt.reshape(num_views, -1, xt.shape[-1])


def _check_x(x: np.ndarray, num_views: int, axis: int, correction: str) -> tuple[int, int]:
    """Validate ``x`` and return ``(normalised axis, n values per channel and view)``."""
    check_floating(x.dtype, "x")
    axis = normalize_axis(axis, x.ndim)
    check_num_views(num_views, x.shape[0])
    check_correction(correction)
    n = x.size // (x.shape[axis] * num_views) if x.size else 0
    correction_factor(n, correction)  # raises for n < 1, or n == 1 with a ÷(n−1) estimator
    return axis, n


def view_moments(
    x: np.ndarray, *, num_views: int, axis: int, correction: str = "biased"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-view, per-channel mean and variance of a batch of concatenated views.

    Args:
        x: Floating array of rank >= 2, ``V`` views concatenated along axis 0.
        num_views: ``V``; must divide ``x.shape[0]``.
        axis: Channel axis (not 0).
        correction: ``"biased"``, ``"unbiased"`` or ``"official"`` (see the module docstring).

    Returns:
        ``(mean, var)``, each of shape ``[V, C]``, in float32 or wider (two-pass variance).

    Raises:
        TypeError: ``x`` is not floating.
        ValueError: bad ``axis``, ``num_views`` not dividing the batch, unknown ``correction``, or
            ``n = 1`` with a correction that divides by ``n − 1``.
    """
    x = np.asarray(x)
    axis, n = _check_x(x, num_views, axis, correction)
    xv = _views_last(x, num_views, axis).astype(_compute_dtype(x.dtype), copy=False)
    mean = xv.mean(axis=1)
    # Two-pass variance: subtracting the mean first is far more accurate on offset data than
    # E[x²] − E[x]², and the adapters do the same, so all of them agree to rounding.
    var = np.square(xv - mean[:, None, :]).mean(axis=1)
    var = var * var.dtype.type(correction_factor(n, correction))
    return mean, var


def _normalize(
    x: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    num_groups: int,
    axis: int,
    eps: float,
    scale: np.ndarray | None,
    offset: np.ndarray | None,
    ct: np.dtype,
) -> np.ndarray:
    """``γ·(x_g − mean_g)/sqrt(var_g + eps) + β`` per group ``g`` of rows; returns ``x.dtype``."""
    inv = 1.0 / np.sqrt(var + ct.type(eps))  # [G, C]
    if scale is not None:
        inv = inv * np.asarray(scale).astype(ct)
    xg = _views_last(x, num_groups, axis).astype(ct, copy=False)  # [G, n, C]
    yg = (xg - mean[:, None, :]) * inv[:, None, :]
    if offset is not None:
        yg = yg + np.asarray(offset).astype(ct)
    moved = np.moveaxis(x, axis, -1).shape
    return np.moveaxis(yg.reshape(moved), -1, axis).astype(x.dtype)


def momentum_batch_norm(
    x: np.ndarray,
    stats: MomentumStats,
    *,
    alpha: float | np.ndarray,
    num_views: int = 2,
    axis: int = -1,
    eps: float = 1e-5,
    scale: np.ndarray | None = None,
    offset: np.ndarray | None = None,
    correction: str = "biased",
    training: bool = True,
) -> tuple[np.ndarray, MomentumStats]:
    """Momentum batch normalisation of ``num_views`` concatenated views (see the module docstring).

    Args:
        x: Floating array of rank >= 2, views concatenated along axis 0.
        stats: Stored statistics of the layer (:func:`init_stats`).
        alpha: Weight on the stored history, in [0, 1] (the paper's α at this step).
        num_views: ``V``; must divide ``x.shape[0]``.
        axis: Channel axis (not 0). ``-1`` for channels-last, ``1`` for torch's layout.
        eps: Added to the variance before the square root.
        scale: Optional ``γ`` of shape ``[C]``.
        offset: Optional ``β`` of shape ``[C]``.
        correction: Variance estimator, ``"biased"``, ``"unbiased"`` or ``"official"``.
        training: Training mode (normalise with mixed per-view moments and commit) or evaluation mode
            (normalise with the stored statistics; ``stats`` is returned unchanged).

    Returns:
        ``(y, new_stats)``: ``y`` has the shape and dtype of ``x``.

    Raises:
        TypeError: ``x`` is not floating.
        ValueError: channel count of ``x`` differs from the statistics, ``num_views`` does not divide
            the batch, ``alpha`` outside [0, 1], bad ``axis``/``correction``/``eps``, mis-shaped
            ``scale``/``offset``, or ``n = 1`` with a correction that divides by ``n − 1``.

    References:
        Li, Liu, Sun. Momentum² Teacher, arXiv:2101.07525, §3 (momentum BN and its lazy update).
    """
    x = np.asarray(x)
    check_floating(x.dtype, "x")
    ax = normalize_axis(axis, x.ndim)
    if np.ndim(stats.mean) != 1 or np.shape(stats.var) != np.shape(stats.mean):
        raise ValueError(
            "stats.mean and stats.var must be vectors of one shape [C], got "
            f"{np.shape(stats.mean)} and {np.shape(stats.var)}"
        )
    num_features = stats.mean.shape[0]
    check_channels(x.shape[ax], num_features, x.shape, ax)
    for name, p in (("scale", scale), ("offset", offset)):
        if p is not None and np.shape(p) != (num_features,):
            raise ValueError(f"{name} must have shape ({num_features},), got {np.shape(p)}")
    eps = check_eps(eps)
    check_unit_interval(alpha, "alpha")
    check_num_views(num_views)
    check_correction(correction)

    ct = _compute_dtype(x.dtype, stats.mean.dtype)
    hist_mean = stats.mean.astype(ct)
    hist_var = stats.var.astype(ct)
    if not training:
        # Evaluation: one group (any batch size), normalised with the stored statistics.
        y = _normalize(x, hist_mean[None], hist_var[None], 1, ax, eps, scale, offset, ct)
        return y, stats

    mu_v, var_v = view_moments(x, num_views=num_views, axis=ax, correction=correction)
    a = ct.type(alpha)
    one_minus_a = ct.type(1) - a
    mean_hat = one_minus_a * mu_v.astype(ct) + a * hist_mean  # [V, C]
    var_hat = one_minus_a * var_v.astype(ct) + a * hist_var
    y = _normalize(x, mean_hat, var_hat, num_views, ax, eps, scale, offset, ct)

    new_mean = one_minus_a * mu_v.astype(ct).mean(axis=0) + a * hist_mean
    new_var = one_minus_a * var_v.astype(ct).mean(axis=0) + a * hist_var
    finite = np.isfinite(new_mean).all() & np.isfinite(new_var).all()
    new_stats = MomentumStats(
        mean=np.where(finite, new_mean, hist_mean).astype(stats.mean.dtype),
        var=np.where(finite, new_var, hist_var).astype(stats.var.dtype),
        step=np.asarray(stats.step + 1, np.int64),
        skipped=np.asarray(stats.skipped + (~finite).astype(np.int64), np.int64),
    )
    return y, new_stats
