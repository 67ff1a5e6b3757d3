r"""The functional API of :mod:`m2t_core`, on JAX arrays: pure, ``jax.jit``- and ``jax.vmap``-safe.

Same names, same argument order and the same math as the NumPy reference (see
:mod:`m2t_core.stats` for the full statement); the channel axis defaults to ``-1`` (channels last,
as in Flax). Everything that decides the *shape* of the computation — ``axis``, ``num_views``,
``correction``, ``eps``, ``training`` — is a Python value checked at trace time, so a bad call fails
with the same ``ValueError``/``TypeError`` as the reference, eagerly or under ``jax.jit``. Values that
only enter the arithmetic — ``alpha``, ``momentum``, the statistics, ``step`` — may be traced arrays;
a concrete ``alpha``/``momentum`` is range-checked, a traced one cannot be without a host sync.

The non-finite guard of the commit is a ``jnp.where``: it needs no host synchronisation and no
Python branching on values.

Conventions: ``alpha`` is the weight on the stored history (Flax's BatchNorm ``momentum``);
``momentum`` of :func:`ema_update` is the weight on the old teacher (BYOL's τ).

References:
    Li, Liu, Sun. *Momentum² Teacher.* arXiv:2101.07525, 2021.
    Grill et al. *Bootstrap Your Own Latent.* NeurIPS 2020.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from m2t_core import schedules as _core_schedules
from m2t_core import stats as _core_stats
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
from m2t_core.losses import NORM_EPS
from m2t_core.stats import MomentumStats

__all__ = [
    "CosineSchedule",
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

Array = jax.Array


# --------------------------------------------------------------------------------------------------
# statistics


def init_stats(num_features: int, dtype: Any = np.float32) -> MomentumStats:
    """Fresh statistics as JAX arrays: mean 0, variance 1, step 0, nothing skipped.

    Args:
        num_features: Number of channels ``C``.
        dtype: Floating dtype of ``mean`` and ``var``. ``step``/``skipped`` are int32 (int64 when
            ``jax_enable_x64`` is on).

    Returns:
        A :class:`~m2t_core.MomentumStats` of JAX arrays.

    Raises:
        ValueError: ``num_features < 1``.
        TypeError: ``num_features`` is not an int or ``dtype`` is not floating.
    """
    ref = _core_stats.init_stats(num_features, dtype)
    int_dtype = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
    return MomentumStats(
        mean=jnp.asarray(ref.mean),
        var=jnp.asarray(ref.var),
        step=jnp.zeros((), int_dtype),
        skipped=jnp.zeros((), int_dtype),
    )


def _compute_dtype(*dtypes: Any) -> jnp.dtype:
    """float32 or wider: half-precision inputs are upcast, float64 stays float64 (when enabled)."""
    wide = [jnp.float32] + [d for d in dtypes if jnp.dtype(d).itemsize >= 4]
    return jnp.result_type(*wide)


def _views_last(x: Array, num_groups: int, axis: int) -> Array:
    """``x`` as ``[G, n, C]``: groups of rows first, channels last, everything else flattened."""
    xt = jnp.moveaxis(x, axis, -1)
    return xt.reshape(num_groups, -1, xt.shape[-1])


def _check_x(x: Array, num_views: int, axis: int, correction: str) -> tuple[int, int]:
    """Validate ``x`` (static properties only) and return ``(axis >= 0, n per channel and view)``."""
    check_floating(x.dtype, "x")
    axis = normalize_axis(axis, x.ndim)
    check_num_views(num_views, x.shape[0])
    check_correction(correction)
    n = x.size // (x.shape[axis] * num_views) if x.size else 0
    correction_factor(n, correction)  # raises for n < 1, or n == 1 with a ÷(n−1) estimator
    return axis, n


def _moments(x: Array, num_views: int, axis: int, n: int, correction: str, ct: Any) -> tuple[Array, Array]:
    """Two-pass per-view moments ``[V, C]`` in ``ct`` (arguments already validated)."""
    xv = _views_last(x, num_views, axis).astype(ct)
    mean = xv.mean(axis=1)
    # Two-pass variance: E[(x − E[x])²] keeps float32 accurate on offset activations, where
    # E[x²] − E[x]² cancels catastrophically; the reference core computes it the same way.
    var = jnp.square(xv - mean[:, None, :]).mean(axis=1)
    factor = correction_factor(n, correction)
    if factor != 1.0:
        var = var * jnp.asarray(factor, ct)
    return mean, var


def view_moments(x: Array, *, num_views: int, axis: int, correction: str = "biased") -> tuple[Array, Array]:
    """Per-view, per-channel mean and variance of a batch of concatenated views.

    Args:
        x: Floating array of rank >= 2, ``V`` views concatenated along axis 0.
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
    x = jnp.asarray(x)
    axis, n = _check_x(x, num_views, axis, correction)
    return _moments(x, num_views, axis, n, correction, _compute_dtype(x.dtype))


