"""``M2Teacher``: a Momentum² Teacher model trained by ``compile()`` + ``fit()`` on any Keras backend.

The whole training step of DESIGN §2 is expressed in ``call`` and ``compute_loss`` with
``keras.ops``; Keras's own ``train_step`` (TensorFlow, JAX or PyTorch) then differentiates the loss
and applies the optimizer to the student's trainable weights. No backend-specific code runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import ops

from m2t_keras import ops as m2t_ops
from m2t_keras._tensors import int_dtype, static_shape
from m2t_keras.convert import _check_graph_model, convert_momentum_bn, parameter_pairs
from m2t_keras.losses import SymmetricRegressionLoss
from m2t_keras.metrics import CurrentValue

__all__ = ["M2Teacher", "projection_head"]


def projection_head(
    input_dim: int,
    hidden_dim: int,
    output_dim: int,
    *,
    epsilon: float = 1e-5,
    dtype: Any = None,
    name: str | None = None,
) -> keras.Sequential:
    """The BYOL projector/predictor MLP: ``Dense → BatchNormalization → ReLU → Dense``.

    Args:
        input_dim: Input features.
        hidden_dim: Width of the hidden layer.
        output_dim: Output features.
        epsilon: BatchNormalization epsilon (1e-5, as in the PyTorch original).
        dtype: Dtype policy of the layers (``None``: the global policy).
        name: Model name.

    Returns:
        A built ``keras.Sequential`` taking ``[B, input_dim]``.

    Raises:
        ValueError: a size is not a positive int.
    """
    for what, value in (("input_dim", input_dim), ("hidden_dim", hidden_dim), ("output_dim", output_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive int, got {value!r}")
    return keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Dense(hidden_dim, dtype=dtype, name="dense_hidden"),
            keras.layers.BatchNormalization(epsilon=epsilon, dtype=dtype, name="bn"),
            keras.layers.Activation("relu", dtype=dtype, name="relu"),
            keras.layers.Dense(output_dim, dtype=dtype, name="dense_out"),
        ],
        name=name,
    )


@keras.saving.register_keras_serializable(package="m2t_keras")
class M2Teacher(keras.Model):
    r"""Momentum² Teacher around a Keras backbone, trained with ``compile(optimizer=...)`` + ``fit``.

    Student: ``backbone → projector → predictor`` (projector and predictor are
    :func:`projection_head` MLPs). Teacher: a copy of ``backbone → projector`` with every
    BatchNormalization replaced by :class:`~m2t_keras.MomentumBatchNormalization` (two views),
    frozen for the optimizer and moved by the EMA. One training step (``fit`` calls ``call`` with
    ``training=True``, then ``compute_loss``) does, in this order:

    1. read the step ``k``; ``m_k`` = cosine(``base_momentum`` → ``final_momentum``);
    2. teacher ← ``m_k``·teacher + (1 − ``m_k``)·student, over every shared parameter (not the
       teacher's statistics);
    3. ``z = teacher(concat(view1, view2))`` — one forward, per-view momentum statistics, commit;
       ``k ← k + 1``;
    4. student forward per view (its BatchNormalization sees each view's own batch);
    5. loss ``mean_b[(2 − 2⟨p1, z2⟩) + (2 − 2⟨p2, z1⟩)]`` on L2-normalised vectors; Keras
       differentiates it and updates the student's trainable weights only.

    Data: ``x`` is the pair of views, so feed ``fit`` a dataset whose elements are
    ``((view1, view2),)`` or ``{"view1": ..., "view2": ...}`` (a dataset of plain ``(view1, view2)``
    tuples is read by Keras as ``(x, y)``), or NumPy arrays as ``fit(x=(views1, views2))``.
    ``call`` returns ``{"p1", "p2", "z1", "z2"}`` (targets with stopped gradients); in evaluation
    mode (``evaluate``, ``predict``) nothing moves and the teacher uses its stored statistics.

    Logged by ``fit``: ``loss``, ``teacher_momentum`` (``m_k``) and ``stats_momentum`` (``α_k``)
    of the latest step. The schedules and the counter are variables, so ``jit_compile=True`` and
    ``steps_per_execution > 1`` work where the backend supports them (Keras's PyTorch trainer runs
    one step per call), and nothing syncs to the host per batch.

    Precision: the wrapper itself runs in the backbone's variable dtype (float32 under
    ``mixed_bfloat16``), so the EMA and the loss are float32 while the backbone and heads compute
    in their policy's dtype; momentum statistics are float32 always.

    Saving: ``model.save("m.keras")`` / ``keras.models.load_model("m.keras")`` round-trip the
    student, teacher, statistics, counters and optimizer state (no ``custom_objects`` needed when
    the backbone uses built-in layers), and ``fit`` continues where it stopped.

    Args:
        backbone: A Functional or Sequential model mapping one input to features ``[B, D]``. It
            becomes the student backbone (trained in place).
        feature_dim: ``D``; inferred from ``backbone.output_shape``, checked when given.
        hidden_dim: Hidden width of projector and predictor.
        projection_dim: Output width of projector and predictor.
        total_steps: Number of training steps ``K`` for both cosine schedules; ``None`` only when
            both are constant.
        base_momentum: Teacher EMA momentum ``m_0``.
        final_momentum: ``m_K``.
        alpha_start: Statistics history weight ``α_0``.
        alpha_end: ``α_K``.
        correction: Variance estimator of the momentum statistics.
        **kwargs: ``keras.Model`` arguments (``name``).

    Attributes:
        student_backbone: The backbone passed in.
        student_projector: The student's projector.
        predictor: The student's predictor.
        teacher_backbone: The teacher's backbone (momentum BN, frozen); call it with
            ``training=False`` for evaluation features.
        teacher_projector: The teacher's projector.
        step: Integer variable, the number of training steps taken.

    Raises:
        TypeError: ``backbone`` is not a Functional/Sequential model.
        ValueError: a backbone with several inputs or non-``[B, D]`` output, a ``feature_dim``
            that disagrees with it, non-positive sizes, or bad schedule arguments.

    References:
        Li, Liu, Sun. *Momentum² Teacher.* arXiv:2101.07525, 2021.
        Grill et al. *Bootstrap Your Own Latent.* NeurIPS 2020.
    """

    def __init__(
        self,
        backbone: keras.Model,
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
        **kwargs: Any,
    ) -> None:
        """Build student heads and the teacher copy; arguments as in the class docstring."""
        _check_graph_model(backbone, "backbone")
        # The wrapper computes in the backbone's *variable* dtype: under a mixed policy, reading a
        # variable inside an autocast scope would hand the EMA half-precision weights.
        kwargs["dtype"] = backbone.dtype_policy.variable_dtype
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        if len(backbone.inputs) != 1:
            raise ValueError(f"backbone must take one input, got {len(backbone.inputs)} inputs")
        out_shape = tuple(backbone.outputs[0].shape) if len(backbone.outputs) == 1 else None
        if out_shape is None or len(out_shape) != 2 or out_shape[1] is None:
            shapes = [tuple(o.shape) for o in backbone.outputs]
            raise ValueError(
                f"backbone must output one feature tensor [batch, features], got outputs of shapes "
                f"{shapes}; end it with e.g. keras.layers.GlobalAveragePooling2D()"
            )
        if feature_dim is not None and feature_dim != out_shape[1]:
            raise ValueError(f"feature_dim={feature_dim} but the backbone outputs {out_shape[1]} features")
        self.feature_dim = int(out_shape[1])
        self.hidden_dim = hidden_dim
        self.projection_dim = projection_dim
        self.correction = correction
        self.teacher_momentum = m2t_ops.teacher_momentum_schedule(total_steps, base_momentum, final_momentum)
        self.stats_momentum = m2t_ops.stats_momentum_schedule(total_steps, alpha_start, alpha_end)
        self.total_steps = total_steps

        head_dtype = backbone.dtype_policy
        self.student_backbone = backbone
        self.student_projector = projection_head(
            self.feature_dim, hidden_dim, projection_dim, dtype=head_dtype, name="student_projector"
        )
        self.predictor = projection_head(
            projection_dim, hidden_dim, projection_dim, dtype=head_dtype, name="predictor"
        )
        self.teacher_backbone = self._make_teacher(self.student_backbone)
        self.teacher_projector = self._make_teacher(self.student_projector)
        # Clones keep their source's name; rename them so summaries tell the two apart.
        self.teacher_backbone.name = f"teacher_{backbone.name}"
        self.teacher_projector.name = "teacher_projector"
        for teacher in (self.teacher_backbone, self.teacher_projector):
            teacher.trainable = False

        self.step = self.add_weight(
            name="step",
            shape=(),
            dtype=int_dtype(),
            initializer="zeros",
            trainable=False,
            autocast=False,
            aggregation="only_first_replica",
        )
        self.loss_fn = SymmetricRegressionLoss()
        self.teacher_momentum_tracker = CurrentValue(name="teacher_momentum")
        self.stats_momentum_tracker = CurrentValue(name="stats_momentum")
        self.built = True

    def _make_teacher(self, student: keras.Model) -> keras.Model:
        """The teacher copy of ``student`` (a hook: the benchmark's plain-BN baseline overrides it)."""
        return convert_momentum_bn(
            student,
            num_views=2,
            alpha_start=self.stats_momentum.start,
            alpha_end=self.stats_momentum.end,
            total_steps=self.stats_momentum.total_steps,
            correction=self.correction,
        )

    def ema_pairs(self) -> list[tuple[Any, Any]]:
        """``(teacher_variable, student_variable)`` for every parameter the EMA moves.

        Returns:
            The backbone's and projector's pairs (:func:`~m2t_keras.convert.parameter_pairs`).
        """
        pairs = self.__dict__.get("_m2t_ema_pairs")
        if pairs is None:
            pairs = parameter_pairs(self.student_backbone, self.teacher_backbone)
            pairs += parameter_pairs(self.student_projector, self.teacher_projector)
            # Stored around Keras's attribute tracking: a tracked list would register every
            # variable a second time as a weight of this model.
            object.__setattr__(self, "_m2t_ema_pairs", pairs)
        return pairs

    @staticmethod
    def _views(inputs: Any) -> tuple[Any, Any]:
        if isinstance(inputs, Mapping) and set(inputs) == {"view1", "view2"}:
            return inputs["view1"], inputs["view2"]
        if isinstance(inputs, Sequence) and not isinstance(inputs, str) and len(inputs) == 2:
            return inputs[0], inputs[1]
        got = sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__
        raise TypeError(
            "M2Teacher takes x = (view1, view2) or {'view1': ..., 'view2': ...}, got "
            f"{got}. A dataset of plain (view1, view2) tuples is read by Keras as (x, y): map it "
            "with `lambda v1, v2: ((v1, v2),)`"
        )

    def call(self, inputs: Any, training: bool | None = None) -> dict[str, Any]:
        """One M2T forward: in training mode EMA, teacher forward with commit, student per view.

        Args:
            inputs: ``(view1, view2)`` or ``{"view1": ..., "view2": ...}``, each ``[B, ...]``.
            training: ``True`` runs the training step's forward (moves teacher and statistics);
                otherwise nothing changes and the teacher uses its stored statistics.

        Returns:
            ``{"p1", "p2"}`` student predictions and ``{"z1", "z2"}`` teacher projections (no
            gradient), each ``[B, projection_dim]``.

        Raises:
            TypeError: ``inputs`` is not a pair of views.
            ValueError: the views' shapes differ.
        """
        v1, v2 = self._views(inputs)
        if static_shape(v1) != static_shape(v2):
            raise ValueError(
                f"view1 and view2 must have the same shape, got {static_shape(v1)} and {static_shape(v2)}"
            )
        training = bool(training)
        if training:
            momentum = self.teacher_momentum(self.step)
            for teacher_var, student_var in self.ema_pairs():
                teacher_var.assign(m2t_ops.ema_mix(teacher_var.value, student_var.value, momentum))
        teacher_features = self.teacher_backbone(ops.concatenate([v1, v2], axis=0), training=training)
        z = self.teacher_projector(teacher_features, training=training)
        if training:
            self.step.assign(self.step + ops.cast(1, self.step.dtype))
        z1, z2 = ops.split(ops.stop_gradient(z), 2, axis=0)
        # The student sees each view on its own, so its BatchNormalization uses that view's batch.
        p1, p2 = self._student(v1, training), self._student(v2, training)
        return {"p1": p1, "p2": p2, "z1": z1, "z2": z2}

    def _student(self, view: Any, training: bool) -> Any:
        features = self.student_backbone(view, training=training)
        return self.predictor(self.student_projector(features, training=training), training=training)

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        """Symmetric regression loss (+ any regularization losses); logs the scheduled momenta.

        Args:
            x: The views (unused).
            y: Must be ``None``: M2T trains on unlabelled pairs.
            y_pred: The output of :meth:`call`.
            sample_weight: Optional per-sample weights ``[B]``.
            training: Whether this is a training step (then the momentum metrics are updated).

        Returns:
            Scalar loss.

        Raises:
            ValueError: ``y`` is given.
        """
        if y is not None:
            raise ValueError(
                "M2Teacher trains on unlabelled view pairs, but the data also holds targets y; "
                "feed x = (view1, view2) only, e.g. a dataset of ((view1, view2),) elements"
            )
        loss = self.loss_fn((y_pred["z1"], y_pred["z2"]), (y_pred["p1"], y_pred["p2"]), sample_weight)
        if self.losses:  # regularization / add_loss terms, aggregated the way Keras does
            loss = loss + super().compute_loss(x=x, y=None, y_pred=None, training=training)
        if training:
            # The step has already advanced in call(); the momenta of this step were at k − 1.
            k = self.step - ops.cast(1, self.step.dtype)
            self.teacher_momentum_tracker.update_state(self.teacher_momentum(k))
            self.stats_momentum_tracker.update_state(self.stats_momentum(k))
        return loss

    def compile(
        self, optimizer: Any = "rmsprop", loss: Any = None, metrics: Any = None, **kwargs: Any
    ) -> None:
        """``keras.Model.compile`` without ``loss``/``metrics``: M2T supplies its own loss.

        Args:
            optimizer: Optimizer (name or instance) for the student's trainable weights.
            loss: Must be ``None``.
            metrics: Must be ``None``.
            **kwargs: Other ``keras.Model.compile`` arguments (``jit_compile``,
                ``steps_per_execution``, ``run_eagerly``, ...). ``jit_compile=True`` is XLA on
                TensorFlow and JAX and ``torch.compile`` (inductor) on PyTorch, whose trainer
                takes ``steps_per_execution=1`` only.

        Raises:
            ValueError: ``loss`` or ``metrics`` is given.
        """
        if loss is not None or metrics is not None:
            raise ValueError(
                "M2Teacher computes its own loss and logs loss, teacher_momentum and "
                f"stats_momentum; compile it with an optimizer only (got loss={loss!r}, metrics={metrics!r})"
            )
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """Compile from a saved compile config (what ``load_model`` calls), optimizer built.

        Keras skips this step for models that override ``compile``; M2T's override only rejects a
        ``loss``, so the saved configuration is valid here and the optimizer state can be restored.

        Args:
            config: The output of ``get_compile_config()``.
        """
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        self.optimizer.build(self.trainable_variables)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (the backbone serialized), for ``.keras`` files."""
        config = super().get_config()
        config.pop("dtype", None)  # derived from the backbone's policy
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.student_backbone),
                "hidden_dim": self.hidden_dim,
                "projection_dim": self.projection_dim,
                "total_steps": self.total_steps,
                "base_momentum": self.teacher_momentum.start,
                "final_momentum": self.teacher_momentum.end,
                "alpha_start": self.stats_momentum.start,
                "alpha_end": self.stats_momentum.end,
                "correction": self.correction,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> M2Teacher:
        """Rebuild from :meth:`get_config` (weights are restored by the loader)."""
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
