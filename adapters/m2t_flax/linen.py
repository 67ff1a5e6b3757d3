"""Momentum BatchNorm for Flax Linen (``flax.linen``), statistics in the ``batch_stats`` collection.

Use it where a Linen teacher would use ``nn.BatchNorm``::

    import flax.linen as nn
    from m2t_flax.linen import MomentumBatchNorm

    class Teacher(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            x = nn.Dense(64)(x)
            x = MomentumBatchNorm(use_running_average=not train, total_steps=1000)(x)
            return nn.relu(x)

    variables = Teacher().init(key, views)                # {"params": ..., "batch_stats": ...}
    z, updates = Teacher().apply(variables, views, mutable=["batch_stats"])

The math is that of :class:`m2t_flax.nnx.MomentumBatchNorm` and :func:`m2t_core.momentum_batch_norm`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from m2t_core._validation import (
    check_channels,
    check_correction,
    check_eps,
    check_floating,
    check_num_views,
    normalize_axis,
)
from m2t_flax import functional as mf

__all__ = ["MomentumBatchNorm"]


class MomentumBatchNorm(nn.Module):
    r"""Momentum BatchNorm for Flax Linen: the teacher normalisation of Momentum² Teacher.

    In training mode (``use_running_average=False``), ``num_views`` views concatenated along axis 0
    are normalised view by view with ``(1−α_k)·moments(view) + α_k·(μ, σ²)``; then the statistics
    commit once (``apply(..., mutable=["batch_stats"])``, as for ``nn.BatchNorm``),
    ``(μ, σ²) ← (1−α_k)·mean_v(moments) + α_k·(μ, σ²)``, and ``step`` advances. ``α_k`` is a cosine
    from ``alpha_start`` to ``alpha_end`` over ``total_steps``, computed in-graph from the ``step``
    variable. Evaluation mode normalises with ``(μ, σ²)``. Nothing is committed during ``init``. A
    commit with non-finite moments is skipped (``skipped`` increments).

    Variables: ``params``: ``scale``, ``bias`` (as ``nn.BatchNorm``); ``batch_stats``: ``mean``,
    ``var`` (float32), ``step``, ``skipped`` (int32). The channel count is taken from the input at
    ``init``, as in ``nn.BatchNorm``.

    Attributes:
        use_running_average: Evaluation mode when True; may also be passed to ``__call__``.
        axis: Channel axis of the input (not 0).
        epsilon: Added to the variance before the square root.
        dtype: dtype of the output (default: the input's).
        param_dtype: dtype of ``scale`` and ``bias``.
        use_bias: Learn ``bias`` (β).
        use_scale: Learn ``scale`` (γ).
        bias_init: Initializer of ``bias``.
        scale_init: Initializer of ``scale``.
        num_views: Views ``V`` per batch in training mode.
        alpha_start: ``α`` at step 0, in [0, 1].
        alpha_end: ``α`` from step ``total_steps`` on, in [0, 1].
        total_steps: Length of the cosine; may be ``None`` when ``alpha_start == alpha_end``.
        correction: Variance estimator, ``"biased"``, ``"unbiased"`` or ``"official"``.

    Raises:
        ValueError: bad ``num_views``, ``alpha_*``/``total_steps``, ``correction`` or ``epsilon`` when
            the module is constructed; at call time, an input whose channel count differs from the
            statistics' or whose batch ``num_views`` does not divide (the message names the layer's
            ``num_features`` and the input shape).

    References:
        Li, Liu, Sun. *Momentum² Teacher.* arXiv:2101.07525, 2021, §3.
    """

    use_running_average: bool | None = None
    axis: int = -1
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros
    scale_init: Callable[..., jax.Array] = nn.initializers.ones
    num_views: int = 2
    alpha_start: float = 0.0
    alpha_end: float = 1.0
    total_steps: int | None = None
    correction: str = "biased"

    def __post_init__(self) -> None:
        # Check the arguments when the module is built, not at its first call.
        check_num_views(self.num_views)
        mf.stats_momentum_schedule(self.total_steps, self.alpha_start, self.alpha_end)
        check_correction(self.correction)
        check_eps(self.epsilon, "epsilon")
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise TypeError(f"axis must be an int, got {self.axis!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Normalise ``x``; in training mode with mutable ``batch_stats``, also commit the statistics.

        Args:
            x: Input; in training mode ``num_views`` views concatenated along axis 0.
            use_running_average: Overrides the attribute of the same name for this call.

        Returns:
            The normalised input, same shape, dtype ``dtype`` (default: the input's).

        Raises:
            ValueError: wrong channel count or ``num_views`` does not divide the batch (training).
            TypeError: a non-floating input.
        """
        evaluate = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        x = jnp.asarray(x)
        try:
            check_floating(x.dtype, "x")
            axis = normalize_axis(self.axis, x.ndim)
        except (ValueError, TypeError) as err:
            raise type(err)(f"MomentumBatchNorm got an input of shape {tuple(x.shape)}: {err}") from err
        shape = (x.shape[axis],)
        stats = mf.init_stats(shape[0], jnp.float32)
        mean = self.variable("batch_stats", "mean", lambda: stats.mean)
        var = self.variable("batch_stats", "var", lambda: stats.var)
        step = self.variable("batch_stats", "step", lambda: jnp.zeros((), jnp.int32))
        skipped = self.variable("batch_stats", "skipped", lambda: jnp.zeros((), jnp.int32))
        num_features = mean.value.shape[0]
        try:
            check_channels(x.shape[axis], num_features, x.shape, axis)
            if not evaluate:
                axis, n = mf._check_x(x, self.num_views, axis, self.correction)
        except (ValueError, TypeError) as err:
            layer = f"MomentumBatchNorm(num_features={num_features})"
            raise type(err)(f"{layer} got an input of shape {tuple(x.shape)}: {err}") from err
        scale = self.param("scale", self.scale_init, shape, self.param_dtype) if self.use_scale else None
        bias = self.param("bias", self.bias_init, shape, self.param_dtype) if self.use_bias else None
        current = mf.MomentumStats(mean.value, var.value, step.value, skipped.value)
        out_dtype = x.dtype if self.dtype is None else self.dtype
        eps = float(self.epsilon)
        if evaluate:
            return mf._eval_bn(x, current, axis, eps, scale, bias, out_dtype)
        alpha = mf.stats_momentum_schedule(self.total_steps, self.alpha_start, self.alpha_end)(step.value)
        y, new = mf._train_bn(
            x, current, alpha, self.num_views, axis, n, eps, scale, bias, self.correction, out_dtype
        )
        # Like nn.BatchNorm: training mode needs mutable=["batch_stats"] in apply (Linen raises
        # otherwise), and init leaves the fresh statistics alone.
        if not self.is_initializing():
            mean.value = jax.lax.stop_gradient(new.mean)
            var.value = jax.lax.stop_gradient(new.var)
            step.value = new.step
            skipped.value = new.skipped
        return y