def _normalize_groups(
    x: Array,
    mean: Array,
    var: Array,
    num_groups: int,
    axis: int,
    eps: float,
    scale: Array | None,
    offset: Array | None,
    ct: Any,
    out_dtype: Any,
) -> Array:
    """``γ·(x_g − mean_g)/sqrt(var_g + eps) + β`` per group ``g`` of rows, returned in ``out_dtype``."""
    # 1/sqrt rather than rsqrt: the same two roundings as the reference, so float32 results agree
    # to an ulp instead of a few.
    inv = 1.0 / jnp.sqrt(var + jnp.asarray(eps, ct))  # [G, C]
    if scale is not None:
        inv = inv * scale.astype(ct)
    # Broadcast the per-group statistics to one row per sample instead of reshaping x into groups:
    # x keeps its layout (no transpose for a channel axis other than the last), which lets XLA
    # fuse the normalisation into its producer as it does for a plain BatchNorm.
    rows = x.shape[0] // num_groups
    shape = [1] * x.ndim
    shape[0], shape[axis] = x.shape[0], x.shape[axis]
    mean_rows = jnp.repeat(mean, rows, axis=0).reshape(shape)
    inv_rows = jnp.repeat(inv, rows, axis=0).reshape(shape)
    y = (x.astype(ct) - mean_rows) * inv_rows
    if offset is not None:
        y = y + offset.astype(ct).reshape(shape[1:])
    return y.astype(out_dtype)


def _check_affine(num_features: int, scale: Any, offset: Any) -> tuple[Array | None, Array | None]:
    out = []
    for name, p in (("scale", scale), ("offset", offset)):
        if p is not None:
            p = jnp.asarray(p)
            if p.shape != (num_features,):
                raise ValueError(f"{name} must have shape ({num_features},), got {tuple(p.shape)}")
        out.append(p)
    return out[0], out[1]


def _as_stats(stats: MomentumStats) -> MomentumStats:
    if not isinstance(stats, tuple) or len(stats) != 4:
        raise TypeError(
            f"stats must be a MomentumStats (mean, var, step, skipped), got {type(stats).__name__}"
        )
    mean, var, step, skipped = (jnp.asarray(a) for a in stats)
    if mean.ndim != 1 or var.shape != mean.shape:
        raise ValueError(
            f"stats.mean and stats.var must be vectors of one shape [C], got {mean.shape} and {var.shape}"
        )
    return MomentumStats(mean, var, step, skipped)


