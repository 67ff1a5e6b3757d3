r"""The core's functional API on torch tensors: same names, same argument order, same math.

Every function here computes what its namesake in :mod:`m2t_core` computes (the tests hold them to
the core's float32/float64 tolerances); the only default that differs is the channel axis of the
batch-norm functions, ``axis=1`` (torch's NCHW layout) instead of the core's ``-1``.

Statistics are a :class:`m2t_core.MomentumStats` whose fields are tensors (:func:`init_stats`);
functions return new values and never modify their inputs. The stateful layer
:class:`m2t_torch.MomentumBatchNorm` runs the same kernels and writes its buffers in place.

Conventions (see :mod:`m2t_core.stats`): ``alpha`` is the weight on the **stored history** of the
statistics; ``torch.nn.BatchNorm*``'s ``momentum`` is the weight on the *current* batch, so
``alpha = 1 - momentum``. ``momentum`` in :func:`ema_update` is the weight on the **old teacher**.

Gradients flow to ``x``, ``scale`` and ``offset``; the moments are treated as constants (computed
from ``x.detach()``), as the original release does: the teacher's statistics are a target, not a
path for gradients.

References:
    Li, Liu, Sun. *Momentum² Teacher: Momentum Teacher with Momentum Statistics for Self-Supervised
    Learning.* arXiv:2101.07525, 2021.
    Grill et al. *Bootstrap Your Own Latent.* NeurIPS 2020.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from m2t_core._validation import (
    check_channels,
    check_correction,
    check_eps,
    check_num_views,
    correction_factor,
    normalize_axis,
)
from m2t_core.losses import NORM_EPS
from m2t_core.stats import MomentumStats
from m2t_torch._bn_kernels import as_weight, mix_and_commit, normalize_views, per_view_moments
from m2t_torch._validation import as_torch_dtype, check_floating_tensor, check_weight, compute_dtype
from m2t_torch.ema import check_pairs, lerp_weight
from m2t_torch.schedules import cosine_schedule, stats_momentum_schedule, teacher_momentum_schedule

__all__ = [
    "MomentumStats",
    "cosine_schedule",
    "ema_update",
    "init_stats",
    "momentum_batch_norm",
    "normalize",
    "regression_loss",
    "stats_momentum_schedule",
    "symmetric_loss",
    "teacher_momentum_schedule",
    "view_moments",
]


# --------------------------------------------------------------------------------------------------
# statistics


def init_stats(
    num_features: int, dtype: torch.dtype = torch.float32, *, device: torch.device | str | None = None
) -> MomentumStats:
    """Fresh statistics: mean 0, variance 1, step 0, nothing skipped.

    Args:
        num_features: Number of channels ``C``.
        dtype: Floating dtype of ``mean`` and ``var``; a torch dtype, or a NumPy dtype for code ported
            from :func:`m2t_core.init_stats`.
        device: Device of the tensors.

    Returns:
        A :class:`~m2t_core.MomentumStats` of tensors (``step``/``skipped`` are 0-d int64).

    Raises:
        ValueError: ``num_features < 1``.
        TypeError: ``num_features`` is not an int, or ``dtype`` is not floating.
    """
    if isinstance(num_features, bool) or not isinstance(num_features, int):
        raise TypeError(f"num_features must be an int, got {num_features!r}")
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    dt = as_torch_dtype(dtype)
    return MomentumStats(
        mean=torch.zeros(num_features, dtype=dt, device=device),
        var=torch.ones(num_features, dtype=dt, device=device),
        step=torch.zeros((), dtype=torch.int64, device=device),
        skipped=torch.zeros((), dtype=torch.int64, device=device),
    )


def _check_x(x: torch.Tensor, num_views: int, axis: int, correction: str) -> tuple[int, int]:
    """Validate ``x`` for moments; return ``(non-negative axis, n values per channel and view)``."""
    check_floating_tensor(x, "x")
    ax = normalize_axis(axis, x.dim())
    check_num_views(num_views, x.shape[0])
    check_correction(correction)
    n = x.numel() // (x.shape[ax] * num_views) if x.numel() else 0
    correction_factor(n, correction)  # raises for n < 1, or n == 1 with a ÷(n−1) estimator
    return ax, n


def view_moments(
    x: torch.Tensor, *, num_views: int, axis: int, correction: str = "biased"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view, per-channel mean and variance of a batch of concatenated views.

    Args:
        x: Floating tensor of rank >= 2, ``V`` views concatenated along dim 0.
        num_views: ``V``; must divide ``x.shape[0]``.
        axis: Channel axis (not 0); ``1`` for torch's layout.
        correction: ``"biased"``, ``"unbiased"`` or ``"official"`` (see :mod:`m2t_core.stats`).

    Returns:
        ``(mean, var)``, each ``[V, C]``, in float32 (float64 for float64 input); no gradient.

    Raises:
        TypeError: ``x`` is not a floating tensor.
        ValueError: bad ``axis``, ``num_views`` not dividing the batch, unknown ``correction``, or
            ``n = 1`` with a correction that divides by ``n − 1``.
    """
    ax, n = _check_x(x, num_views, axis, correction)
    xv = x.unflatten(0, (num_views, -1))
    mean, var, _ = per_view_moments(xv, ax + 1, n, correction, compute_dtype(x.dtype))
    return mean, var


