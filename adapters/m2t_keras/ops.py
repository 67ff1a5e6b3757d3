r"""The functional API of :mod:`m2t_core`, written with ``keras.ops`` only, so it runs on every backend.

Same names, same argument order, same defaults and the same math as the NumPy reference (see
:mod:`m2t_core.stats` for the full statement); inputs and outputs are tensors of the active Keras
backend (TensorFlow, JAX or PyTorch). The channel axis defaults to ``-1`` (channels last, Keras's
layout).

Everything that decides the *shape* of the computation — ``axis``, ``num_views``, ``correction``,
``eps``, ``training`` — is a Python value checked when the function is called (or traced), so a bad
call raises the reference's ``ValueError``/``TypeError``. Values that only enter the arithmetic —
``alpha``, ``momentum``, the statistics, ``step`` — may be tensors or variables; a Python
``alpha``/``momentum`` is range-checked, a tensor one is not (that would need a host sync).

The non-finite guard of the commit is a ``keras.ops.where``: no host synchronisation and no Python
branch on values, so the functions work inside ``jit_compile=True`` train steps.

Precision: moments and the mix are computed in float32 or wider (float16/bfloat16 inputs are
upcast), and the output keeps the input dtype. On the JAX backend float64 needs
``jax_enable_x64``; without it JAX silently computes in float32.

Conventions: ``alpha`` is the weight on the stored history (Keras BatchNormalization's
``momentum``); ``momentum`` of :func:`ema_update` is the weight on the old teacher (BYOL's τ).

References:
    Li, Liu, Sun. *Momentum² Teacher.* arXiv:2101.07525, 2021.
    Grill et al. *Bootstrap Your Own Latent.* NeurIPS 2020.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from m2t_core import schedules as _core_schedules
from m2t_core._validation import (
    check_channels,
    check_correction,
    check_eps,
    check_num_views,
    check_param_trees,
    check_unit_interval,
    correction_factor,
    normalize_axis,
)
from m2t_core.losses import NORM_EPS
from m2t_core.stats import MomentumStats
from m2t_keras._tensors import (
    Tensor,
    as_dtype,
    check_floating,
    compute_dtype,
    dtype_name,
    dynamic_shape,
    int_dtype,
    mean_over,
    scalar,
    static_shape,
    to_dtype,
    values_per_view,
)

__all__ = [
    "CosineSchedule",
    "MomentumStats",
    "cosine_schedule",
    "ema_mix",
    "ema_update",
    "eval_forward",
    "init_stats",
    "momentum_batch_norm",
    "normalize",
    "regression_loss",
    "stats_momentum_schedule",
    "symmetric_loss",
    "teacher_momentum_schedule",
    "train_forward",
    "view_moments",
]


# --------------------------------------------------------------------------------------------------
# statistics


def _correction_factor(x: Tensor, n: int | None, axis: int, num_views: int, correction: str, ct: str):
    """The Bessel-type factor; a Python float when ``n`` is static, else a traced scalar.

    With a static ``n`` the reference's checks run (``n = 1`` with a ÷(n−1) estimator raises). With
    an unknown batch size (TF graphs fed by a dataset without ``drop_remainder``) ``n`` is only
    known at run time: ``n = 1`` then gives an infinite variance, which the non-finite guard skips.
    """
    if n is not None:
        return correction_factor(n, correction)
    if correction == "biased":
        return 1.0
    count = ops.cast(ops.size(x), ct) / ops.cast(x.shape[axis] * num_views, ct)
    ratio = count / (count - 1.0)
    return ratio if correction == "unbiased" else ratio * ratio


def _broadcast_shape(ndim: int, axis: int, channels: int) -> list[int]:
    shape = [1] * ndim
    shape[axis] = channels
    return shape


def init_stats(num_features: int, dtype: Any = np.float32) -> MomentumStats:
    """Fresh statistics as backend tensors: mean 0, variance 1, step 0, nothing skipped.

    Args:
        num_features: Number of channels ``C``.
        dtype: Floating dtype of ``mean`` and ``var`` (any dtype Keras understands).

    Returns:
        A :class:`~m2t_core.MomentumStats` of tensors; ``step`` and ``skipped`` are 0-d integer
        tensors (int64; int32 on JAX).

    Raises:
        ValueError: ``num_features < 1``.
        TypeError: ``num_features`` is not an int or ``dtype`` is not floating.
    """
    if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)):
        raise TypeError(f"num_features must be an int, got {num_features!r}")
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    name = keras.backend.standardize_dtype(dtype)
    if not keras.backend.is_float_dtype(name):
        raise TypeError(f"dtype must have a floating dtype, got {name}")
    return MomentumStats(
        mean=ops.zeros((int(num_features),), name),
        var=ops.ones((int(num_features),), name),
        step=ops.convert_to_tensor(0, int_dtype()),
        skipped=ops.convert_to_tensor(0, int_dtype()),
    )


@dataclass(frozen=True)
class _Moments:
    """Per-view moments in the layout ``[V, B/V, ...]`` (kept broadcastable against the views)."""

    views: Tensor  # x reshaped to [V, N/V, *x.shape[1:]], in the compute dtype
    mean: Tensor  # [V, 1, ..., C, ..., 1]
    var: Tensor
    axis: int  # channel axis of `views` (the input's axis + 1)


def _check_x(x: Tensor, num_views: int, axis: int, correction: str) -> tuple[int, int | None]:
    """Validate ``x``; return ``(non-negative axis, n)`` with ``n`` ``None`` when not static."""
    check_floating(x, "x")
    shape = static_shape(x)
    ax = normalize_axis(axis, len(shape))
    check_num_views(num_views, shape[0])
    check_correction(correction)
    if shape[ax] is None:
        raise ValueError(f"the channel axis {ax} of x must have a static size, got shape {shape}")
    n = values_per_view(shape, ax, num_views)
    if n is not None:
        correction_factor(n, correction)  # raises for n < 1, or n == 1 with a ÷(n−1) estimator
    return ax, n


def _view_moments(x: Tensor, num_views: int, ax: int, n: int | None, correction: str, ct: str) -> _Moments:
    """Moments of each view without moving the channel axis: views split off axis 0, reduce the rest.

    Splitting the batch axis into ``[V, N/V]`` is a free reshape, whereas moving the channel axis
    last (as the reference does) would copy the whole activation.
    """
    shape = dynamic_shape(x)
    views = ops.reshape(to_dtype(x, ct), (num_views, -1, *shape[1:]))
    reduce = tuple(i for i in range(1, len(shape) + 1) if i != ax + 1)
    mean = mean_over(views, reduce)
    # Two-pass variance: subtracting the mean first is far more accurate on offset data than
    # E[x²] − E[x]², and it is what the reference computes.
    var = mean_over(ops.square(views - mean), reduce)
    factor = _correction_factor(x, n, ax, num_views, correction, ct)
    if not (isinstance(factor, float) and factor == 1.0):
        var = var * scalar(factor, ct)
    return _Moments(views=views, mean=mean, var=var, axis=ax + 1)


def view_moments(
    x: Tensor, *, num_views: int, axis: int, correction: str = "biased"
) -> tuple[Tensor, Tensor]:
    """Per-view, per-channel mean and variance of a batch of concatenated views.

    Args:
        x: Floating tensor of rank >= 2, ``V`` views concatenated along axis 0.
        num_views: ``V``; must divide ``x.shape[0]``.
        axis: Channel axis (not 0).
        correction: ``"biased"``, ``"unbiased"`` or ``"official"`` (see :mod:`m2t_core.stats`).

    Returns:
        ``(mean, var)``, each of shape ``[V, C]``, in float32 or wider (two-pass variance).

    Raises:
        TypeError: ``x`` is not floating.
        ValueError: bad ``axis``, ``num_views`` not dividing the batch, unknown ``correction``, or
            ``n = 1`` with a correction that divides by ``n − 1``.
    """
    x = ops.convert_to_tensor(x)
    ax, n = _check_x(x, num_views, axis, correction)
    m = _view_moments(x, num_views, ax, n, correction, compute_dtype(dtype_name(x)))
    channels = static_shape(x)[ax]
    return ops.reshape(m.mean, (num_views, channels)), ops.reshape(m.var, (num_views, channels))


def _offset(y: Tensor, offset: Tensor | None, shape: list[int], ct: str) -> Tensor:
    if offset is not None:
        y = y + ops.reshape(to_dtype(offset, ct), shape)
    return y


def _inverse_std(var: Tensor, eps: float, scale: Tensor | None, shape: list[int], ct: str) -> Tensor:
    """``γ / sqrt(var + eps)``, the factor every normalised value is multiplied by."""
    inv = 1.0 / ops.sqrt(var + eps)
    if scale is not None:
        inv = inv * ops.reshape(to_dtype(scale, ct), shape)
    return inv


def train_forward(
    x: Tensor,
    hist_mean: Tensor,
    hist_var: Tensor,
    alpha: Tensor | float,
    *,
    num_views: int,
    axis: int,
    eps: float,
    scale: Tensor | None,
    offset: Tensor | None,
    correction: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training-mode momentum BN on validated arguments (shared by :func:`momentum_batch_norm` and the layer).

    Args:
        x: Input (already checked by the caller).
        hist_mean: Stored mean ``[C]``.
        hist_var: Stored variance ``[C]``.
        alpha: History weight (Python float or scalar tensor).
        num_views: ``V``.
        axis: Non-negative channel axis of ``x``.
        eps: Variance epsilon.
        scale: ``γ`` or ``None``.
        offset: ``β`` or ``None``.
        correction: Variance estimator.

    Returns:
        ``(y, new_mean, new_var, finite)``: ``y`` in ``x``'s dtype; the committed mean and variance
        in the compute dtype, already guarded (the old values where the commit is non-finite); and
        the boolean guard.
    """
    ct = compute_dtype(dtype_name(x), dtype_name(hist_mean))
    n = values_per_view(static_shape(x), axis, num_views)
    m = _view_moments(x, num_views, axis, n, correction, ct)
    channels = static_shape(x)[axis]
    bshape = _broadcast_shape(len(static_shape(x)) + 1, m.axis, channels)
    hist_mean, hist_var = to_dtype(hist_mean, ct), to_dtype(hist_var, ct)
    h_mean = ops.reshape(hist_mean, bshape)
    h_var = ops.reshape(hist_var, bshape)
    a = scalar(alpha, ct)
    one_minus_a = 1.0 - a
    # Every view mixes its own moments with the SAME stored history (the paper's lazy update).
    mean_hat = one_minus_a * m.mean + a * h_mean
    var_hat = one_minus_a * m.var + a * h_var
    inv = _inverse_std(var_hat, eps, scale, bshape, ct)
    y = _offset((m.views - mean_hat) * inv, offset, bshape, ct)
    y = to_dtype(ops.reshape(y, dynamic_shape(x)), dtype_name(x))

    # Commit once, after all views: the mean over views of each view's moments.
    new_mean = ops.reshape(one_minus_a * mean_over(m.mean, (0,)) + a * h_mean, (channels,))
    new_var = ops.reshape(one_minus_a * mean_over(m.var, (0,)) + a * h_var, (channels,))
    # 0·v is NaN exactly where v is NaN or ±inf and 0 elsewhere (no overflow, unlike a sum), so one
    # reduction decides for both statistics.
    finite = ops.all(ops.isfinite(new_mean * 0.0 + new_var * 0.0))
    new_mean = ops.where(finite, new_mean, hist_mean)
    new_var = ops.where(finite, new_var, hist_var)
    return y, new_mean, new_var, finite