def _train_bn(
    x: Array,
    stats: MomentumStats,
    alpha: Any,
    num_views: int,
    axis: int,
    n: int,
    eps: float,
    scale: Array | None,
    offset: Array | None,
    correction: str,
    out_dtype: Any,
) -> tuple[Array, MomentumStats]:
    """Training-mode momentum BN on validated arguments (``axis`` non-negative, ``n`` known)."""
    ct = _compute_dtype(x.dtype, stats.mean.dtype)
    hist_mean = stats.mean.astype(ct)
    hist_var = stats.var.astype(ct)
    mu_v, var_v = _moments(x, num_views, axis, n, correction, ct)
    a = jnp.asarray(alpha, ct)
    one_minus_a = 1 - a
    mean_hat = one_minus_a * mu_v + a * hist_mean  # [V, C]: every view mixes with the same history
    var_hat = one_minus_a * var_v + a * hist_var
    y = _normalize_groups(x, mean_hat, var_hat, num_views, axis, eps, scale, offset, ct, out_dtype)

    new_mean = one_minus_a * mu_v.mean(axis=0) + a * hist_mean
    new_var = one_minus_a * var_v.mean(axis=0) + a * hist_var
    finite = jnp.isfinite(new_mean).all() & jnp.isfinite(new_var).all()
    committed = finite.astype(stats.step.dtype)
    skipped = jnp.logical_not(finite).astype(stats.skipped.dtype)
    new_stats = MomentumStats(
        mean=jnp.where(finite, new_mean, hist_mean).astype(stats.mean.dtype),
        var=jnp.where(finite, new_var, hist_var).astype(stats.var.dtype),
        # The step advances by one either way. It is written as "committed + skipped" (exactly one of
        # them is 1) rather than a constant "+ 1" so that the counter depends on this commit, as the
        # statistics do: a step whose momentum BNs each add a data-independent "+ 1" is usually run 5–13%
        # slower by XLA:CPU's concurrent runtime, which then executes the teacher's and the student's
        # first convolutions one after the other (benchmarks/bench_flax.py keeps a control for it).
        step=stats.step + committed + skipped.astype(stats.step.dtype),
        skipped=stats.skipped + skipped,
    )
    return y, new_stats


def _eval_bn(
    x: Array,
    stats: MomentumStats,
    axis: int,
    eps: float,
    scale: Array | None,
    offset: Array | None,
    out_dtype: Any,
) -> Array:
    """Evaluation-mode BN with the stored statistics (one group, any batch size)."""
    ct = _compute_dtype(x.dtype, stats.mean.dtype)
    mean = stats.mean.astype(ct)[None]
    var = stats.var.astype(ct)[None]
    return _normalize_groups(x, mean, var, 1, axis, eps, scale, offset, ct, out_dtype)


def momentum_batch_norm(
    x: Array,
    stats: MomentumStats,
    *,
    alpha: float | Array,
    num_views: int = 2,
    axis: int = -1,
    eps: float = 1e-5,
    scale: Array | None = None,
    offset: Array | None = None,
    correction: str = "biased",
    training: bool = True,
) -> tuple[Array, MomentumStats]:
    """Momentum batch normalisation of ``num_views`` concatenated views (see :mod:`m2t_core.stats`).

    Training mode normalises view ``v`` with ``(1−α)·moments(v) + α·history`` and commits
    ``(1−α)·mean_v(moments) + α·history`` once; evaluation mode normalises with the history.
    A commit whose moments are not finite is skipped (``skipped`` increments, ``step`` still does).

    Args:
        x: Floating array of rank >= 2, views concatenated along axis 0.
        stats: Stored statistics (:func:`init_stats`; NumPy arrays are accepted too).
        alpha: Weight on the stored history, in [0, 1]; may be a traced array.
        num_views: ``V``; must divide ``x.shape[0]``.
        axis: Channel axis (not 0); ``-1`` is channels-last, Flax's layout.
        eps: Added to the variance before the square root.
        scale: Optional ``γ`` of shape ``[C]``.
        offset: Optional ``β`` of shape ``[C]``.
        correction: Variance estimator, ``"biased"``, ``"unbiased"`` or ``"official"``.
        training: Python bool: training mode (normalise with mixed per-view moments and commit) or
            evaluation mode (normalise with the stored statistics; ``stats`` is returned unchanged).

    Returns:
        ``(y, new_stats)``: ``y`` has the shape and dtype of ``x``; ``new_stats`` keeps the dtypes of
        ``stats``.

    Raises:
        TypeError: ``x`` is not floating, or ``training`` is not a Python bool.
        ValueError: channel count of ``x`` differs from the statistics, ``num_views`` does not divide
            the batch, a concrete ``alpha`` outside [0, 1], bad ``axis``/``correction``/``eps``,
            mis-shaped ``scale``/``offset``, or ``n = 1`` with a correction that divides by ``n − 1``.

    References:
        Li, Liu, Sun. Momentum² Teacher, arXiv:2101.07525, §3 (momentum BN and its lazy update).
    """
    x = jnp.asarray(x)
    check_floating(x.dtype, "x")
    ax = normalize_axis(axis, x.ndim)
    st = _as_stats(stats)
    num_features = st.mean.shape[0]
    check_channels(x.shape[ax], num_features, x.shape, ax)
    scale, offset = _check_affine(num_features, scale, offset)
    eps = check_eps(eps)
    check_unit_interval(alpha, "alpha")
    check_num_views(num_views)
    check_correction(correction)
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(
            f"training must be a Python bool (it selects the computation at trace time), got {training!r}"
        )
    if not training:
        return _eval_bn(x, st, ax, eps, scale, offset, x.dtype), stats
    ax, n = _check_x(x, num_views, ax, correction)
    return _train_bn(x, st, alpha, num_views, ax, n, eps, scale, offset, correction, x.dtype)


