"""``ReferenceNet``: the project's reference backbone as a Keras Functional model, on every backend.

A small ResNet-style CNN (stem, two residual stages, global average pooling) whose weighted layers
are named by their module paths — ``stem-conv``, ``stem-bn``, ``stage1-conv1`` …
``stage2-shortcut-bn``, ``-`` standing for the ``.`` of ``stem.conv`` in ``m2t_torch``,
``m2t_flax.nnx`` and ``m2t_flax.linen_teacher`` (Keras on the PyTorch backend rejects dots in layer
names) — so its checkpoints move between frameworks (:mod:`m2t_keras.interchange`). The
architecture is stated in :mod:`m2t_core.reference_net`.

Padding is explicit and symmetric (``ZeroPadding2D(1)`` then a ``"valid"`` convolution): Keras's
``padding="same"`` pads a stride-2 convolution of an even-sized input on the bottom/right only, which
samples different pixels than PyTorch and Flax with padding 1.

Example::

    from m2t_keras import M2Teacher, ReferenceNet

    model = M2Teacher(ReferenceNet((32, 32, 3), width=16), hidden_dim=512, projection_dim=128,
                      total_steps=10_000)
"""

from __future__ import annotations

from typing import Any

import keras

from m2t_core.reference_net import BN_EPSILON

__all__ = ["ReferenceNet"]

# Keras's momentum is the weight on the history: 0.9 is torch's default BatchNorm momentum 0.1. The
# running statistics serve evaluation only.
_BN_MOMENTUM = 0.9


def _conv_bn(
    x: Any, filters: int, size: int, stride: int, path: str, conv: str = "conv", bn: str = "bn"
) -> Any:
    """``{path}.{conv}`` (no bias, symmetric padding ``size // 2``) then ``{path}.{bn}``."""
    pad = size // 2
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{path}-{conv}-pad")(x)
    x = keras.layers.Conv2D(
        filters, size, strides=stride, padding="valid", use_bias=False, name=f"{path}-{conv}"
    )(x)
    return keras.layers.BatchNormalization(momentum=_BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{path}-{bn}")(x)


def _basic_block(x: Any, filters: int, stride: int, path: str) -> Any:
    h = _conv_bn(x, filters, 3, stride, path, "conv1", "bn1")
    h = keras.layers.ReLU(name=f"{path}-relu1")(h)
    h = _conv_bn(h, filters, 3, 1, path, "conv2", "bn2")
    if stride != 1 or x.shape[-1] != filters:
        x = _conv_bn(x, filters, 1, stride, f"{path}-shortcut")
    h = keras.layers.Add(name=f"{path}-add")([h, x])
    return keras.layers.ReLU(name=f"{path}-relu2")(h)


def ReferenceNet(  # noqa: N802  (a model factory, named like keras.applications.ResNet50)
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    width: int = 16,
    *,
    name: str = "reference_net",
) -> keras.Model:
    """The reference backbone: stem → stage1 (width ``w``) → stage2 (``2w``, stride 2) → global pool.

    Takes NHWC images (channels last) and returns features ``[N, 2w]``; the same network as
    ``m2t_torch.ReferenceNet``, ``m2t_flax.nnx.ReferenceNet`` and ``m2t_flax.linen_teacher.ReferenceNet``.

    Args:
        input_shape: ``(H, W, C)``; ``H`` and ``W`` may be ``None``.
        width: ``w``, the width of stem and stage 1.
        name: Name of the model.

    Returns:
        A Functional ``keras.Model`` (what :class:`~m2t_keras.M2Teacher` takes as backbone).

    Raises:
        ValueError: a width or channel count that is not a positive int.
    """
    channels = input_shape[-1] if len(input_shape) == 3 else None
    for what, value in (("width", width), ("input channels", channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive int, got {value!r} (input_shape={input_shape!r})")
    inputs = keras.Input(tuple(input_shape), name="images")
    h = keras.layers.ReLU(name="stem-relu")(_conv_bn(inputs, width, 3, 1, "stem"))
    h = _basic_block(h, width, 1, "stage1")
    h = _basic_block(h, 2 * width, 2, "stage2")
    features = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inputs, features, name=name)
