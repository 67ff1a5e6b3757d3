r"""``MomentumBatchNormalization``: the teacher normalisation of Momentum² Teacher as a Keras 3 layer.

Written with ``keras.ops`` only, so one class serves the TensorFlow, JAX and PyTorch backends, eager
and compiled (``jit_compile=True``). The math is :func:`m2t_keras.ops.momentum_batch_norm`; the layer
adds the state (statistics and counters as non-trainable variables) and the ``α_k`` schedule.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from m2t_core._validation import (
    check_correction,
    check_eps,
    check_num_views,
    correction_factor,
    normalize_axis,
)
from m2t_core.stats import MomentumStats
from m2t_keras import ops as m2t_ops
from m2t_keras._tensors import check_floating, int_dtype, static_shape, values_per_view

__all__ = ["MomentumBatchNormalization"]


@keras.saving.register_keras_serializable(package="m2t_keras")
class MomentumBatchNormalization(keras.layers.Layer):
    r"""Batch normalisation with momentum statistics and per-view moments (Momentum² Teacher).

    Training mode (``training=True``), with ``V = num_views`` views concatenated along axis 0 and
    the stored statistics ``(μ, σ²)``::

        μ̂_v = (1−α_k)·μ_v + α_k·μ      σ̂²_v = (1−α_k)·σ²_v + α_k·σ²      (every view, same history)
        y_v = γ·(x_v − μ̂_v)/sqrt(σ̂²_v + ε) + β
        commit:  μ ← (1−α_k)·mean_v(μ_v) + α_k·μ,   σ² likewise,   k ← k + 1

    Evaluation mode normalises with ``(μ, σ²)`` and changes nothing. ``α_k`` is a cosine from
    ``alpha_start`` to ``alpha_end`` over ``total_steps`` commits, computed inside the graph from
    the layer's ``step`` variable, so compiled train steps need no retracing.

    Keras conventions this layer follows or departs from, deliberately:

    * ``alpha`` is Keras BatchNormalization's ``momentum`` (weight on the stored statistics), but
      scheduled rather than fixed.
    * The statistics **keep moving in training mode even when** ``trainable=False`` (Keras's own
      BatchNormalization then switches to inference). A teacher is frozen for the optimizer, yet
      its statistics must move; pass ``training=False`` for inference.
    * ``epsilon`` defaults to 1e-3 like Keras's BatchNormalization (PyTorch uses 1e-5);
      :func:`~m2t_keras.convert_momentum_bn` copies the source layer's epsilon.
    * The statistics and counters are float32 / integer variables with ``autocast=False``, so
      under a ``mixed_bfloat16`` or ``mixed_float16`` policy they are computed and stored in
      float32 while the output has the compute dtype.
    * Under ``tf.distribute`` each replica computes its own moments; the statistics variables use
      ``aggregation="mean"``, so every replica commits the mean over replicas and they stay
      identical. The ``skipped`` counter follows the first replica. On the JAX backend with
      ``keras.distribution.DataParallel`` the moments are computed over the global batch.

    Variables: ``gamma``/``beta`` (trainable, when ``scale``/``center``), ``moving_mean``,
    ``moving_variance`` (float32), ``step`` and ``skipped`` (integers) — non-trainable.

    Args:
        axis: Channel axis (not 0, the axis views are concatenated along); ``-1`` for
            channels-last, ``1`` for channels-first.
        epsilon: Added to the variance before the square root.
        center: Learn an offset ``β``.
        scale: Learn a scale ``γ``.
        num_views: ``V``, the number of views concatenated along axis 0 (must divide the batch).
        alpha_start: ``α`` at step 0, in [0, 1].
        alpha_end: ``α`` at step ``total_steps`` and after, in [0, 1].
        total_steps: ``K``, the number of commits over which ``α`` rises; may be ``None`` only for a
            constant ``α`` (``alpha_start == alpha_end``).
        correction: Variance estimator used to normalise and to store: ``"biased"`` (÷n),
            ``"unbiased"`` (÷(n−1)) or ``"official"`` (biased × (n/(n−1))², the original release).
        beta_initializer: Initializer of ``β``.
        gamma_initializer: Initializer of ``γ``.
        beta_regularizer: Optional regularizer of ``β``.
        gamma_regularizer: Optional regularizer of ``γ``.
        beta_constraint: Optional constraint of ``β``.
        gamma_constraint: Optional constraint of ``γ``.
        **kwargs: Base layer arguments (``name``, ``dtype``, ``trainable``).

    Raises:
        ValueError: bad ``axis``, ``num_views``, ``correction``, ``epsilon`` or schedule arguments
            (when the layer is built), or inputs that do not fit (when it is called; the message
            names the layer, its ``num_features`` and the input shape).
        TypeError: non-int ``axis``/``num_views``/``total_steps``, or non-floating inputs.

    References:
        Li, Liu, Sun. *Momentum² Teacher.* arXiv:2101.07525, 2021, §3.
        Ioffe, Szegedy. *Batch Normalization.* ICML 2015.
    """

    def __init__(
        self,
        axis: int = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        *,
        num_views: int = 2,
        alpha_start: float = 0.0,
        alpha_end: float = 1.0,
        total_steps: int | None = None,
        correction: str = "biased",
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        """Create the layer (variables come in ``build``); arguments as in the class docstring."""
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"axis must be an int, got {axis!r}")
        self.axis = axis
        self.epsilon = check_eps(epsilon, "epsilon")
        self.center = bool(center)
        self.scale = bool(scale)
        self.num_views = check_num_views(num_views)
        self.correction = check_correction(correction)
        # Validated now (ValueError at construction, not at the first step), evaluated in-graph.
        self.alpha_schedule = m2t_ops.stats_momentum_schedule(total_steps, alpha_start, alpha_end)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = keras.constraints.get(beta_constraint)
        self.gamma_constraint = keras.constraints.get(gamma_constraint)
        self.supports_masking = False
        self.num_features: int | None = None
        self.gamma = None
        self.beta = None

    @property
    def alpha_start(self) -> float:
        """``α`` at step 0."""
        return self.alpha_schedule.start

    @property
    def alpha_end(self) -> float:
        """``α`` at step ``total_steps`` and after."""
        return self.alpha_schedule.end

    @property
    def total_steps(self) -> int | None:
        """``K`` of the ``α`` schedule (``None`` for a constant ``α``)."""
        return self.alpha_schedule.total_steps

    def _fail(self, message: str, shape: tuple[Any, ...]) -> ValueError:
        return ValueError(
            f"{type(self).__name__} {self.name!r} (axis={self.axis}, num_features={self.num_features}, "
            f"num_views={self.num_views}) cannot take an input of shape {tuple(shape)}: {message}"
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Create the variables for inputs of ``input_shape`` (channels read from ``axis``)."""
        shape = tuple(input_shape)
        try:
            ax = normalize_axis(self.axis, len(shape), what="the input")
        except ValueError as err:
            raise self._fail(str(err), shape) from None
        if shape[ax] is None:
            raise self._fail(f"the channel axis {self.axis} must have a known size", shape)
        self.num_features = int(shape[ax])
        channels = (self.num_features,)
        if self.scale:
            self.gamma = self.add_weight(
                shape=channels,
                name="gamma",
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                trainable=True,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=channels,
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                trainable=True,
                autocast=False,
            )
        # float32 whatever the dtype policy, and never autocast: half-precision statistics would
        # lose the slow history the method depends on. "mean" keeps tf.distribute replicas equal.
        stat = {"trainable": False, "autocast": False, "dtype": "float32", "aggregation": "mean"}
        self.moving_mean = self.add_weight(shape=channels, name="moving_mean", initializer="zeros", **stat)
        self.moving_variance = self.add_weight(
            shape=channels, name="moving_variance", initializer="ones", **stat
        )
        # Counters are the same on every replica; "only_first_replica" is how Keras's optimizer
        # keeps its iteration counter (integers cannot be averaged).
        count = {
            "shape": (),
            "initializer": "zeros",
            "trainable": False,
            "autocast": False,
            "dtype": int_dtype(),
            "aggregation": "only_first_replica",
        }
        self.step = self.add_weight(name="step", **count)
        self.skipped = self.add_weight(name="skipped", **count)

    @property
    def stats(self) -> MomentumStats:
        """The stored statistics as a :class:`~m2t_core.MomentumStats` of the variables' current values.

        Raises:
            ValueError: the layer is not built yet (it has no statistics before it sees a shape).
        """
        if not self.built:
            raise ValueError(f"{type(self).__name__} {self.name!r} is not built yet: call or build it first")
        return MomentumStats(
            ops.convert_to_tensor(self.moving_mean),
            ops.convert_to_tensor(self.moving_variance),
            ops.convert_to_tensor(self.step),
            ops.convert_to_tensor(self.skipped),
        )

    @property
    def alpha(self) -> Any:
        """``α_k`` at the current step, the history weight the next training call will use."""
        return self.alpha_schedule(self.step if self.built else 0)

    def _check_input(self, x: Any, training: bool) -> int:
        shape = static_shape(x)
        check_floating(x, f"the input of {type(self).__name__} {self.name!r}")
        try:
            ax = normalize_axis(self.axis, len(shape), what="the input")
        except ValueError as err:
            raise self._fail(str(err), shape) from None
        if shape[ax] != self.num_features:
            raise self._fail(f"it has {shape[ax]} channels on axis {self.axis}", shape)
        if training and shape[0] is not None:
            try:
                check_num_views(self.num_views, shape[0])
            except ValueError as err:
                raise self._fail(str(err), shape) from None
            n = values_per_view(shape, ax, self.num_views)
            if n is not None:
                try:
                    correction_factor(n, self.correction)
                except ValueError as err:
                    raise self._fail(str(err), shape) from None
        return ax

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        """Normalise ``inputs``; in training mode also commit the statistics and advance ``step``.

        Args:
            inputs: Floating tensor, ``num_views`` views concatenated along axis 0 in training mode
                (any batch in evaluation mode).
            training: Python bool; ``True`` uses and commits momentum statistics (whatever
                ``trainable`` is), ``False``/``None`` normalises with the stored statistics.
            mask: Must be ``None``. (Accepted because Functional graphs cloned from
                BatchNormalization pass ``mask=None`` explicitly.)

        Returns:
            Tensor of the input's shape, in the layer's compute dtype.

        Raises:
            ValueError: a mask is given: masked per-view moments are not defined here.
        """
        if mask is not None:
            raise ValueError(
                f"{type(self).__name__} {self.name!r} does not support masks (per-view moments over "
                "masked positions are not defined); remove the mask before this layer"
            )
        x = ops.convert_to_tensor(inputs)
        ax = self._check_input(x, bool(training))
        if not training:
            return m2t_ops.eval_forward(
                x,
                self.moving_mean,
                self.moving_variance,
                axis=ax,
                eps=self.epsilon,
                scale=self.gamma,
                offset=self.beta,
            )
        y, new_mean, new_var, finite = m2t_ops.train_forward(
            x,
            self.moving_mean,
            self.moving_variance,
            self.alpha_schedule(self.step),
            num_views=self.num_views,
            axis=ax,
            eps=self.epsilon,
            scale=self.gamma,
            offset=self.beta,
            correction=self.correction,
        )
        # assign() converts to the variables' float32.
        self.moving_mean.assign(new_mean)
        self.moving_variance.assign(new_var)
        skipped = ops.convert_to_tensor(self.skipped)
        self.skipped.assign(ops.where(finite, skipped, skipped + 1))
        self.step.assign(self.step + 1)
        return y

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Same as the input shape."""
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, for ``from_config`` and ``.keras`` files."""
        config = super().get_config()
        config.update(
            {
                "axis": self.axis,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "num_views": self.num_views,
                "alpha_start": self.alpha_start,
                "alpha_end": self.alpha_end,
                "total_steps": self.total_steps,
                "correction": self.correction,
                "beta_initializer": keras.initializers.serialize(self.beta_initializer),
                "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
                "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": keras.regularizers.serialize(self.gamma_regularizer),
                "beta_constraint": keras.constraints.serialize(self.beta_constraint),
                "gamma_constraint": keras.constraints.serialize(self.gamma_constraint),
            }
        )
        return config