# --------------------------------------------------------------------------------------------------
# teacher EMA


def _leaf_name(path: tuple) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".") if path else "<root>"


def _check_trees(teacher: Any, student: Any) -> None:
    t_leaves, t_def = jax.tree_util.tree_flatten_with_path(teacher)
    s_leaves, s_def = jax.tree_util.tree_flatten_with_path(student)
    t_paths = {_leaf_name(p): a for p, a in t_leaves}
    s_paths = {_leaf_name(p): a for p, a in s_leaves}
    if set(t_paths) != set(s_paths):
        raise ValueError(
            "teacher and student must have the same keys: "
            f"only in teacher: {sorted(set(t_paths) - set(s_paths))}, "
            f"only in student: {sorted(set(s_paths) - set(t_paths))}"
        )
    if t_def != s_def:
        raise ValueError(
            f"teacher and student have the same keys but different tree types: {t_def} vs {s_def}"
        )
    for name, t in t_paths.items():
        s = s_paths[name]
        t_shape, s_shape = jnp.shape(t), jnp.shape(s)
        if t_shape != s_shape:
            raise ValueError(f"shape mismatch for {name!r}: teacher {t_shape} vs student {s_shape}")
        for who, arr in (("teacher", t), ("student", s)):
            dtype = jnp.result_type(arr)
            if not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(
                    f"{who}[{name!r}] has dtype {jnp.dtype(dtype).name}; the EMA runs over floating "
                    "parameters only (keep counters and statistics out of it)"
                )


def _ema_leaf(t: Any, s: Any, m: Any) -> Array:
    t = jnp.asarray(t)
    # Half-precision parameters are mixed in float32: 1 − m is ~1e-3 late in training, below
    # bfloat16's resolution, so mixing in bfloat16 would freeze the teacher.
    ct = _compute_dtype(t.dtype) if jnp.dtype(t.dtype).itemsize < 4 else t.dtype
    mm = jnp.asarray(m, ct)
    return (mm * t.astype(ct) + (1 - mm) * jnp.asarray(s).astype(ct)).astype(t.dtype)


