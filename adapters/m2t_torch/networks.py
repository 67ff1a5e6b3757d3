"""The student and teacher networks of :class:`m2t_torch.M2Teacher`, and their MLP heads.

DESIGN §2: student = backbone → projector → predictor; teacher = copy of backbone → projector.
Heads are Linear → BatchNorm1d → ReLU → Linear (BYOL's MLP). The student runs **each view
separately** (its BatchNorm layers see one view's batch statistics), inside a single ``forward`` so
that a ``DistributedDataParallel`` wrapper around the student sees one forward per step.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from m2t_torch.batchnorm import MomentumBatchNorm

__all__ = ["MLPHead", "StudentNetwork", "TeacherNetwork", "infer_feature_dim"]


class MLPHead(nn.Sequential):
    """BYOL's projector/predictor: ``Linear → BatchNorm1d → ReLU → Linear``.

    Args:
        in_features: Input size.
        hidden_features: Hidden size (4096 in BYOL and Momentum² Teacher).
        out_features: Output size (256).

    References:
        Grill et al. *Bootstrap Your Own Latent*, NeurIPS 2020, §3.3.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        """Build the head (arguments documented on the class)."""
        for name, value in (
            ("in_features", in_features),
            ("hidden_features", hidden_features),
            ("out_features", out_features),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        super().__init__(
            nn.Linear(in_features, hidden_features),
            nn.BatchNorm1d(hidden_features),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_features, out_features),
        )
        self.in_features = in_features
        self.out_features = out_features


def infer_feature_dim(backbone: nn.Module) -> int | None:
    """Guess the size of ``backbone``'s output features, or ``None`` when there is no good guess.

    The guess is the output size of the last *registered* module with parameters, when that module is
    a Linear (``out_features``), a batch norm (``num_features``) or a convolution (``out_channels``,
    for backbones ending in global pooling). Registration order is usually execution order (torchvision
    ResNets with ``fc = nn.Identity()`` end in a BatchNorm of the feature width); the networks check the
    actual width at the first forward and name both numbers if the guess was wrong.
    """
    last: nn.Module | None = None
    for module in backbone.modules():
        if any(True for _ in module.parameters(recurse=False)):
            last = module
    if isinstance(last, nn.Linear):
        return last.out_features
    if isinstance(last, (_BatchNorm, MomentumBatchNorm)):
        return last.num_features
    if isinstance(last, _ConvNd):
        return last.out_channels
    return None


def _features(backbone: nn.Module, projector: MLPHead, x: torch.Tensor) -> torch.Tensor:
    h = backbone(x)
    if h.dim() > 2:
        h = torch.flatten(h, 1)  # [N, C, 1, 1] after global pooling
    if h.dim() != 2 or h.shape[1] != projector.in_features:
        raise ValueError(
            f"the backbone returned features of shape {tuple(h.shape)} for an input of shape "
            f"{tuple(x.shape)}, but the projector expects [N, feature_dim={projector.in_features}]; "
            "pass the right feature_dim to M2Teacher"
        )
    return h


class StudentNetwork(nn.Module):
    """backbone → projector → predictor, run on each view separately.

    Args:
        backbone: Feature extractor returning ``[N, feature_dim]`` (or ``[N, feature_dim, 1, ...]``).
        projector: :class:`MLPHead` from ``feature_dim`` to the projection size.
        predictor: :class:`MLPHead` from the projection size to itself.
    """

    def __init__(self, backbone: nn.Module, projector: MLPHead, predictor: MLPHead) -> None:
        """Hold the three parts (arguments documented on the class)."""
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor

    def forward(self, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Predictions ``p_v`` for each view, each computed in its own forward pass.

        Args:
            *views: One tensor per view.

        Returns:
            A tuple of ``[B, projection_dim]`` predictions, one per view.
        """
        return tuple(self.predictor(self.projector(self._features(v))) for v in views)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return _features(self.backbone, self.projector, x)


class TeacherNetwork(nn.Module):
    """backbone → projector, run once on the concatenated views.

    Args:
        backbone: The teacher's copy of the backbone (batch norms converted to momentum BN).
        projector: The teacher's copy of the projector.
    """

    def __init__(self, backbone: nn.Module, projector: MLPHead) -> None:
        """Hold the two parts (arguments documented on the class)."""
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projections ``z`` of a batch of concatenated views.

        Args:
            x: ``[V·B, ...]`` views concatenated along dim 0.

        Returns:
            ``[V·B, projection_dim]``.
        """
        return self.projector(_features(self.backbone, self.projector, x))
