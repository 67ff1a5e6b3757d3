r"""``M2Teacher``: a Momentum² Teacher training model around a user's backbone.

``loss = model(view1, view2)`` runs the normative step of DESIGN §2:

1. read the step ``k``; ``m_k`` (teacher momentum) from the cosine schedule — ``α_k`` is read by each
   momentum-BN layer from its own commit counter, which advances in lock-step with ``k``;
2. teacher ← EMA(teacher, student, ``m_k``), fused and in place;
3. ``z = teacher(cat([view1, view2]))`` — one forward, momentum BN with per-view statistics, one
   commit per layer — then (across processes) one collective to keep the statistics identical;
4. the student runs each view separately (plain BN, per-view batch statistics), then the predictor;
5. the symmetrised BYOL loss. You call ``loss.backward()`` and ``optimizer.step()``.

Everything that changes during training — student, teacher parameters, statistics, counters, the
``step`` buffer — lives in ``state_dict()``, so a checkpoint of the model (and of the optimizer)
resumes bit-identically.

References:
    Li, Liu, Sun. *Momentum² Teacher: Momentum Teacher with Momentum Statistics for Self-Supervised
    Learning.* arXiv:2101.07525, 2021.
    Grill et al. *Bootstrap Your Own Latent.* NeurIPS 2020.
    Cai et al. *Exponential Moving Average Normalization for Self-supervised and Semi-supervised
    Learning.* CVPR 2021 (the ``"eman"`` teacher).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from m2t_torch.convert import convert_momentum_bn
from m2t_torch.distributed import check_sync_stats, resolve_sync_stats, sync_momentum_stats
from m2t_torch.ema import apply_groups_, module_groups
from m2t_torch.functional import symmetric_loss
from m2t_torch.networks import MLPHead, StudentNetwork, TeacherNetwork, infer_feature_dim
from m2t_torch.schedules import TorchCosineSchedule, stats_momentum_schedule, teacher_momentum_schedule

__all__ = ["TEACHER_NORMS", "M2Teacher"]

TEACHER_NORMS = ("momentum", "batch", "eman")


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


class M2Teacher(nn.Module):
    r"""Momentum² Teacher: BYOL with an EMA teacher whose BatchNorms use momentum statistics.

    ``forward(view1, view2)`` runs one training step (EMA, teacher, student) and returns the loss;
    the module docstring lists the order. In evaluation mode it returns the same loss computed without
    changing anything (teacher and student use their stored statistics; no EMA, no step).

    Parameters: ``model.parameters()`` yields the **student's** parameters only (backbone, projector,
    predictor), so ``torch.optim.SGD(model.parameters(), ...)`` trains the student and can never touch
    the teacher. The teacher's parameters also have ``requires_grad=False``; they are reachable as
    ``model.teacher.parameters()`` and are saved in ``state_dict()`` like everything else.

    Distributed training (torchrun): wrap the **student**, not the teacher or the whole model::

        model = M2Teacher(backbone, total_steps=K).to(device)
        model.student = nn.parallel.DistributedDataParallel(model.student, device_ids=[rank])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    The student runs both views inside one ``forward``, so DDP sees one forward per backward. The
    teacher follows the (synchronised) student through the EMA; its statistics are synchronised after
    each step by ``sync_stats``.

    Args:
        backbone: The user's feature extractor, returning ``[N, feature_dim]`` (or
            ``[N, feature_dim, 1, 1]``). It becomes the student's backbone (not copied); the teacher
            gets a deep copy.
        feature_dim: Width of the backbone's features; inferred from the last Linear / BatchNorm /
            convolution when omitted (an error asks for it when no guess is possible).
        hidden_dim: Hidden width of projector and predictor.
        projection_dim: Output width of projector and predictor.
        total_steps: Training steps ``K`` of the cosine schedules; may be ``None`` only when both
            schedules are constant.
        base_momentum: Teacher momentum ``m_0`` (weight on the old teacher).
        final_momentum: Teacher momentum at step ``K``.
        alpha_start: ``α_0``, the teacher BN's weight on its stored statistics at step 0.
        alpha_end: ``α_K``.
        correction: Variance estimator of the teacher's momentum BN (``"biased"``, ``"unbiased"``,
            ``"official"``).
        teacher_norm: How the teacher's BatchNorms normalise. ``"momentum"`` (M2T, default): momentum
            BN as above. ``"batch"`` (BYOL): the per-view batch statistics of the teacher batch, no
            history (momentum BN with ``α`` fixed at 0; its stored statistics are the last batch's).
            ``"eman"``: the teacher keeps ``nn.BatchNorm`` layers, always in evaluation mode, whose
            running mean/variance are an EMA with momentum ``m_k`` of the student's running statistics,
            updated with the parameter EMA.
        sync_stats: ``"mean"``, ``"broadcast"``, ``"none"`` or ``None`` (``"mean"`` when
            ``torch.distributed`` is initialised); one collective per step for the whole teacher,
            after its forward (see :mod:`m2t_torch.distributed`).

    Raises:
        ValueError: invalid schedules, sizes, ``teacher_norm``, ``sync_stats``, or a ``feature_dim``
            that cannot be inferred.

    References:
        Li, Liu, Sun. Momentum² Teacher, arXiv:2101.07525, 2021.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int | None = None,
        hidden_dim: int = 4096,
        projection_dim: int = 256,
        total_steps: int | None = None,
        base_momentum: float = 0.99,
        final_momentum: float = 1.0,
        alpha_start: float = 0.0,
        alpha_end: float = 1.0,
        correction: str = "biased",
        teacher_norm: str = "momentum",
        sync_stats: str | None = None,
    ) -> None:
        """Build student and teacher (arguments documented on the class)."""
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        if teacher_norm not in TEACHER_NORMS:
            raise ValueError(f"teacher_norm must be one of {TEACHER_NORMS}, got {teacher_norm!r}")
        self.teacher_norm = teacher_norm
        self.sync_stats = check_sync_stats(sync_stats)
        self.momentum_schedule: TorchCosineSchedule = teacher_momentum_schedule(
            total_steps, base_momentum, final_momentum
        )
        # Only a momentum-BN teacher follows an α schedule ("batch" fixes α = 0, "eman" has none).
        self.alpha_schedule: TorchCosineSchedule | None = None
        if teacher_norm == "momentum":
            self.alpha_schedule = stats_momentum_schedule(total_steps, alpha_start, alpha_end)
        if feature_dim is None:
            feature_dim = infer_feature_dim(backbone)
            if feature_dim is None:
                raise ValueError(
                    f"cannot infer the feature width of the backbone {type(backbone).__name__} (its last "
                    "module with parameters is not a Linear, BatchNorm or convolution); pass feature_dim="
                )
        projector = MLPHead(feature_dim, hidden_dim, projection_dim)
        predictor = MLPHead(projection_dim, hidden_dim, projection_dim)
        self.student = StudentNetwork(backbone, projector, predictor)
        teacher = TeacherNetwork(copy.deepcopy(backbone), copy.deepcopy(projector))
        if teacher_norm == "momentum":
            convert_momentum_bn(
                teacher,
                num_views=2,
                alpha_start=alpha_start,
                alpha_end=alpha_end,
                total_steps=total_steps,
                correction=correction,
                sync_stats="none",  # synchronised once for the whole teacher, in forward
            )
        elif teacher_norm == "batch":
            convert_momentum_bn(teacher, num_views=2, alpha_start=0.0, alpha_end=0.0, sync_stats="none")
        teacher.requires_grad_(False)
        self.teacher = teacher
        self.feature_dim = feature_dim
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.train(self.training)

    # -- what the user sees -----------------------------------------------------------------------

    @property
    def teacher_backbone(self) -> nn.Module:
        """The teacher's backbone: call ``.eval()`` on it (or the model) to extract evaluation features."""
        return self.teacher.backbone

    @property
    def backbone(self) -> nn.Module:
        """The student's backbone (the module passed in), unwrapped from DDP if needed."""
        return _unwrap(self.student).backbone

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """The student's parameters only; the teacher is updated by the EMA, never by an optimizer.

        Args:
            prefix: Prefix for every name.
            recurse: Include submodules' parameters.
            remove_duplicate: Yield shared parameters once.

        Yields:
            ``(name, parameter)`` pairs of the student.
        """
        teacher_prefix = f"{prefix}.teacher." if prefix else "teacher."
        for name, param in super().named_parameters(prefix, recurse, remove_duplicate):
            if not name.startswith(teacher_prefix):
                yield name, param

    def train(self, mode: bool = True) -> M2Teacher:
        """Set training mode; an EMAN teacher's BatchNorms stay in evaluation mode.

        Args:
            mode: Training (``True``) or evaluation mode.

        Returns:
            ``self``.
        """
        super().train(mode)
        if self.teacher_norm == "eman":
            for m in self.teacher.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def current_momentum(self) -> torch.Tensor:
        """Teacher momentum ``m_k`` the next step will use (float64 0-d tensor)."""
        m = self.momentum_schedule(self.step)
        # At step 0 the EMA is a copy (weight 0 on the old teacher). With a teacher built as a copy of
        # the student this changes nothing (DESIGN §2); it also makes the teacher start from the
        # student when the student was changed after construction (pretrained weights loaded, or DDP
        # broadcasting rank 0's initialisation).
        return torch.where(self.step == 0, torch.zeros_like(m), m)

    # -- the step ---------------------------------------------------------------------------------

    def update_teacher(self, momentum: float | torch.Tensor) -> None:
        """Set teacher ← EMA(teacher, student, ``momentum``): parameters, and BN statistics for ``"eman"``.

        Args:
            momentum: Weight on the old teacher (float or 0-d tensor).
        """
        student = _unwrap(self.student)
        groups = module_groups(self.teacher.backbone, student.backbone) + module_groups(
            self.teacher.projector, student.projector
        )
        if self.teacher_norm == "eman":
            groups += module_groups(self.teacher.backbone, student.backbone, "bn_statistics")
            groups += module_groups(self.teacher.projector, student.projector, "bn_statistics")
        apply_groups_(groups, momentum)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """One M2T step in training mode (EMA, teacher, student); the loss only in evaluation mode.

        Args:
            view1: First augmented view, ``[B, ...]``.
            view2: Second augmented view, same shape.

        Returns:
            The symmetrised BYOL loss (0-d, float32 or wider), differentiable w.r.t. the student.

        Raises:
            ValueError: the views' shapes differ.
        """
        if view1.shape != view2.shape:
            raise ValueError(
                f"view1 and view2 must have the same shape, got {tuple(view1.shape)} and {tuple(view2.shape)}"
            )
        if self.training:
            self.update_teacher(self.current_momentum())
        with torch.no_grad():
            z1, z2 = self.teacher(torch.cat([view1, view2])).chunk(2)
        if self.training:
            mode = resolve_sync_stats(self.sync_stats)
            if mode != "none":
                sync_momentum_stats(self.teacher, mode)
        p1, p2 = self.student(view1, view2)
        loss = symmetric_loss(p1, p2, z1, z2)
        if self.training:
            with torch.no_grad():
                self.step.add_(1)
        return loss

    def extra_repr(self) -> str:
        """Schedules and teacher normalisation, for ``repr``."""
        m, a = self.momentum_schedule, self.alpha_schedule
        alpha = "" if a is None else f"alpha={a.start}->{a.end}, "
        return (
            f"feature_dim={self.feature_dim}, teacher_norm={self.teacher_norm!r}, "
            f"momentum={m.start}->{m.end}, {alpha}total_steps={m.total_steps}, sync_stats={self.sync_stats!r}"
        )