def ema_update(teacher: Any, student: Any, momentum: float | Array) -> Any:
    """Exponential moving average of the teacher towards the student: ``m·t + (1−m)·s`` per leaf.

    Equivalent to ``optax.incremental_update(new=student, old=teacher, step_size=1 - momentum)``
    up to rounding (this form rounds exactly like the reference core).

    Args:
        teacher: Pytree of floating arrays (a mapping, an ``nnx.State``, Linen ``params`` ...).
        student: Pytree with the same structure, keys and shapes.
        momentum: ``m`` in [0, 1], the weight on the old teacher; may be a traced array.

    Returns:
        A new pytree shaped like ``teacher``; each leaf keeps the teacher's dtype (half precision is
        mixed in float32). The inputs are not modified.

    Raises:
        ValueError: keys differ (both sets of differing keys are named), shapes differ (the key and
            both shapes are named), or a concrete ``momentum`` is outside [0, 1].
        TypeError: a non-floating leaf.

    References:
        Grill et al. *Bootstrap Your Own Latent*, NeurIPS 2020, eq. (1).
    """
    check_unit_interval(momentum, "momentum")
    if isinstance(teacher, Mapping) != isinstance(student, Mapping):
        raise TypeError(
            f"teacher and student must both be mappings (or both pytrees of one kind), got "
            f"{type(teacher).__name__} and {type(student).__name__}"
        )
    _check_trees(teacher, student)
    return jax.tree.map(lambda t, s: _ema_leaf(t, s, momentum), teacher, student)


# --------------------------------------------------------------------------------------------------
# schedules


class CosineSchedule(_core_schedules.CosineSchedule):
    """A validated cosine schedule evaluated with ``jax.numpy`` (so the step may be traced).

    A subclass of :class:`m2t_core.CosineSchedule` with the same attributes ``start``, ``end`` and
    ``total_steps``; calling it returns a JAX array in the default float dtype (float32, or float64
    when ``jax_enable_x64`` is on) instead of a Python float. Build it with :func:`cosine_schedule`,
    :func:`teacher_momentum_schedule` or :func:`stats_momentum_schedule`.

    Attributes:
        start: Value at step 0.
        end: Value at steps ``>= total_steps``.
        total_steps: ``K``, or ``None`` for a constant schedule (``start == end``).
    """

    def __call__(self, step: int | Array) -> Array:  # type: ignore[override]
        """Value at ``step`` (any integer array, possibly traced), with ``step`` clamped to [0, K]."""
        dtype = jnp.result_type(float)
        k = jnp.asarray(step).astype(dtype)
        if self.is_constant:
            return jnp.full(k.shape, self.start, dtype)
        total = float(self.total_steps)  # type: ignore[arg-type]
        k = jnp.clip(k, 0.0, total)
        return self.end - (self.end - self.start) * (jnp.cos(math.pi * k / total) + 1.0) / 2.0


def _as_jax(schedule: _core_schedules.CosineSchedule) -> CosineSchedule:
    return CosineSchedule(schedule.start, schedule.end, schedule.total_steps)


def cosine_schedule(start: float, end: float, total_steps: int | None) -> CosineSchedule:
    """Cosine curve from ``start`` (step 0) to ``end`` (step ``total_steps`` and after).

    Args:
        start: Value at step 0, in [0, 1].
        end: Final value, in [0, 1].
        total_steps: ``K > 0``; may be ``None`` only when ``start == end``.

    Returns:
        A :class:`CosineSchedule` (callable ``step -> jax.Array``, usable inside ``jax.jit``).

    Raises:
        ValueError: ``total_steps <= 0``, ``start``/``end`` outside [0, 1], or ``total_steps`` missing
            for a non-constant schedule.
        TypeError: ``total_steps`` is not an int.
    """
    return _as_jax(_core_schedules.cosine_schedule(start, end, total_steps))


def teacher_momentum_schedule(
    total_steps: int | None, base_momentum: float = 0.99, final_momentum: float = 1.0
) -> CosineSchedule:
    """Teacher EMA momentum ``m_k``: cosine from ``base_momentum`` (0.99) to ``final_momentum`` (1).

    Args:
        total_steps: ``K``; ``None`` only for a constant schedule.
        base_momentum: ``m_0`` in [0, 1].
        final_momentum: ``m_K`` in [0, 1].

    Returns:
        A :class:`CosineSchedule`.

    Raises:
        ValueError: bad arguments, as for :func:`cosine_schedule`.
    """
    return _as_jax(_core_schedules.teacher_momentum_schedule(total_steps, base_momentum, final_momentum))


