"""``CurrentValue``: a metric that reports the latest value it was given (e.g. a scheduled momentum)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = ["CurrentValue"]


@keras.saving.register_keras_serializable(package="m2t_keras")
class CurrentValue(keras.metrics.Metric):
    """Reports the most recent value passed to ``update_state`` (not a running mean).

    ``fit`` logs it once per epoch (or per ``steps_per_execution`` block) without a host sync per
    batch, unlike a callback that reads a variable. Under ``tf.distribute`` metric variables are
    summed over replicas on read; storing ``value`` and a count of 1 per replica keeps the result
    the value itself.

    Args:
        name: Metric name, as it appears in the logs.
        dtype: Dtype of the stored value (float32 by default).
    """

    def __init__(self, name: str = "current_value", dtype: Any = "float32") -> None:
        """Create the metric and its two variables; arguments as in the class docstring."""
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype=self.dtype, name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype=self.dtype, name="count")

    def update_state(self, value: Any) -> None:
        """Remember ``value`` (a scalar)."""
        self.total.assign(ops.cast(value, self.dtype))
        self.count.assign(ops.ones((), self.dtype))

    def result(self) -> Any:
        """The latest value (0 before the first update)."""
        return ops.divide_no_nan(self.total, self.count)