def _as_tensor(value: Any, like: torch.Tensor) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value, device=like.device)


def momentum_batch_norm(
    x: torch.Tensor,
    stats: MomentumStats,
    *,
    alpha: float | torch.Tensor,
    num_views: int = 2,
    axis: int = 1,
    eps: float = 1e-5,
    scale: torch.Tensor | None = None,
    offset: torch.Tensor | None = None,
    correction: str = "biased",
    training: bool = True,
) -> tuple[torch.Tensor, MomentumStats]:
    """Momentum batch normalisation of ``num_views`` concatenated views (DESIGN §2).

    Training mode normalises view ``v`` with ``(1−α)·moments_v + α·stored`` and returns the committed
    statistics ``(1−α)·mean_v(moments_v) + α·stored`` (skipped, with ``skipped + 1``, when any would
    be non-finite); evaluation mode normalises with the stored statistics and returns ``stats``.

    Args:
        x: Floating tensor of rank >= 2, views concatenated along dim 0.
        stats: Stored statistics (:func:`init_stats`); NumPy fields are converted.
        alpha: Weight on the stored history, a number in [0, 1] or a 0-d tensor (its value is not
            checked, to avoid a host sync).
        num_views: ``V``; must divide ``x.shape[0]``.
        axis: Channel axis (not 0); default ``1``, torch's layout.
        eps: Added to the variance before the square root.
        scale: Optional ``γ`` of shape ``[C]`` (receives gradients).
        offset: Optional ``β`` of shape ``[C]`` (receives gradients).
        correction: Variance estimator, ``"biased"``, ``"unbiased"`` or ``"official"``.
        training: Training mode (mixed per-view moments, commit) or evaluation (stored statistics).

    Returns:
        ``(y, new_stats)``: ``y`` has the shape, dtype and memory format of ``x``; the statistics keep
        their dtype (moments are computed in float32, or float64 when ``x`` or the statistics are).

    Raises:
        TypeError: ``x`` is not a floating tensor.
        ValueError: channel count of ``x`` differs from the statistics, ``num_views`` does not divide
            the batch, ``alpha`` outside [0, 1], bad ``axis``/``correction``/``eps``, mis-shaped
            statistics, ``scale`` or ``offset``, or ``n = 1`` with a correction that divides by
            ``n − 1``.

    References:
        Li, Liu, Sun. Momentum² Teacher, arXiv:2101.07525, §3 (momentum BN and its lazy update).
    """
    check_floating_tensor(x, "x")
    ax = normalize_axis(axis, x.dim())
    mean, var = _as_tensor(stats.mean, x), _as_tensor(stats.var, x)
    if mean.dim() != 1 or var.shape != mean.shape:
        raise ValueError(
            "stats.mean and stats.var must be vectors of one shape [C], got "
            f"{tuple(mean.shape)} and {tuple(var.shape)}"
        )
    num_features = mean.shape[0]
    check_channels(x.shape[ax], num_features, tuple(x.shape), ax)
    params = {"scale": scale, "offset": offset}
    for name, p in params.items():
        if p is not None:
            params[name] = p = _as_tensor(p, x)
            if tuple(p.shape) != (num_features,):
                raise ValueError(f"{name} must have shape ({num_features},), got {tuple(p.shape)}")
    eps = check_eps(eps)
    check_weight(alpha, "alpha")
    check_num_views(num_views)
    check_correction(correction)

    ct = compute_dtype(x.dtype, mean.dtype)
    if not training:
        xv = x.unflatten(0, (1, -1))
        y = normalize_views(
            xv, mean.to(ct)[None], var.to(ct)[None], ax + 1, eps, params["scale"], params["offset"], ct
        )
        return y.flatten(0, 1), stats

    _, n = _check_x(x, num_views, ax, correction)
    xv = x.unflatten(0, (num_views, -1))
    mu_v, var_v, scratch = per_view_moments(xv, ax + 1, n, correction, ct)
    hist_mean, hist_var = mean.detach().to(ct), var.detach().to(ct)
    mean_hat, var_hat, new_mean, new_var, finite = mix_and_commit(
        mu_v, var_v, hist_mean, hist_var, as_weight(alpha, ct, x.device)
    )
    y = normalize_views(xv, mean_hat, var_hat, ax + 1, eps, params["scale"], params["offset"], ct, scratch)
    step, skipped = _as_tensor(stats.step, x), _as_tensor(stats.skipped, x)
    new_stats = MomentumStats(
        mean=new_mean.to(mean.dtype),
        var=new_var.to(var.dtype),
        step=step + 1,
        skipped=skipped + (~finite).to(skipped.dtype),
    )
    return y.flatten(0, 1), new_stats