def eval_forward(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    *,
    axis: int,
    eps: float,
    scale: Tensor | None,
    offset: Tensor | None,
) -> Tensor:
    """Evaluation-mode BN ``γ·(x − μ)/sqrt(σ² + eps) + β`` with stored statistics (``x``'s dtype)."""
    ct = compute_dtype(dtype_name(x), dtype_name(mean))
    bshape = _broadcast_shape(len(static_shape(x)), axis, static_shape(x)[axis])
    inv = _inverse_std(ops.reshape(to_dtype(var, ct), bshape), eps, scale, bshape, ct)
    y = (to_dtype(x, ct) - ops.reshape(to_dtype(mean, ct), bshape)) * inv
    return to_dtype(_offset(y, offset, bshape, ct), dtype_name(x))


def momentum_batch_norm(
    x: Tensor,
    stats: MomentumStats,
    *,
    alpha: float | Tensor,
    num_views: int = 2,
    axis: int = -1,
    eps: float = 1e-5,
    scale: Tensor | None = None,
    offset: Tensor | None = None,
    correction: str = "biased",
    training: bool = True,
) -> tuple[Tensor, MomentumStats]:
    """Momentum batch normalisation of ``num_views`` concatenated views (see :mod:`m2t_core.stats`).

    Args:
        x: Floating tensor of rank >= 2, views concatenated along axis 0.
        stats: Stored statistics (:func:`init_stats`, or a :class:`~m2t_core.MomentumStats` of
            tensors or NumPy arrays).
        alpha: Weight on the stored history, in [0, 1]; a Python number or a scalar tensor.
        num_views: ``V``; must divide ``x.shape[0]``.
        axis: Channel axis (not 0); ``-1`` for channels-last.
        eps: Added to the variance before the square root (the reference's default 1e-5; the
            Keras layer defaults to Keras's 1e-3).
        scale: Optional ``γ`` of shape ``[C]``.
        offset: Optional ``β`` of shape ``[C]``.
        correction: Variance estimator, ``"biased"``, ``"unbiased"`` or ``"official"``.
        training: Training mode (mixed per-view moments, commit) or evaluation mode (stored
            statistics; ``stats`` is returned unchanged). A Python bool.

    Returns:
        ``(y, new_stats)``: ``y`` has the shape and dtype of ``x``; ``new_stats`` holds tensors of
        the statistics' dtypes.

    Raises:
        TypeError: ``x`` is not floating.
        ValueError: channel count of ``x`` differs from the statistics, ``num_views`` does not divide
            the batch, ``alpha`` outside [0, 1], bad ``axis``/``correction``/``eps``, mis-shaped
            ``scale``/``offset``, or ``n = 1`` with a correction that divides by ``n − 1``.

    References:
        Li, Liu, Sun. Momentum² Teacher, arXiv:2101.07525, §3 (momentum BN and its lazy update).
    """
    x = ops.convert_to_tensor(x)
    check_floating(x, "x")
    shape = static_shape(x)
    ax = normalize_axis(axis, len(shape))
    mean, var = ops.convert_to_tensor(stats.mean), ops.convert_to_tensor(stats.var)
    num_features = static_shape(mean)[0]
    check_channels(shape[ax], num_features, shape, ax)
    for name, p in (("scale", scale), ("offset", offset)):
        if p is not None and static_shape(ops.convert_to_tensor(p)) != (num_features,):
            got = static_shape(ops.convert_to_tensor(p))
            raise ValueError(f"{name} must have shape ({num_features},), got {got}")
    eps = check_eps(eps)
    if isinstance(alpha, (int, float, np.number)):
        check_unit_interval(alpha, "alpha")
    check_num_views(num_views)
    check_correction(correction)
    if not training:
        return eval_forward(x, mean, var, axis=ax, eps=eps, scale=scale, offset=offset), stats
    _check_x(x, num_views, ax, correction)

    y, new_mean, new_var, finite = train_forward(
        x,
        mean,
        var,
        alpha,
        num_views=num_views,
        axis=ax,
        eps=eps,
        scale=scale,
        offset=offset,
        correction=correction,
    )
    step = ops.convert_to_tensor(stats.step)
    skipped = ops.convert_to_tensor(stats.skipped)
    new_stats = MomentumStats(
        mean=ops.cast(new_mean, dtype_name(mean)),
        var=ops.cast(new_var, dtype_name(var)),
        step=step + ops.cast(1, dtype_name(step)),
        skipped=skipped + ops.cast(ops.logical_not(finite), dtype_name(skipped)),
    )
    return y, new_stats


