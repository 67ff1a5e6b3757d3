"""``ReferenceNet`` for Flax NNX: the project's reference backbone, identical in every framework.

A small ResNet-style CNN (stem, two residual stages, global average pooling) with the module paths
``stem.conv``, ``stem.bn``, ``stage1.conv1`` … ``stage2.shortcut.bn`` of every adapter's
``ReferenceNet``, so its checkpoints move between frameworks (:mod:`m2t_flax.interchange`). The
architecture is stated in :mod:`m2t_core.reference_net`. Re-exported by :mod:`m2t_flax.nnx`; the
Linen version is :class:`m2t_flax.linen_teacher.ReferenceNet`.

Example::

    from flax import nnx
    from m2t_flax.nnx import M2Teacher, ReferenceNet

    rngs = nnx.Rngs(0)
    model = M2Teacher(ReferenceNet(3, 16, rngs=rngs), hidden_dim=512, projection_dim=128,
                      total_steps=10_000, rngs=rngs)
"""

from __future__ import annotations

import jax
from flax import nnx

from m2t_core.reference_net import BN_EPSILON, backbone_description

__all__ = ["BasicBlock", "ConvBN", "ReferenceNet"]

# The running statistics of the student's BatchNorms follow torch's default (weight 0.9 on the
# history); they are not used in training, only in evaluation mode.
_BN_MOMENTUM = 0.9


def _batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # Two-pass variance, as every normalisation of the project (DESIGN §5).
    return nnx.BatchNorm(
        features, momentum=_BN_MOMENTUM, epsilon=BN_EPSILON, use_fast_variance=False, rngs=rngs
    )


class ConvBN(nnx.Module):
    """``conv`` (no bias, symmetric zero padding ``kernel_size // 2``) followed by ``bn``.

    Args:
        in_features: Input channels.
        out_features: Output channels.
        kernel_size: Square kernel size.
        stride: Stride.
        rngs: Random streams for the initializers.
    """

    def __init__(
        self, in_features: int, out_features: int, kernel_size: int, stride: int = 1, *, rngs: nnx.Rngs
    ) -> None:
        """Build the pair; the arguments are documented on the class."""
        pad = kernel_size // 2
        self.conv = nnx.Conv(
            in_features,
            out_features,
            (kernel_size, kernel_size),
            strides=stride,
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            rngs=rngs,
        )
        self.bn = _batch_norm(out_features, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``bn(conv(x))`` of NHWC images."""
        return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
    """Residual basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The shortcut is the identity, or a :class:`ConvBN` 1×1 with the block's stride (attribute
    ``shortcut``) when the width or the resolution changes.

    Args:
        in_features: Input channels.
        out_features: Output channels.
        stride: Stride of ``conv1`` and of the shortcut.
        rngs: Random streams for the initializers.
    """

    def __init__(self, in_features: int, out_features: int, stride: int = 1, *, rngs: nnx.Rngs) -> None:
        """Build the block; the arguments are documented on the class."""
        self.conv1 = nnx.Conv(
            in_features,
            out_features,
            (3, 3),
            strides=stride,
            padding=((1, 1), (1, 1)),
            use_bias=False,
            rngs=rngs,
        )
        self.bn1 = _batch_norm(out_features, rngs)
        self.conv2 = nnx.Conv(
            out_features, out_features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs
        )
        self.bn2 = _batch_norm(out_features, rngs)
        needs_projection = stride != 1 or in_features != out_features
        self.shortcut = ConvBN(in_features, out_features, 1, stride, rngs=rngs) if needs_projection else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the block to NHWC images."""
        h = nnx.relu(self.bn1(self.conv1(x)))
        skip = x if self.shortcut is None else self.shortcut(x)
        return nnx.relu(self.bn2(self.conv2(h)) + skip)


class ReferenceNet(nnx.Module):
    """The reference backbone: stem → stage1 (width ``w``) → stage2 (``2w``, stride 2) → global pool.

    Takes NHWC images ``[N, H, W, in_features]`` and returns features ``[N, 2w]``; the same network
    as ``m2t_torch.ReferenceNet`` (which takes NCHW), ``m2t_keras.ReferenceNet`` and
    ``m2t_flax.linen_teacher.ReferenceNet``.

    Args:
        in_features: Channels of the input images.
        width: ``w``, the width of stem and stage 1.
        rngs: Random streams for the initializers.

    Attributes:
        feature_dim: ``2w`` (``M2Teacher`` reads it).

    Raises:
        ValueError: a size that is not a positive int.
    """

    def __init__(self, in_features: int = 3, width: int = 16, *, rngs: nnx.Rngs) -> None:
        """Build the network; the arguments are documented on the class."""
        for name, value in (("in_features", in_features), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_features = in_features
        self.width = width
        self.feature_dim = 2 * width
        self.stem = ConvBN(in_features, width, 3, rngs=rngs)
        self.stage1 = BasicBlock(width, width, rngs=rngs)
        self.stage2 = BasicBlock(width, 2 * width, 2, rngs=rngs)

    def describe(self) -> dict[str, object]:
        """The description in a checkpoint config: ``architecture``, ``in_channels``, ``width``."""
        return backbone_description(self.in_features, self.width)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Features ``[N, 2w]`` of NHWC images."""
        h = self.stage2(self.stage1(nnx.relu(self.stem(x))))
        return h.mean(axis=(1, 2))