# --------------------------------------------------------------------------------------------------
# teacher EMA


def _ema_tree(teacher: Mapping[str, Any], student: Mapping[str, Any], momentum: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, t in teacher.items():
        s = student[key]
        if isinstance(t, Mapping):
            out[key] = _ema_tree(t, s, momentum)
            continue
        ct = compute_dtype(t.dtype)  # half precision is mixed in float32, as in the core
        w = lerp_weight(momentum, ct, t.device)
        out[key] = torch.lerp(t.to(ct), s.to(device=t.device, dtype=ct), w).to(t.dtype)
    return out


def ema_update(
    teacher: Mapping[str, Any], student: Mapping[str, Any], momentum: float | torch.Tensor
) -> dict[str, Any]:
    """Exponential moving average of the teacher towards the student: ``m·t + (1−m)·s`` per tensor.

    The functional form (new tensors out, inputs untouched); :func:`m2t_torch.ema_update_` is the
    fused in-place form for modules.

    Args:
        teacher: Mapping of names to floating tensors (nested mappings are followed).
        student: Mapping with exactly the same keys and shapes.
        momentum: ``m`` in [0, 1], the weight on the old teacher, or a 0-d tensor (not range-checked).

    Returns:
        A new ``dict`` nested like ``teacher``; each tensor keeps the teacher's dtype and device.

    Raises:
        ValueError: keys differ (both sets of differing keys are named), shapes differ (the key and
            both shapes are named), or ``momentum`` is outside [0, 1].
        TypeError: a non-floating tensor, or arguments that are not mappings.

    References:
        Grill et al. *Bootstrap Your Own Latent*, NeurIPS 2020, eq. (1).
    """
    check_weight(momentum, "momentum")
    if not isinstance(teacher, Mapping) or not isinstance(student, Mapping):
        raise TypeError(
            f"teacher and student must be mappings of tensors, got {type(teacher).__name__} "
            f"and {type(student).__name__}"
        )
    check_pairs(teacher, student)
    return _ema_tree(teacher, student, momentum)


# --------------------------------------------------------------------------------------------------
# loss


def _as_float(a: torch.Tensor, name: str) -> torch.Tensor:
    check_floating_tensor(a, name)
    if a.dim() < 1:
        raise ValueError(f"{name} must have rank >= 1 (a feature axis), got a scalar")
    return a.float() if a.element_size() < 4 else a


def normalize(x: torch.Tensor, axis: int = -1, eps: float = NORM_EPS) -> torch.Tensor:
    """L2-normalise along ``axis``: ``x / max(‖x‖, eps)`` (zero vectors stay zero).

    Args:
        x: Floating tensor.
        axis: Axis to normalise over (the feature axis of the vectors, last by default as in the core;
            this is not a channel axis).
        eps: Lower bound on the norm.

    Returns:
        Tensor of ``x``'s shape and dtype (computed in float32 for half-precision input).
    """
    xf = _as_float(x, "x")
    norm = torch.linalg.vector_norm(xf, dim=axis, keepdim=True)
    return (xf / norm.clamp_min(eps)).to(x.dtype)


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-sample ``2 − 2·cos(p, z)`` over the last axis, in [0, 4].

    Args:
        p: Student predictions ``[..., D]``.
        z: Teacher projections, same shape (pass them detached: the teacher gets no gradient).

    Returns:
        Tensor of shape ``p.shape[:-1]`` in float32 or wider.

    Raises:
        ValueError: shapes differ.
        TypeError: non-floating input.
    """
    pf, zf = _as_float(p, "p"), _as_float(z, "z")
    if pf.shape != zf.shape:
        raise ValueError(f"p and z must have the same shape, got {tuple(pf.shape)} and {tuple(zf.shape)}")
    ct = torch.promote_types(pf.dtype, zf.dtype)
    return 2.0 - 2.0 * (normalize(pf.to(ct)) * normalize(zf.to(ct))).sum(dim=-1)


def symmetric_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """``mean_b[regression_loss(p1, z2) + regression_loss(p2, z1)]``, a scalar in [0, 8].

    Args:
        p1: Student prediction for view 1, ``[B, D]``.
        p2: Student prediction for view 2.
        z1: Teacher projection of view 1.
        z2: Teacher projection of view 2.

    Returns:
        0-d tensor, float32 or wider.

    Raises:
        ValueError: the four tensors do not share one shape.

    References:
        Grill et al. *Bootstrap Your Own Latent*, NeurIPS 2020, eq. (2).
    """
    shapes = {name: tuple(a.shape) for name, a in (("p1", p1), ("p2", p2), ("z1", z1), ("z2", z2))}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"p1, p2, z1, z2 must have the same shape, got {shapes}")
    return (regression_loss(p1, z2) + regression_loss(p2, z1)).mean()
