"""The Momentum² Teacher model for Flax NNX: student, momentum-BN teacher, and their step counter.

The public name is re-exported by :mod:`m2t_flax.nnx`; import it from there.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from m2t_flax import functional as mf
from m2t_flax.nnx_layers import convert_momentum_bn

__all__ = ["M2Teacher", "MLPHead", "Student", "Teacher"]


class MLPHead(nnx.Module):
    """Projector / predictor head: ``Linear → BatchNorm → ReLU → Linear`` (BYOL's MLP).

    The BatchNorm computes the two-pass variance (``use_fast_variance=False``), as every
    normalisation in this project does.

    Args:
        in_features: Input width.
        hidden_dim: Width of the hidden layer.
        out_features: Output width.
        rngs: Random streams for the initializers.
    """

    def __init__(self, in_features: int, hidden_dim: int, out_features: int, *, rngs: nnx.Rngs) -> None:
        """Build the head; the arguments are documented on the class."""
        self.linear1 = nnx.Linear(in_features, hidden_dim, rngs=rngs)
        self.bn = nnx.BatchNorm(hidden_dim, use_fast_variance=False, rngs=rngs)
        self.linear2 = nnx.Linear(hidden_dim, out_features, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the head to ``[B, in_features]``; returns ``[B, out_features]``."""
        return self.linear2(nnx.relu(self.bn(self.linear1(x))))


class Student(nnx.Module):
    """The online network: ``backbone → projector → predictor`` (trained by the optimizer).

    Args:
        backbone: Any NNX module mapping a batch to ``[B, feature_dim]`` features.
        projector: The projection head.
        predictor: The prediction head.
    """

    def __init__(self, backbone: nnx.Module, projector: MLPHead, predictor: MLPHead) -> None:
        """Hold the three parts; the arguments are documented on the class."""
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor

    def __call__(self, x: jax.Array) -> jax.Array:
        """The prediction ``p`` of one view."""
        return self.predictor(self.projector(self.backbone(x)))


class Teacher(nnx.Module):
    """The target network: ``backbone → projector``, every BatchNorm a momentum BatchNorm.

    Its parameters have the same names and shapes as the student's ``backbone`` and ``projector``.

    Args:
        backbone: Converted copy of the student's backbone.
        projector: Converted copy of the student's projector.
    """

    def __init__(self, backbone: nnx.Module, projector: nnx.Module) -> None:
        """Hold the two parts; the arguments are documented on the class."""
        self.backbone = backbone
        self.projector = projector

    def __call__(self, x: jax.Array) -> jax.Array:
        """The projection ``z`` of a batch (in training mode: the views concatenated along axis 0)."""
        return self.projector(self.backbone(x))


def _infer_feature_dim(backbone: nnx.Module) -> int:
    for name in ("feature_dim", "out_features"):
        value = getattr(backbone, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise ValueError(
        f"cannot infer the feature width of a {type(backbone).__name__} backbone: pass "
        "feature_dim=... (or give the backbone an int attribute `feature_dim`)"
    )


class M2Teacher(nnx.Module):
    r"""Momentum² Teacher for Flax NNX: a student, its momentum-BN teacher, and the step counter.

    The student is ``backbone → projector → predictor`` (heads ``Linear→BatchNorm→ReLU→Linear``); the
    teacher is a copy of ``backbone → projector`` with every ``nnx.BatchNorm`` replaced by
    :class:`~m2t_flax.nnx.MomentumBatchNorm` (two views, ``α_k`` from ``alpha_start`` to
    ``alpha_end``). Train it with :func:`~m2t_flax.nnx.train_step` (or the faster
    :func:`~m2t_flax.nnx.make_train_step`) and an optimizer over the **student** only::

        optimizer = nnx.Optimizer(model.student, optax.adamw(1e-3), wrt=nnx.Param)

    Attributes:
        student: :class:`Student` (``backbone``, ``projector``, ``predictor``).
        teacher: :class:`Teacher` (``backbone``, ``projector``).
        step: ``nnx.BatchStat`` int32 counter ``k`` of training steps.
        momentum_schedule: The teacher EMA schedule ``m_k`` (a :class:`~m2t_flax.functional.CosineSchedule`).

    Args:
        backbone: NNX module mapping a batch to ``[B, feature_dim]`` features. It becomes the
            student's backbone (not copied); the teacher gets a converted clone.
        feature_dim: Width of the backbone's output; inferred from an int attribute
            ``feature_dim`` or ``out_features`` of the backbone when ``None``.
        hidden_dim: Hidden width of the projector and predictor.
        projection_dim: Output width of the projector and predictor.
        total_steps: Training length ``K`` of both cosine schedules; may be ``None`` only when both
            schedules are constant.
        base_momentum: Teacher EMA momentum at step 0.
        final_momentum: Teacher EMA momentum from step ``K`` on.
        alpha_start: Statistics history weight at step 0.
        alpha_end: Statistics history weight from step ``K`` on.
        correction: Variance estimator of the teacher's momentum BatchNorms.
        rngs: Random streams for the initializers.

    Raises:
        ValueError: bad schedule arguments or widths, or a ``feature_dim`` that cannot be inferred.

    References:
        Li, Liu, Sun. *Momentum² Teacher.* arXiv:2101.07525, 2021.
        Grill et al. *Bootstrap Your Own Latent.* NeurIPS 2020.
    """

    def __init__(
        self,
        backbone: nnx.Module,
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
        rngs: nnx.Rngs,
    ) -> None:
        """Build student and teacher; the arguments are documented on the class."""
        self.momentum_schedule = mf.teacher_momentum_schedule(total_steps, base_momentum, final_momentum)
        feature_dim = _infer_feature_dim(backbone) if feature_dim is None else feature_dim
        for name, value in (
            ("feature_dim", feature_dim),
            ("hidden_dim", hidden_dim),
            ("projection_dim", projection_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        projector = MLPHead(feature_dim, hidden_dim, projection_dim, rngs=rngs)
        predictor = MLPHead(projection_dim, hidden_dim, projection_dim, rngs=rngs)
        self.student = Student(backbone, projector, predictor)
        teacher = nnx.clone(Teacher(backbone, projector))
        convert_momentum_bn(
            teacher,
            num_views=2,
            alpha_start=alpha_start,
            alpha_end=alpha_end,
            total_steps=total_steps,
            correction=correction,
        )
        self.teacher = teacher
        self.step = nnx.BatchStat(jnp.zeros((), jnp.int32))

    @property
    def teacher_backbone(self) -> nnx.Module:
        """The teacher's backbone: the network whose features are evaluated (use it in eval mode)."""
        return self.teacher.backbone

    def features(self, x: jax.Array) -> jax.Array:
        """Evaluation features: the teacher backbone in evaluation mode (nothing is updated).

        Args:
            x: A batch of inputs (any batch size).

        Returns:
            ``[B, feature_dim]`` features.
        """
        return nnx.view(self.teacher.backbone, use_running_average=True, raise_if_not_found=False)(x)

    def momentum(self) -> jax.Array:
        """The teacher EMA momentum ``m_k`` at the current step (traceable)."""
        return self.momentum_schedule(self.step[...])

    def update_teacher(self, momentum: Any) -> None:
        """Teacher ← EMA(teacher, student, ``momentum``) over the shared parameters (not statistics).

        Args:
            momentum: Weight ``m`` on the old teacher.
        """
        shared = nnx.state(self.teacher, nnx.Param)
        online = nnx.to_pure_dict(nnx.state(self.student, nnx.Param))
        del online["predictor"]  # the teacher has no predictor
        new = mf.ema_update(nnx.to_pure_dict(shared), online, momentum)
        nnx.replace_by_pure_dict(shared, new)
        nnx.update(self.teacher, shared)

    def targets(self, view1: jax.Array, view2: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Teacher projections of both views from one forward (commits the momentum statistics).

        Args:
            view1: First view ``[B, ...]``.
            view2: Second view, same shape.

        Returns:
            ``(z1, z2)`` with stopped gradients.

        Raises:
            ValueError: the views' shapes differ.
        """
        if view1.shape != view2.shape:
            raise ValueError(f"view1 and view2 must have the same shape, got {view1.shape} and {view2.shape}")
        z = jax.lax.stop_gradient(self.teacher(jnp.concatenate([view1, view2], axis=0)))
        return z[: view1.shape[0]], z[view1.shape[0] :]
