r"""Momentum² Teacher for Flax Linen: modules, the training state and a jit-compiled train step.

Linen modules hold no state, so an M2T model here is two module definitions — a student
(``backbone → projector → predictor``) and a teacher (``backbone → projector`` with every BatchNorm a
:class:`~m2t_flax.linen.MomentumBatchNorm`) — plus an :class:`M2TState` of arrays, advanced by a pure
train step::

    import jax
    import optax
    from m2t_flax.linen_teacher import M2Teacher

    m2t = M2Teacher.reference(width=16, hidden_dim=512, projection_dim=128,
                              total_steps=10_000)
    tx = optax.sgd(0.05, momentum=0.9)
    state = m2t.init_state(jax.random.key(0), views1[:2], tx)
    train_step = m2t.make_train_step(tx)
    for view1, view2 in batches:
        state, loss = train_step(state, view1, view2)

The step follows the normative order of DESIGN §2 and computes exactly what
:func:`m2t_flax.nnx.train_step` computes for the same weights: ``m_k`` from the cosine schedule;
teacher ← EMA(teacher, student, ``m_k``); one teacher forward of both views (momentum statistics
with per-view moments, one commit per layer); the student per view; the symmetric loss; the
optimizer update of the student; ``k ← k + 1``.

A backbone is any Linen module called as ``backbone(x, train=...)`` returning ``[N, features]``; the
teacher's backbone must be the same architecture built with momentum BatchNorms (parameter trees of
the same names and shapes), e.g. ``ReferenceNet(width, norm=None)`` for the student and
``ReferenceNet(width, norm=MomentumNorm(...))`` for the teacher.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from m2t_core._validation import check_correction, check_num_views
from m2t_core.checkpoint import model_config
from m2t_core.reference_net import BN_EPSILON, backbone_description
from m2t_flax import functional as mf
from m2t_flax.linen import MomentumBatchNorm

__all__ = [
    "BasicBlock",
    "ConvBN",
    "M2TState",
    "M2Teacher",
    "MLPHead",
    "MomentumNorm",
    "ReferenceNet",
    "Student",
    "Teacher",
    "batch_norm",
]

# Weight on the history of the backbone's running statistics (torch's default, as in every adapter's
# ReferenceNet); they serve evaluation only.
_BN_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class MomentumNorm:
    """The momentum-BN arguments of a teacher's normalisation layers (hashable, a Linen module field).

    Attributes:
        num_views: Views per teacher batch.
        alpha_start: ``α`` at step 0.
        alpha_end: ``α`` from step ``total_steps`` on.
        total_steps: Length of the ``α`` cosine; ``None`` only when ``alpha_start == alpha_end``.
        correction: Variance estimator.

    Raises:
        ValueError: invalid schedule, ``num_views`` or ``correction`` (when built).
    """

    num_views: int = 2
    alpha_start: float = 0.0
    alpha_end: float = 1.0
    total_steps: int | None = None
    correction: str = "biased"

    def __post_init__(self) -> None:
        """Validate the arguments now rather than at the first call."""
        check_num_views(self.num_views)
        mf.stats_momentum_schedule(self.total_steps, self.alpha_start, self.alpha_end)
        check_correction(self.correction)


def batch_norm(
    norm: MomentumNorm | None, train: bool, name: str, momentum: float = _BN_MOMENTUM
) -> nn.Module:
    """The normalisation layer of a Linen model: BatchNorm for the student, momentum BN for the teacher.

    Both use epsilon 1e-5 and the two-pass variance; call it inside a ``@nn.compact`` method.

    Args:
        norm: ``None`` for ``nn.BatchNorm``; a :class:`MomentumNorm` for a momentum BatchNorm.
        train: Training mode (batch or momentum statistics) or evaluation mode (stored statistics).
        name: The submodule's name.
        momentum: BatchNorm's weight on the history of its running statistics (evaluation only).

    Returns:
        The (unbound) layer.
    """
    if norm is None:
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=momentum,
            epsilon=BN_EPSILON,
            use_fast_variance=False,
            name=name,
        )
    return MomentumBatchNorm(
        use_running_average=not train,
        epsilon=BN_EPSILON,
        num_views=norm.num_views,
        alpha_start=norm.alpha_start,
        alpha_end=norm.alpha_end,
        total_steps=norm.total_steps,
        correction=norm.correction,
        name=name,
    )


class ConvBN(nn.Module):
    """``conv`` (no bias, symmetric zero padding ``kernel_size // 2``) followed by ``bn``.

    Attributes:
        features: Output channels.
        kernel_size: Square kernel size.
        stride: Stride.
        norm: ``None`` (BatchNorm) or a :class:`MomentumNorm`.
    """

    features: int
    kernel_size: int
    stride: int = 1
    norm: MomentumNorm | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """``bn(conv(x))`` of NHWC images."""
        pad = self.kernel_size // 2
        x = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=self.stride,
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            name="conv",
        )(x)
        return batch_norm(self.norm, train, "bn")(x)


class BasicBlock(nn.Module):
    """Residual basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The shortcut is the identity, or a :class:`ConvBN` 1×1 named ``shortcut`` when the width or the
    resolution changes.

    Attributes:
        features: Output channels.
        stride: Stride of ``conv1`` and of the shortcut.
        norm: ``None`` (BatchNorm) or a :class:`MomentumNorm`.
    """

    features: int
    stride: int = 1
    norm: MomentumNorm | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """Apply the block to NHWC images."""
        pad = ((1, 1), (1, 1))
        h = nn.Conv(self.features, (3, 3), strides=self.stride, padding=pad, use_bias=False, name="conv1")(x)
        h = nn.relu(batch_norm(self.norm, train, "bn1")(h))
        h = nn.Conv(self.features, (3, 3), padding=pad, use_bias=False, name="conv2")(h)
        h = batch_norm(self.norm, train, "bn2")(h)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = ConvBN(self.features, 1, self.stride, self.norm, name="shortcut")(x, train)
        return nn.relu(h + x)


class ReferenceNet(nn.Module):
    """The reference backbone: stem → stage1 (width ``w``) → stage2 (``2w``, stride 2) → global pool.

    Takes NHWC images and returns ``[N, 2w]``; the same network, with the same module paths, as
    ``m2t_torch.ReferenceNet``, ``m2t_keras.ReferenceNet`` and ``m2t_flax.nnx.ReferenceNet``.

    Attributes:
        width: ``w``.
        norm: ``None`` for the student (BatchNorm); a :class:`MomentumNorm` for the teacher.
    """

    width: int = 16
    norm: MomentumNorm | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """Features ``[N, 2w]`` of NHWC images."""
        h = nn.relu(ConvBN(self.width, 3, 1, self.norm, name="stem")(x, train))
        h = BasicBlock(self.width, 1, self.norm, name="stage1")(h, train)
        h = BasicBlock(2 * self.width, 2, self.norm, name="stage2")(h, train)
        return h.mean(axis=(1, 2))


class MLPHead(nn.Module):
    """Projector / predictor: ``linear1 → bn → ReLU → linear2`` (BYOL's MLP).

    Attributes:
        hidden_dim: Width of the hidden layer.
        out_dim: Output width.
        norm: ``None`` (BatchNorm) or a :class:`MomentumNorm`.
    """

    hidden_dim: int
    out_dim: int
    norm: MomentumNorm | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """Apply the head to ``[N, in]``."""
        h = nn.Dense(self.hidden_dim, name="linear1")(x)
        # Running-statistics momentum 0.99, Flax's default, as in m2t_flax.nnx.MLPHead.
        h = nn.relu(batch_norm(self.norm, train, "bn", momentum=0.99)(h))
        return nn.Dense(self.out_dim, name="linear2")(h)


class Student(nn.Module):
    """The online network: ``backbone → projector → predictor``.

    Attributes:
        backbone: Linen module called as ``backbone(x, train=...)``, returning ``[N, features]``.
        hidden_dim: Hidden width of the heads.
        projection_dim: Output width of the heads.
    """

    backbone: nn.Module
    hidden_dim: int
    projection_dim: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """The prediction ``p`` of one view."""
        z = MLPHead(self.hidden_dim, self.projection_dim, name="projector")(
            self.backbone(x, train=train), train
        )
        return MLPHead(self.hidden_dim, self.projection_dim, name="predictor")(z, train)


class Teacher(nn.Module):
    """The target network: ``backbone → projector`` with momentum BatchNorms.

    Attributes:
        backbone: The student's backbone architecture built with momentum BatchNorms.
        hidden_dim: Hidden width of the projector.
        projection_dim: Output width of the projector.
        norm: The projector's :class:`MomentumNorm`.
    """

    backbone: nn.Module
    hidden_dim: int
    projection_dim: int
    norm: MomentumNorm

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """The projection ``z`` (in training mode of the views concatenated along axis 0)."""
        h = self.backbone(x, train=train)
        return MLPHead(self.hidden_dim, self.projection_dim, self.norm, name="projector")(h, train)

    def features(self, x: jax.Array) -> jax.Array:
        """Evaluation features: the backbone with its stored statistics."""
        return self.backbone(x, train=False)


class M2TState(struct.PyTreeNode):
    """Everything a Linen M2T run changes: a pytree, so it passes through ``jax.jit``.

    Attributes:
        student: The student's variables ``{"params": ..., "batch_stats": ...}``.
        teacher: The teacher's variables (its ``batch_stats`` hold the momentum statistics).
        opt_state: The optax state of the student's parameters.
        step: Training step ``k`` (int32).
        config: JSON description of the model (static; what ``export_checkpoint`` records).
    """

    student: Any
    teacher: Any
    opt_state: Any
    step: jax.Array
    config: str = struct.field(pytree_node=False, default="{}")


@functools.partial(jax.jit, static_argnums=0)
def _init_variables(module: nn.Module, key: jax.Array, x: jax.Array) -> Any:
    # One compiled initialisation per module definition (Linen modules hash by their fields):
    # eagerly, every initializer of every shape would compile on its own.
    return module.init(key, x, train=False)


def _check_mirror(student: Any, teacher: Any) -> None:
    """The teacher's parameters must have the names and shapes of the student's backbone + projector."""
    hint = "build the teacher's backbone as the student's architecture with momentum BatchNorms"
    if jax.tree.structure(student) != jax.tree.structure(teacher):
        raise ValueError(
            f"the teacher's parameters do not mirror the student's backbone and projector: {hint}"
        )
    for (path, s), t in zip(
        jax.tree_util.tree_leaves_with_path(student), jax.tree.leaves(teacher), strict=True
    ):
        if s.shape != t.shape:
            raise ValueError(
                f"the teacher's parameters do not mirror the student's: {jax.tree_util.keystr(path)} has "
                f"shape {t.shape} in the teacher and {s.shape} in the student; {hint}"
            )


def _shared(params: Any) -> dict[str, Any]:
    return {"backbone": params["backbone"], "projector": params["projector"]}


@dataclasses.dataclass(frozen=True)
class M2Teacher:
    """A Linen Momentum² Teacher: the two module definitions and the teacher-momentum schedule.

    Not a Linen module itself: it builds the :class:`M2TState` and the train step.

    Attributes:
        student: A :class:`Student`.
        teacher: A :class:`Teacher` whose backbone mirrors the student's.
        total_steps: ``K`` of the teacher-momentum schedule (``None`` only when it is constant).
        base_momentum: Teacher momentum at step 0.
        final_momentum: Teacher momentum from step ``K`` on.

    Raises:
        ValueError: bad schedule arguments, or heads of different sizes in student and teacher.
    """

    student: Student
    teacher: Teacher
    total_steps: int | None = None
    base_momentum: float = 0.99
    final_momentum: float = 1.0

    def __post_init__(self) -> None:
        """Validate the schedule and the heads."""
        mf.teacher_momentum_schedule(self.total_steps, self.base_momentum, self.final_momentum)
        ours = (self.student.hidden_dim, self.student.projection_dim)
        theirs = (self.teacher.hidden_dim, self.teacher.projection_dim)
        if ours != theirs:
            raise ValueError(f"student heads (hidden, projection) = {ours} but teacher heads = {theirs}")

    @classmethod
    def reference(
        cls,
        *,
        width: int = 16,
        hidden_dim: int = 4096,
        projection_dim: int = 256,
        total_steps: int | None = None,
        base_momentum: float = 0.99,
        final_momentum: float = 1.0,
        alpha_start: float = 0.0,
        alpha_end: float = 1.0,
        correction: str = "biased",
    ) -> M2Teacher:
        """An M2T model with the reference backbone (:class:`ReferenceNet`); channels come from the data.

        Args:
            width: ``w`` of the backbone.
            hidden_dim: Hidden width of projector and predictor.
            projection_dim: Output width of projector and predictor.
            total_steps: ``K`` of both schedules.
            base_momentum: Teacher momentum at step 0.
            final_momentum: Teacher momentum at step ``K``.
            alpha_start: Statistics history weight at step 0.
            alpha_end: Statistics history weight at step ``K``.
            correction: Variance estimator of the teacher's momentum BNs.

        Returns:
            The model definition.
        """
        norm = MomentumNorm(2, alpha_start, alpha_end, total_steps, correction)
        student = Student(ReferenceNet(width), hidden_dim, projection_dim)
        teacher = Teacher(ReferenceNet(width, norm), hidden_dim, projection_dim, norm)
        return cls(student, teacher, total_steps, base_momentum, final_momentum)

    @property
    def momentum_schedule(self) -> mf.CosineSchedule:
        """The teacher momentum schedule ``m_k``."""
        return mf.teacher_momentum_schedule(self.total_steps, self.base_momentum, self.final_momentum)

    def config(self, in_channels: int, feature_dim: int) -> dict[str, Any]:
        """The checkpoint ``config`` (:func:`m2t_core.checkpoint.model_config`) of this model.

        Args:
            in_channels: Channels of the input images.
            feature_dim: Width of the backbone's features.

        Returns:
            A JSON-ready dict.
        """
        backbone = self.student.backbone
        described = (
            backbone_description(in_channels, backbone.width)
            if isinstance(backbone, ReferenceNet)
            else {"architecture": type(backbone).__name__}
        )
        norm = self.teacher.norm
        return model_config(
            framework="flax-linen",
            backbone=described,
            feature_dim=feature_dim,
            hidden_dim=self.student.hidden_dim,
            projection_dim=self.student.projection_dim,
            total_steps=self.total_steps,
            base_momentum=self.base_momentum,
            final_momentum=self.final_momentum,
            alpha_start=norm.alpha_start,
            alpha_end=norm.alpha_end,
            correction=norm.correction,
        )

    def init_state(self, key: jax.Array, sample: jax.Array, tx: optax.GradientTransformation) -> M2TState:
        """Initial state: fresh student, teacher = copy of the student's backbone and projector.

        Args:
            key: PRNG key of the initializers.
            sample: One view's batch (only its shape and dtype matter).
            tx: The optimizer of the student.

        Returns:
            The state at step 0.

        Raises:
            ValueError: the teacher's parameter tree differs from the student's backbone + projector.
        """
        student_vars = dict(_init_variables(self.student, key, sample))
        teacher_vars = dict(_init_variables(self.teacher, key, jnp.concatenate([sample, sample])))
        shared = _shared(student_vars["params"])
        _check_mirror(shared, teacher_vars["params"])
        teacher_vars["params"] = jax.tree.map(jnp.array, shared)  # copies, not aliases
        student_vars.setdefault("batch_stats", {})
        teacher_vars.setdefault("batch_stats", {})
        feature_dim = int(shared["projector"]["linear1"]["kernel"].shape[0])
        config = self.config(int(sample.shape[-1]), feature_dim)
        return M2TState(
            student=student_vars,
            teacher=teacher_vars,
            opt_state=tx.init(student_vars["params"]),
            step=jnp.zeros((), jnp.int32),
            config=json.dumps(config, sort_keys=True),
        )

    def targets(
        self, state: M2TState, view1: jax.Array, view2: jax.Array
    ) -> tuple[jax.Array, jax.Array, Any]:
        """Teacher EMA with ``m_k`` and one teacher forward of both views (pure: nothing is stored).

        Steps 1–3 of the train step: what the teacher computes at this step.

        Args:
            state: The current state.
            view1: First view.
            view2: Second view, same shape.

        Returns:
            ``(z1, z2, teacher_variables)``: projections with stopped gradients, and the teacher's
            variables after the EMA and the commit.

        Raises:
            ValueError: the views' shapes differ.
        """
        if view1.shape != view2.shape:
            raise ValueError(f"view1 and view2 must have the same shape, got {view1.shape} and {view2.shape}")
        momentum = self.momentum_schedule(state.step)
        params = mf.ema_update(state.teacher["params"], _shared(state.student["params"]), momentum)
        z, updates = self.teacher.apply(
            {"params": params, "batch_stats": state.teacher["batch_stats"]},
            jnp.concatenate([view1, view2]),
            train=True,
            mutable=["batch_stats"],
        )
        z = jax.lax.stop_gradient(z)
        b = view1.shape[0]
        return z[:b], z[b:], {"params": params, "batch_stats": updates.get("batch_stats", {})}

    def make_train_step(
        self, tx: optax.GradientTransformation
    ) -> Callable[[M2TState, jax.Array, jax.Array], tuple[M2TState, jax.Array]]:
        """The jit-compiled train step ``step(state, view1, view2) -> (state, loss)``.

        Args:
            tx: The optimizer the state was initialised with.

        Returns:
            A pure, compiled function.
        """

        def step(state: M2TState, view1: jax.Array, view2: jax.Array) -> tuple[M2TState, jax.Array]:
            z1, z2, teacher_vars = self.targets(state, view1, view2)

            def loss_fn(params: Any) -> tuple[jax.Array, Any]:
                # The student runs per view: each view is normalised with its own batch moments.
                stats = state.student["batch_stats"]
                p1, upd = self.student.apply(
                    {"params": params, "batch_stats": stats}, view1, train=True, mutable=["batch_stats"]
                )
                stats = upd.get("batch_stats", stats)
                p2, upd = self.student.apply(
                    {"params": params, "batch_stats": stats}, view2, train=True, mutable=["batch_stats"]
                )
                return mf.symmetric_loss(p1, p2, z1, z2), upd.get("batch_stats", stats)

            params = state.student["params"]
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, state.opt_state, params)
            student = {"params": optax.apply_updates(params, updates), "batch_stats": stats}
            new = state.replace(
                student=student, teacher=teacher_vars, opt_state=opt_state, step=state.step + 1
            )
            return new, loss

        return jax.jit(step)

    def features(self, state: M2TState, x: jax.Array) -> jax.Array:
        """Evaluation features of ``x``: the teacher backbone with its stored statistics.

        Args:
            state: The current state.
            x: A batch (any size).

        Returns:
            ``[N, features]``.
        """
        return self.teacher.apply(state.teacher, x, method=Teacher.features)
