"""The symmetrised BYOL regression loss as a ``keras.losses.Loss``."""

from __future__ import annotations

from typing import Any

import keras

from m2t_keras import ops as m2t_ops

__all__ = ["SymmetricRegressionLoss"]


@keras.saving.register_keras_serializable(package="m2t_keras")
class SymmetricRegressionLoss(keras.losses.Loss):
    """``regression_loss(p1, z2) + regression_loss(p2, z1)`` per sample, averaged over the batch.

    Call it as ``loss((z1, z2), (p1, p2))``: the targets are the teacher projections of views 1 and
    2, the predictions the student's predictions for views 1 and 2. With the default reduction the
    result equals :func:`m2t_keras.ops.symmetric_loss`; being a ``keras.losses.Loss``, it is also
    divided by the number of replicas under ``tf.distribute`` (whose gradients are summed), like
    every built-in Keras loss.

    Args:
        name: Loss name.
        reduction: Keras reduction (default ``"sum_over_batch_size"``, the mean over samples).
        dtype: Computation dtype (default ``keras.backend.floatx()``; inputs are cast to it, so
            under a mixed-precision policy the loss is computed in float32).

    References:
        Grill et al. *Bootstrap Your Own Latent.* NeurIPS 2020, eq. (2).
    """

    def __init__(
        self, name: str = "symmetric_regression", reduction: str = "sum_over_batch_size", dtype: Any = None
    ) -> None:
        """Create the loss; arguments as in the class docstring."""
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Per-sample loss ``[B]`` from ``y_true = (z1, z2)`` and ``y_pred = (p1, p2)``."""
        z1, z2 = y_true
        p1, p2 = y_pred
        return m2t_ops.regression_loss(p1, z2) + m2t_ops.regression_loss(p2, z1)
