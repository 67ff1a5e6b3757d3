"""Flax NNX momentum BatchNorm and the converter that puts it in place of ``nnx.BatchNorm``.

The public names are re-exported by :mod:`m2t_flax.nnx`; import them from there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, MutableSequence, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from m2t_core._validation import (
    check_channels,
    check_correction,
    check_eps,
    check_floating,
    check_num_views,
    normalize_axis,
)
from m2t_flax import functional as mf

__all__ = ["MomentumBatchNorm", "convert_momentum_bn"]

_ZEROS = nnx.initializers.zeros_init()
_ONES = nnx.initializers.ones_init()


class MomentumBatchNorm(nnx.Module):
    r"""Momentum BatchNorm for Flax NNX: the teacher normalisation of Momentum² Teacher.

    In training mode, a batch of ``num_views`` views concatenated along axis 0 is normalised view by
    view with ``(1−α_k)·moments(view) + α_k·(μ, σ²)``; then the statistics commit once,
    ``(μ, σ²) ← (1−α_k)·mean_v(moments) + α_k·(μ, σ²)``, and ``step`` advances. ``α_k`` is a cosine
    from ``alpha_start`` to ``alpha_end`` over ``total_steps``, evaluated in-graph from the ``step``
    variable, so the layer needs no argument per call and works under ``nnx.jit``. Evaluation mode
    (``use_running_average=True``, set by ``model.eval()``) normalises with ``(μ, σ²)`` and changes
    nothing. A commit with non-finite moments is skipped (``skipped`` increments; a ``jnp.where``,
    no host sync).

    Variables: ``scale``/``bias`` are ``nnx.Param`` named as in ``nnx.BatchNorm`` (so a teacher
    built by :func:`convert_momentum_bn` has the student's parameter tree); ``mean``, ``var``
    (float32) and ``step``, ``skipped`` (int32) are ``nnx.BatchStat``.

    ``alpha`` is the weight on the **history** (Flax's BatchNorm ``momentum``; torch calls ``1 − α``
    its momentum). Moments are two-pass and computed in float32 or wider.

    Args:
        num_features: Number of channels ``C``.
        num_views: Views ``V`` per teacher batch; must divide the batch size in training mode.
        alpha_start: ``α`` at step 0, in [0, 1].
        alpha_end: ``α`` from step ``total_steps`` on, in [0, 1].
        total_steps: Length of the cosine; may be ``None`` when ``alpha_start == alpha_end``.
        correction: Variance estimator, ``"biased"`` (÷n), ``"unbiased"`` (÷(n−1)) or ``"official"``
            (what the original release computes).
        epsilon: Added to the variance before the square root.
        use_bias: Learn ``bias`` (β).
        use_scale: Learn ``scale`` (γ).
        axis: Channel axis of the input (not 0).
        use_running_average: Evaluation mode when True (``model.eval()`` / ``model.train()`` toggle it).
        dtype: dtype of the output (default: the input's).
        param_dtype: dtype of ``scale`` and ``bias``.
        bias_init: Initializer of ``bias``.
        scale_init: Initializer of ``scale``.
        rngs: Random streams (``nnx.Rngs``), passed to the initializers.

    Raises:
        ValueError: bad ``num_features``, ``num_views``, ``alpha_*``/``total_steps``, ``correction`` or
            ``epsilon``, when the layer is built; at call time, an input whose channel count differs
            from ``num_features`` or whose batch ``num_views`` does not divide (the message names the
            layer and the input shape).

    References:
        Li, Liu, Sun. *Momentum² Teacher.* arXiv:2101.07525, 2021, §3.
    """

    def __init__(
        self,
        num_features: int,
        *,
        num_views: int = 2,
        alpha_start: float = 0.0,
        alpha_end: float = 1.0,
        total_steps: int | None = None,
        correction: str = "biased",
        epsilon: float = 1e-5,
        use_bias: bool = True,
        use_scale: bool = True,
        axis: int = -1,
        use_running_average: bool = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        bias_init: Callable[..., jax.Array] = _ZEROS,
        scale_init: Callable[..., jax.Array] = _ONES,
        rngs: nnx.Rngs,
    ) -> None:
        """Build the layer; the arguments are documented on the class."""
        stats = mf.init_stats(num_features, jnp.float32)  # validates num_features
        self.num_features = int(num_features)
        self.num_views = check_num_views(num_views)
        self.alpha_schedule = mf.stats_momentum_schedule(total_steps, alpha_start, alpha_end)
        self.alpha_start = float(alpha_start)
        self.alpha_end = float(alpha_end)
        self.total_steps = total_steps
        self.correction = check_correction(correction)
        self.epsilon = check_eps(epsilon, "epsilon")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"axis must be an int, got {axis!r}")
        self.axis = axis
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.use_running_average = use_running_average
        self.dtype = dtype
        self.param_dtype = param_dtype
        shape = (self.num_features,)
        self.scale: nnx.Param | None = (
            nnx.Param(scale_init(rngs.params(), shape, param_dtype)) if use_scale else nnx.data(None)
        )
        self.bias: nnx.Param | None = (
            nnx.Param(bias_init(rngs.params(), shape, param_dtype)) if use_bias else nnx.data(None)
        )
        self.mean = nnx.BatchStat(stats.mean)
        self.var = nnx.BatchStat(stats.var)
        self.step = nnx.BatchStat(jnp.zeros((), jnp.int32))
        self.skipped = nnx.BatchStat(jnp.zeros((), jnp.int32))

    @property
    def stats(self) -> mf.MomentumStats:
        """The current statistics as a :class:`~m2t_core.MomentumStats` of arrays."""
        return mf.MomentumStats(self.mean[...], self.var[...], self.step[...], self.skipped[...])

    def _describe(self, x: jax.Array) -> str:
        return f"MomentumBatchNorm(num_features={self.num_features}) got an input of shape {tuple(x.shape)}"

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Normalise ``x``; in training mode also commit the statistics and advance ``step``.

        Args:
            x: Input with ``num_features`` channels on ``axis``; in training mode ``num_views`` views
                concatenated along axis 0.
            use_running_average: Overrides the attribute of the same name for this call.

        Returns:
            The normalised input, same shape, dtype ``dtype`` (default: the input's).

        Raises:
            ValueError: wrong channel count, or ``num_views`` does not divide the batch (in training).
            TypeError: a non-floating input.
        """
        evaluate = self.use_running_average if use_running_average is None else use_running_average
        x = jnp.asarray(x)
        try:
            check_floating(x.dtype, "x")
            axis = normalize_axis(self.axis, x.ndim)
            check_channels(x.shape[axis], self.num_features, x.shape, axis)
            if not evaluate:
                axis, n = mf._check_x(x, self.num_views, axis, self.correction)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{self._describe(x)}: {err}") from err
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        out_dtype = x.dtype if self.dtype is None else self.dtype
        if evaluate:
            return mf._eval_bn(x, self.stats, axis, self.epsilon, scale, bias, out_dtype)
        alpha = self.alpha_schedule(self.step[...])
        y, new = mf._train_bn(
            x,
            self.stats,
            alpha,
            self.num_views,
            axis,
            n,
            self.epsilon,
            scale,
            bias,
            self.correction,
            out_dtype,
        )
        # The statistics are state, not a function of the parameters: keep them out of any gradient.
        self.mean[...] = jax.lax.stop_gradient(new.mean)
        self.var[...] = jax.lax.stop_gradient(new.var)
        self.step[...] = new.step
        self.skipped[...] = new.skipped
        return y

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Set the mode for ``nnx.view`` (as ``nnx.BatchNorm`` does).

        Args:
            use_running_average: Evaluation mode when True; ``None`` leaves it unchanged.
        """
        if use_running_average is not None:
            self.use_running_average = use_running_average


def _child(node: Any, key: Any) -> Any:
    if isinstance(node, (Sequence, Mapping)) and not isinstance(node, str):
        return node[key]
    return getattr(node, key)


def _replace_at(root: Any, path: tuple, value: Any) -> None:
    """Put ``value`` at ``path`` under ``root``: an attribute, a list/dict item, or a rebuilt tuple."""
    parent = root
    for key in path[:-1]:
        parent = _child(parent, key)
    key = path[-1]
    if isinstance(parent, tuple):
        # A tuple cannot be assigned into: rebuild it, then put it where the old one was.
        items = list(parent)
        items[key] = value
        rebuilt = type(parent)(*items) if hasattr(parent, "_fields") else type(parent)(items)
        grandparent = root
        for k in path[:-2]:
            grandparent = _child(grandparent, k)
        if isinstance(grandparent, nnx.Module):
            # A module attribute holding modules inside a tuple must be marked as data again.
            setattr(grandparent, path[-2], nnx.data(rebuilt))
        else:
            _replace_at(root, path[:-1], rebuilt)
    elif isinstance(parent, (MutableSequence, MutableMapping)):
        parent[key] = value
    else:
        setattr(parent, key, value)


def _from_batch_norm(bn: nnx.BatchNorm, kwargs: dict[str, Any]) -> MomentumBatchNorm:
    axis = bn.axis
    if not isinstance(axis, int):
        raise ValueError(f"cannot convert a BatchNorm with several feature axes (axis={axis!r})")
    new = MomentumBatchNorm(
        bn.num_features,
        epsilon=bn.epsilon,
        use_bias=bn.use_bias,
        use_scale=bn.use_scale,
        axis=axis,
        use_running_average=bool(bn.use_running_average),
        dtype=bn.dtype,
        param_dtype=bn.param_dtype,
        rngs=nnx.Rngs(0),  # the parameters are overwritten with the BatchNorm's right below
        **kwargs,
    )
    if bn.scale is not None:
        new.scale[...] = bn.scale[...]
    if bn.bias is not None:
        new.bias[...] = bn.bias[...]
    return new


def convert_momentum_bn(
    model: Any,
    *,
    num_views: int = 2,
    alpha_start: float = 0.0,
    alpha_end: float = 1.0,
    total_steps: int | None = None,
    correction: str = "biased",
) -> Any:
    """Replace every ``nnx.BatchNorm`` in ``model`` with a :class:`MomentumBatchNorm`, in place.

    Each new layer copies the BatchNorm's ``scale``/``bias`` values (so the converted model computes
    the same function of the same parameters, with a parameter tree of the same names and shapes),
    ``epsilon``, ``axis``, ``dtype``, ``param_dtype`` and mode; its statistics start fresh (mean 0,
    variance 1, step 0) — the BatchNorm's running averages are not copied, because with the usual
    ``alpha_start = 0`` the first commit ignores the history anyway. A BatchNorm reachable by several
    paths is replaced by one shared layer.

    Args:
        model: An NNX module (or any NNX graph: list, dict of modules ...). It is modified in place;
            clone it first (``nnx.clone``) to keep the original.
        num_views: ``V`` of the new layers.
        alpha_start: See :class:`MomentumBatchNorm`.
        alpha_end: See :class:`MomentumBatchNorm`.
        total_steps: See :class:`MomentumBatchNorm`.
        correction: See :class:`MomentumBatchNorm`.

    Returns:
        ``model`` itself, or a new :class:`MomentumBatchNorm` if ``model`` is an ``nnx.BatchNorm``.

    Raises:
        ValueError: bad layer arguments (checked once, before anything is replaced), or a BatchNorm
            over several feature axes.
    """
    kwargs = {
        "num_views": num_views,
        "alpha_start": alpha_start,
        "alpha_end": alpha_end,
        "total_steps": total_steps,
        "correction": correction,
    }
    MomentumBatchNorm(1, rngs=nnx.Rngs(0), **kwargs)  # fail before the model is half converted
    if isinstance(model, nnx.BatchNorm):
        return _from_batch_norm(model, kwargs)
    # iter_graph reports a node shared by several parents under one path only, so repeat until no
    # BatchNorm is left; the memo makes every reference to one BatchNorm point to one new layer.
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm) and not isinstance(node.axis, int):
            raise ValueError(
                f"cannot convert the BatchNorm at {'.'.join(map(str, path))}: it normalises over several "
                f"feature axes (axis={node.axis!r}); MomentumBatchNorm has one channel axis"
            )
    memo: dict[int, tuple[nnx.BatchNorm, MomentumBatchNorm]] = {}
    while found := [(p, n) for p, n in nnx.iter_graph(model) if isinstance(n, nnx.BatchNorm)]:
        for path, node in found:
            if id(node) not in memo:
                memo[id(node)] = (node, _from_batch_norm(node, kwargs))
            _replace_at(model, path, memo[id(node)][1])
    return model