def stats_momentum_schedule(
    total_steps: int | None, alpha_start: float = 0.0, alpha_end: float = 1.0
) -> CosineSchedule:
    """Statistics history weight ``α_k``: cosine from ``alpha_start`` (0) to ``alpha_end`` (1).

    Args:
        total_steps: ``K``; ``None`` only for a constant schedule.
        alpha_start: ``α_0`` in [0, 1].
        alpha_end: ``α_K`` in [0, 1].

    Returns:
        A :class:`CosineSchedule`.

    Raises:
        ValueError: bad arguments, as for :func:`cosine_schedule`.
    """
    return _as_jax(_core_schedules.stats_momentum_schedule(total_steps, alpha_start, alpha_end))


# --------------------------------------------------------------------------------------------------
# loss


def _as_float(a: Any, name: str) -> Array:
    a = jnp.asarray(a)
    check_floating(a.dtype, name)
    if a.ndim < 1:
        raise ValueError(f"{name} must have rank >= 1 (a feature axis), got a scalar")
    return a.astype(jnp.float32) if jnp.dtype(a.dtype).itemsize < 4 else a


def normalize(x: Array, axis: int = -1, eps: float = NORM_EPS) -> Array:
    """L2-normalise along ``axis``: ``x / max(‖x‖, eps)`` (zero vectors stay zero).

    Args:
        x: Floating array.
        axis: Axis to normalise over.
        eps: Lower bound on the norm.

    Returns:
        Array of ``x``'s shape and dtype (half precision is computed in float32).

    Raises:
        TypeError: ``x`` is not floating.
        ValueError: ``x`` is a scalar.
    """
    xf = _as_float(x, "x")
    squares = jnp.sum(jnp.square(xf), axis=axis, keepdims=True)
    # The gradient of sqrt at 0 is inf, and inf·0 = NaN: one zero vector (a prediction whose ReLU
    # layer is all off, with a zero bias) would make every weight NaN. Take a zero vector's norm as 0
    # without differentiating sqrt there (torch.linalg.vector_norm's subgradient, so the gradient is
    # x / eps as in m2t_torch and m2t_keras); values are unchanged, NaN rows stay NaN.
    zero = squares == 0
    norm = jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, squares)))
    return (xf / jnp.maximum(norm, jnp.asarray(eps, xf.dtype))).astype(jnp.asarray(x).dtype)


def regression_loss(p: Array, z: Array) -> Array:
    """Per-sample ``2 − 2·cos(p, z)`` over the last axis, in [0, 4].

    Args:
        p: Student predictions ``[..., D]``.
        z: Teacher projections, same shape (stop their gradient yourself if they come from a
            differentiated function).

    Returns:
        Array of shape ``p.shape[:-1]`` in float32 or wider.

    Raises:
        ValueError: shapes differ.
        TypeError: non-floating input.
    """
    pf, zf = _as_float(p, "p"), _as_float(z, "z")
    if pf.shape != zf.shape:
        raise ValueError(f"p and z must have the same shape, got {tuple(pf.shape)} and {tuple(zf.shape)}")
    ct = jnp.result_type(pf.dtype, zf.dtype)
    return 2.0 - 2.0 * jnp.sum(normalize(pf.astype(ct)) * normalize(zf.astype(ct)), axis=-1)


def symmetric_loss(p1: Array, p2: Array, z1: Array, z2: Array) -> Array:
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
    shapes = {name: tuple(jnp.shape(a)) for name, a in (("p1", p1), ("p2", p2), ("z1", z1), ("z2", z2))}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"p1, p2, z1, z2 must have the same shape, got {shapes}")
    return jnp.mean(regression_loss(p1, z2) + regression_loss(p2, z1))