# --------------------------------------------------------------------------------------------------
# teacher EMA


def _check_trees(teacher: Mapping[str, Any], student: Mapping[str, Any]) -> None:
    """The reference's structure checks (same messages), on tensors: static shapes and dtype names only."""
    check_param_trees(
        teacher,
        student,
        shape_of=lambda t: static_shape(ops.convert_to_tensor(t)),
        dtype_of=lambda t: dtype_name(ops.convert_to_tensor(t)),
    )


def ema_mix(teacher: Tensor, student: Tensor, momentum: Tensor | float) -> Tensor:
    """``m·t + (1−m)·s`` in float32 or wider, returned in the teacher's dtype."""
    t_dtype = dtype_name(teacher)
    ct = compute_dtype(t_dtype)
    m = scalar(momentum, ct)
    mixed = m * ops.cast(teacher, ct) + (1.0 - m) * ops.cast(student, ct)
    return ops.cast(mixed, t_dtype)


def _ema(teacher: Mapping[str, Any], student: Mapping[str, Any], m: Tensor | float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, t in teacher.items():
        if isinstance(t, Mapping):
            out[key] = _ema(t, student[key], m)
        else:
            out[key] = ema_mix(ops.convert_to_tensor(t), ops.convert_to_tensor(student[key]), m)
    return out


def ema_update(
    teacher: Mapping[str, Any], student: Mapping[str, Any], momentum: float | Tensor
) -> dict[str, Any]:
    """Exponential moving average of the teacher towards the student: ``m·t + (1−m)·s`` per tensor.

    Args:
        teacher: Mapping of names to floating tensors (nested mappings are followed).
        student: Mapping with exactly the same keys and shapes.
        momentum: ``m`` in [0, 1], the weight on the old teacher (a Python number or scalar
            tensor). ``m = 1`` keeps the teacher, ``m = 0`` copies the student.

    Returns:
        A new ``dict`` (nested like ``teacher``) of tensors, each in the teacher's dtype (half
        precision is mixed in float32). The inputs are not modified.

    Raises:
        ValueError: keys differ, shapes differ, or a Python ``momentum`` is outside [0, 1].
        TypeError: a non-floating tensor, or ``teacher``/``student`` is not a mapping.

    References:
        Grill et al. *Bootstrap Your Own Latent*, NeurIPS 2020, eq. (1).
    """
    if isinstance(momentum, (int, float, np.number)):
        check_unit_interval(momentum, "momentum")
    if not isinstance(teacher, Mapping) or not isinstance(student, Mapping):
        raise TypeError(
            f"teacher and student must be mappings of arrays, got {type(teacher).__name__} "
            f"and {type(student).__name__}"
        )
    _check_trees(teacher, student)
    return _ema(teacher, student, momentum)


# --------------------------------------------------------------------------------------------------
# schedules


@dataclass(frozen=True)
class CosineSchedule(_core_schedules.CosineSchedule):
    """The reference's validated cosine schedule, evaluated with ``keras.ops`` on a step tensor.

    Calling it with a step (Python int, integer tensor or Keras variable) returns a float32 tensor,
    so a layer can compute its ``α_k`` or ``m_k`` inside a compiled train step from a step variable.
    Build it with :func:`cosine_schedule`, :func:`teacher_momentum_schedule` or
    :func:`stats_momentum_schedule`.

    Attributes:
        start: Value at step 0.
        end: Value at steps ``>= total_steps``.
        total_steps: ``K``, or ``None`` for a constant schedule.
    """

    def __call__(self, step: Any) -> Tensor:  # type: ignore[override]
        """Value at ``step`` (clamped to ``[0, total_steps]``), a float32 tensor of ``step``'s shape."""
        k = ops.cast(step, "float32")
        if self.is_constant:
            return ops.full_like(k, self.start)
        total = float(self.total_steps)  # type: ignore[arg-type]
        k = ops.clip(k, 0.0, total)
        return self.end - (self.end - self.start) * (ops.cos(k * (math.pi / total)) + 1.0) / 2.0

    @classmethod
    def from_core(cls, schedule: _core_schedules.CosineSchedule) -> CosineSchedule:
        """The same curve as a reference :class:`m2t_core.CosineSchedule`, evaluated with keras.ops."""
        return cls(schedule.start, schedule.end, schedule.total_steps)


def cosine_schedule(start: float, end: float, total_steps: int | None) -> CosineSchedule:
    """Cosine curve from ``start`` (step 0) to ``end`` (step ``total_steps`` and after).

    Args:
        start: Value at step 0, in [0, 1].
        end: Final value, in [0, 1].
        total_steps: ``K > 0``; may be ``None`` only when ``start == end``.

    Returns:
        A :class:`CosineSchedule` (callable ``step -> float32 tensor``).

    Raises:
        ValueError: ``total_steps <= 0``, ``start``/``end`` outside [0, 1], or ``total_steps`` missing
            for a non-constant schedule.
        TypeError: ``total_steps`` is not an int.
    """
    return CosineSchedule.from_core(_core_schedules.cosine_schedule(start, end, total_steps))


def teacher_momentum_schedule(
    total_steps: int | None, base_momentum: float = 0.99, final_momentum: float = 1.0
) -> CosineSchedule:
    """Teacher EMA momentum ``m_k``: cosine from ``base_momentum`` (0.99) to ``final_momentum`` (1).

    Args:
        total_steps: ``K``; may be ``None`` for a constant momentum.
        base_momentum: ``m_0``.
        final_momentum: ``m_K``.

    Returns:
        A :class:`CosineSchedule`.

    Raises:
        ValueError: see :func:`cosine_schedule` (messages name ``base_momentum``/``final_momentum``).
    """
    return CosineSchedule.from_core(
        _core_schedules.teacher_momentum_schedule(total_steps, base_momentum, final_momentum)
    )


def stats_momentum_schedule(
    total_steps: int | None, alpha_start: float = 0.0, alpha_end: float = 1.0
) -> CosineSchedule:
    """Statistics history weight ``α_k``: cosine from ``alpha_start`` (0) to ``alpha_end`` (1).

    Args:
        total_steps: ``K``; may be ``None`` for a constant ``α``.
        alpha_start: ``α_0``.
        alpha_end: ``α_K``.

    Returns:
        A :class:`CosineSchedule`.

    Raises:
        ValueError: see :func:`cosine_schedule` (messages name ``alpha_start``/``alpha_end``).
    """
    return CosineSchedule.from_core(
        _core_schedules.stats_momentum_schedule(total_steps, alpha_start, alpha_end)
    )


# --------------------------------------------------------------------------------------------------
# loss


def _as_float(a: Tensor, name: str) -> Tensor:
    a = ops.convert_to_tensor(a)
    check_floating(a, name)
    if len(static_shape(a)) < 1:
        raise ValueError(f"{name} must have rank >= 1 (a feature axis), got a scalar")
    return ops.cast(a, compute_dtype(dtype_name(a)))


def normalize(x: Tensor, axis: int = -1, eps: float = NORM_EPS) -> Tensor:
    """L2-normalise along ``axis``: ``x / max(‖x‖, eps)`` (zero vectors stay zero).

    Args:
        x: Floating tensor.
        axis: Axis to normalise over.
        eps: Lower bound on the norm.

    Returns:
        Tensor of ``x``'s shape and dtype (computed in float32 or wider).

    Raises:
        TypeError: ``x`` is not floating.
        ValueError: ``x`` is a scalar.
    """
    x = ops.convert_to_tensor(x)
    xf = _as_float(x, "x")
    squares = ops.sum(ops.square(xf), axis=axis, keepdims=True)
    # The gradient of sqrt at 0 is inf, and inf·0 = NaN: a zero vector (e.g. a prediction whose
    # ReLU layer is all zero, with a zero bias) would turn every weight NaN. Take the norm of a
    # zero vector as 0 without differentiating sqrt there — torch.linalg.vector_norm's subgradient,
    # so the gradient is the reference's (x / eps) in m2t_torch. The value is unchanged.
    zero = squares == 0
    root = ops.sqrt(ops.where(zero, ops.ones_like(squares), squares))
    norm = ops.where(zero, ops.zeros_like(squares), root)
    # where(), not ops.maximum: on the PyTorch backend ops.maximum returns float32 for float64
    # inputs. A NaN norm stays NaN, as with a maximum.
    floor = as_dtype(eps, dtype_name(xf))
    return ops.cast(xf / ops.where(norm < floor, floor, norm), dtype_name(x))


def regression_loss(p: Tensor, z: Tensor) -> Tensor:
    """Per-sample ``2 − 2·cos(p, z)`` over the last axis, in [0, 4].

    Args:
        p: Student predictions ``[..., D]``.
        z: Teacher projections, same shape.

    Returns:
        Tensor of shape ``p.shape[:-1]`` in float32 or wider.

    Raises:
        ValueError: shapes differ.
        TypeError: non-floating input.
    """
    pf, zf = _as_float(p, "p"), _as_float(z, "z")
    if static_shape(pf) != static_shape(zf):
        raise ValueError(f"p and z must have the same shape, got {static_shape(pf)} and {static_shape(zf)}")
    ct = compute_dtype(dtype_name(pf), dtype_name(zf))
    pf, zf = ops.cast(pf, ct), ops.cast(zf, ct)
    return 2.0 - 2.0 * ops.sum(normalize(pf) * normalize(zf), axis=-1)


def symmetric_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
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
    """
    tensors: Sequence[tuple[str, Tensor]] = (("p1", p1), ("p2", p2), ("z1", z1), ("z2", z2))
    shapes = {name: static_shape(ops.convert_to_tensor(a)) for name, a in tensors}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"p1, p2, z1, z2 must have the same shape, got {shapes}")
    return mean_over(regression_loss(p1, z2) + regression_loss(p2, z1), (0,), keepdims=False)
