"""``CoupledSGD``: SGD whose weight decay is added to the gradient, as in PyTorch and optax.

Keras's optimizers apply ``weight_decay`` *decoupled* — ``θ ← θ − lr·wd·θ`` beside the update, as
in AdamW — so ``keras.optimizers.SGD(weight_decay=wd)`` follows a different trajectory from
``torch.optim.SGD(weight_decay=wd)``. :class:`CoupledSGD` computes the PyTorch update on every Keras
backend; the cross-framework equivalence check (:mod:`m2t_keras.equivalence`) trains with it.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = ["CoupledSGD"]


@keras.saving.register_keras_serializable(package="m2t_keras")
class CoupledSGD(keras.optimizers.SGD):
    """SGD (with momentum) whose weight decay is added to the gradient: ``g ← g + wd·θ``.

    The update of ``torch.optim.SGD(lr, momentum, weight_decay=wd)`` and of
    ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum))``, written with
    ``keras.ops`` so it runs on every backend. (Keras's ``weight_decay`` argument is decoupled and
    would give a different trajectory.)

    Args:
        learning_rate: Learning rate (a float or a schedule).
        momentum: Momentum, in [0, 1].
        nesterov: Nesterov momentum.
        coupled_weight_decay: ``wd >= 0``, applied to every trainable variable the optimizer updates.
        **kwargs: Other ``keras.optimizers.SGD`` arguments (not ``weight_decay``).

    Raises:
        ValueError: negative ``coupled_weight_decay``, or a Keras ``weight_decay`` beside it.
    """

    def __init__(
        self,
        learning_rate: Any = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        *,
        coupled_weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        """Build the optimizer (arguments documented on the class)."""
        if kwargs.get("weight_decay"):
            raise ValueError(
                "CoupledSGD takes coupled_weight_decay=; Keras's decoupled weight_decay="
                f"{kwargs['weight_decay']!r} would be applied as well"
            )
        if not coupled_weight_decay >= 0.0:
            raise ValueError(f"coupled_weight_decay must be >= 0, got {coupled_weight_decay!r}")
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, **kwargs)
        self.coupled_weight_decay = float(coupled_weight_decay)

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """Add ``wd·θ`` to the gradient, then take SGD's step.

        Args:
            gradient: The gradient of ``variable``.
            variable: The trainable variable.
            learning_rate: The current learning rate.
        """
        if self.coupled_weight_decay:
            decay = ops.cast(self.coupled_weight_decay, variable.dtype)
            gradient = ops.add(gradient, ops.multiply(decay, variable))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        """SGD's config plus ``coupled_weight_decay``."""
        return {**super().get_config(), "coupled_weight_decay": self.coupled_weight_decay}
