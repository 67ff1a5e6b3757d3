"""``ReferenceNet``: the project's reference backbone, identical in every framework.

A small ResNet-style CNN (stem, two residual stages, global average pooling) whose module paths —
``stem.conv``, ``stem.bn``, ``stage1.conv1`` … ``stage2.shortcut.bn`` — are the same in
``m2t_torch``, ``m2t_keras`` and ``m2t_flax`` (NNX and Linen), so its checkpoints move between them
(:mod:`m2t_torch.interchange`). The architecture is stated in :mod:`m2t_core.reference_net`, which
also runs it in NumPy.

Example::

    from m2t_torch import M2Teacher, ReferenceNet

    model = M2Teacher(ReferenceNet(in_channels=3, width=16), hidden_dim=512, projection_dim=128,
                      total_steps=10_000)
"""

from __future__ import annotations

import torch
from torch import nn

from m2t_core.reference_net import BN_EPSILON, backbone_description

__all__ = ["BasicBlock", "ConvBN", "ReferenceNet"]


class ConvBN(nn.Module):
    """``conv`` (no bias, symmetric zero padding) followed by ``bn`` (``BatchNorm2d``, eps 1e-5).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size; the padding is ``kernel_size // 2`` on every side.
        stride: Stride.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        """Build the pair (arguments documented on the class)."""
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPSILON)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``bn(conv(x))``."""
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """Residual basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The shortcut is the identity, or ``ConvBN`` 1×1 with the block's stride when the width or the
    resolution changes (then it is the submodule ``shortcut`` with ``conv`` and ``bn``).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of ``conv1`` (and of the shortcut).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        """Build the block (arguments documented on the class)."""
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels, eps=BN_EPSILON)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPSILON)
        self.shortcut: nn.Module = (
            ConvBN(in_channels, out_channels, 1, stride)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``[N, C, H, W]``."""
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ReferenceNet(nn.Module):
    """The reference backbone: stem → stage1 (width ``w``) → stage2 (``2w``, stride 2) → global pool.

    Takes ``[N, in_channels, H, W]`` and returns features ``[N, 2w]``. The same network (same module
    paths, same padding, BN eps 1e-5) is ``m2t_keras.ReferenceNet``, ``m2t_flax.nnx.ReferenceNet``
    and ``m2t_flax.linen.ReferenceNet``; :mod:`m2t_core.reference_net` runs it in NumPy.

    Args:
        in_channels: Channels of the input images.
        width: ``w``, the width of stem and stage 1.

    Attributes:
        in_channels: Channels of the input images.
        width: ``w``.
        feature_dim: ``2w``, the width of the features (what ``M2Teacher`` needs).

    Raises:
        ValueError: a size that is not a positive int.
    """

    def __init__(self, in_channels: int = 3, width: int = 16) -> None:
        """Build the network (arguments documented on the class)."""
        super().__init__()
        for name, value in (("in_channels", in_channels), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        self.width = width
        self.feature_dim = 2 * width
        self.stem = ConvBN(in_channels, width, 3)
        self.stage1 = BasicBlock(width, width)
        self.stage2 = BasicBlock(width, 2 * width, stride=2)

    def describe(self) -> dict[str, object]:
        """The description in a checkpoint config: ``architecture``, ``in_channels``, ``width``."""
        return backbone_description(self.in_channels, self.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[N, 2w]`` of images ``[N, in_channels, H, W]``."""
        h = self.stage2(self.stage1(torch.relu(self.stem(x))))
        return h.mean(dim=(2, 3))
