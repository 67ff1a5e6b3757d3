"""The Keras parts of ``keras_m2t.py``: backbone, learning-rate schedule, model and ``fit``-driven trainer.

Kept apart from the script because Keras must be imported *after* the flags are read: the backend
(``KERAS_BACKEND``) and ``--device cpu`` (which hides the GPUs with ``CUDA_VISIBLE_DEVICES``) take
effect only before the first import.
"""

from __future__ import annotations

import json
import math
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
from epoch_loop import ExampleTrainer, RunState
from keras import layers, ops
from view_batches import prefetched_views

from m2t_core.datasets import Dataset
from m2t_keras import M2Teacher
from m2t_keras.metrics import CurrentValue

__all__ = ["KerasTrainer", "LoggedM2Teacher", "WarmupCosine", "gpu_available", "small_resnet"]

META_ENTRY = "example_meta.json"


def _conv_bn(x: Any, channels: int, kernel: int, stride: int, name: str) -> Any:
    x = layers.Conv2D(channels, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(
        x
    )
    # momentum 0.9 = torch's default 0.1 on the new batch; epsilon as torch's.
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)


def small_resnet(image_shape: tuple[int, int, int], width: int) -> keras.Model:
    """The ResNet of ``torch_m2t.py`` as a Keras functional model (channels last).

    3×3 stem, one basic block per stage with ``width``, ``2·width``, ``4·width`` channels at strides
    1, 2, 2, global average pooling to ``4·width`` features.

    Args:
        image_shape: ``(H, W, C)``.
        width: Channels of the first stage.

    Returns:
        A functional model ``[B, H, W, C] -> [B, 4·width]``.
    """
    inputs = keras.Input(image_shape, name="images")
    x = layers.ReLU(name="stem_relu")(_conv_bn(inputs, width, 3, 1, "stem"))
    channels = width
    for stage, stride in enumerate((1, 2, 2)):
        out = width * 2**stage
        name = f"stage{stage + 1}"
        y = layers.ReLU(name=f"{name}_relu1")(_conv_bn(x, out, 3, stride, f"{name}_a"))
        y = _conv_bn(y, out, 3, 1, f"{name}_b")
        shortcut = x if stride == 1 and channels == out else _conv_bn(x, out, 1, stride, f"{name}_short")
        x = layers.ReLU(name=f"{name}_relu2")(layers.Add(name=f"{name}_add")([y, shortcut]))
        channels = out
    features = layers.GlobalAveragePooling2D(name="pool", dtype="float32")(x)
    return keras.Model(inputs, features, name="small_resnet")


@keras.saving.register_keras_serializable(package="m2t_examples")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """``epoch_loop.learning_rate`` as a Keras schedule: linear warm-up, then cosine decay to 0.

    Args:
        peak: Learning rate after the warm-up.
        total_steps: Steps of the run.
        warmup_steps: Steps of the warm-up.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int) -> None:
        """Keep the arguments (documented on the class)."""
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: Any) -> Any:
        """Learning rate at optimizer step ``step`` (0-based, a tensor)."""
        step = ops.cast(step, "float32")
        warm = self.peak * (step + 1.0) / max(self.warmup_steps, 1)
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        cosine = 0.5 * self.peak * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}


@keras.saving.register_keras_serializable(package="m2t_examples")
class LoggedM2Teacher(M2Teacher):
    """``m2t_keras.M2Teacher`` that also logs each step's own loss as ``step_loss``.

    ``fit`` logs ``loss`` as the running mean of the epoch so far; the example adds up per-step
    losses itself (so that an epoch resumed half-way reports the same mean as an uninterrupted one)
    and checks every one for NaN.

    Args:
        backbone: As ``M2Teacher``.
        **kwargs: As ``M2Teacher``.
    """

    def __init__(self, backbone: keras.Model, **kwargs: Any) -> None:
        """Build the model and the extra metric (arguments documented on the class)."""
        super().__init__(backbone, **kwargs)
        self.step_loss_tracker = CurrentValue(name="step_loss")

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        """``M2Teacher.compute_loss``, remembered by the ``step_loss`` metric."""
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        self.step_loss_tracker.update_state(loss)
        return loss


def gpu_available() -> bool:
    """Whether the current Keras backend sees a GPU."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


class _FitCallback(keras.callbacks.Callback):
    """Feeds ``fit``'s batches and epochs to the shared loop's bookkeeping (``ExampleTrainer``)."""

    def __init__(self, trainer: KerasTrainer, state: RunState) -> None:
        super().__init__()
        self.trainer = trainer
        self.state = state
        self.pending: list[tuple[int, Any]] = []
        self.bar: Any = None

    def _sync(self) -> None:
        # Keras's JAX trainer keeps the state outside the variables during an epoch; reading the
        # callback's `model` property copies it back (a no-op on the other backends). Needed before
        # the weight check, the kNN evaluation and the checkpoint.
        _ = self.model

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.bar = self.trainer.progress_bar(self.state)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        trainer, state = self.trainer, self.state
        position = state.position
        gstep = position.epoch * trainer.steps_per_epoch + position.step + len(self.pending)
        self.pending.append((gstep, (logs or {})["step_loss"]))
        trainer.step_taken(state)
        if len(self.pending) >= trainer.args.log_every or trainer.timer_due(state):
            self._sync()
            trainer.record_losses(state, self.pending, self.bar)
        if trainer.timer_due(state):
            state.timer.start()
        if trainer.stop_reason(state) is not None:
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        # fit calls this after a stop inside the epoch too; only a whole epoch ends one.
        self._sync()
        try:
            self.trainer.record_losses(self.state, self.pending, self.bar)
        finally:
            self.bar.close()
        if self.state.position.step == self.trainer.steps_per_epoch:
            self.trainer.end_epoch(self.state)


class KerasTrainer(ExampleTrainer):
    """:class:`ExampleTrainer` driven by ``model.fit`` with a callback (kNN, checkpoints, stops).

    Args:
        args: Flags from ``keras_m2t.parse_args``.
    """

    framework = "keras"
    checkpoint_name = "checkpoint.keras"

    def setup(self, data: Dataset, steps_per_epoch: int) -> None:
        """Seed, set the precision policy, build and compile the model.

        Args:
            data: The data set.
            steps_per_epoch: Batches per epoch.
        """
        args = self.args
        self.on_gpu = gpu_available()
        if args.device == "cuda" and not self.on_gpu:
            prog = Path(sys.argv[0]).name
            backend = keras.backend.backend()
            print(
                f"{prog}: error: --device cuda, but the Keras {backend} backend sees no GPU", file=sys.stderr
            )
            raise SystemExit(2)
        precision = args.precision if args.precision != "auto" else ("bf16" if self.on_gpu else "fp32")
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bf16" else "float32")
        self.precision = precision
        keras.utils.set_random_seed(args.seed)
        total = steps_per_epoch * args.epochs
        warmup = round(args.warmup_epochs * steps_per_epoch)
        self.model = LoggedM2Teacher(
            small_resnet(data.image_shape, args.width),
            hidden_dim=args.hidden_dim,
            projection_dim=args.projection_dim,
            total_steps=total,
            base_momentum=args.base_momentum,
        )
        optimizer = keras.optimizers.SGD(
            learning_rate=WarmupCosine(args.lr, total, warmup), momentum=0.9, weight_decay=args.weight_decay
        )
        # No weight decay on BatchNorm parameters and biases (BYOL's LARS setting).
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
        self.model.compile(optimizer=optimizer)

    def on_accelerator(self) -> bool:
        """True when the backend sees a GPU."""
        return self.on_gpu

    def device_summary(self) -> str:
        """Backend, device and precision policy."""
        where = "gpu" if self.on_gpu else "cpu"
        policy = "mixed_bfloat16" if self.precision == "bf16" else "float32"
        return f"keras {keras.__version__} on {keras.backend.backend()}, {where}, {policy}"

    def _batches(self, epoch: int, start_step: int) -> Iterator[tuple[tuple[np.ndarray, np.ndarray]]]:
        """``((view1, view2),)`` for every batch from ``(epoch, start_step)`` on, epoch after epoch."""
        assert self.config is not None
        spe = self.steps_per_epoch
        for e in range(epoch, self.args.epochs):
            views = prefetched_views(
                self.loader,
                e,
                self.config,
                start_step=start_step if e == epoch else 0,
                workers=self.loader_threads(),
            )
            for pair in views:
                v1 = pair.view1
                if self.args.debug_nan_at_step == e * spe + pair.batch.step:
                    v1 = v1 * np.float32(np.nan)
                yield ((v1, pair.view2),)

    def train(self, state: RunState) -> str:
        """``model.fit`` over the remaining epochs (first the rest of a half-done epoch, if any).

        Args:
            state: The run (updated by the callback).

        Returns:
            ``"complete"``, ``"paused"`` or ``"interrupted"``.
        """
        self.loader = state.loader
        callback = _FitCallback(self, state)
        spe, epochs = self.steps_per_epoch, self.args.epochs
        position = state.position
        if position.step > 0 and position.epoch < epochs:
            # fit runs whole epochs of steps_per_epoch batches: finish the resumed one on its own.
            self.model.fit(
                self._batches(position.epoch, position.step),
                steps_per_epoch=spe - position.step,
                initial_epoch=position.epoch,
                epochs=position.epoch + 1,
                callbacks=[callback],
                shuffle=False,  # the batches are already shuffled, by seed and epoch
                verbose=0,
            )
            if self.stop_reason(state) is not None or position.step != 0:
                return self.stop_reason(state) or "paused"
        if position.epoch < epochs and self.stop_reason(state) is None:
            self.model.fit(
                self._batches(position.epoch, 0),
                steps_per_epoch=spe,
                initial_epoch=position.epoch,
                epochs=epochs,
                callbacks=[callback],
                shuffle=False,  # the batches are already shuffled, by seed and epoch
                verbose=0,
            )
        reason = self.stop_reason(state)
        if position.epoch < epochs:
            return reason or "paused"
        return "complete"

    def train_step(self, view1: np.ndarray, view2: np.ndarray, step: int) -> Any:
        """Not used: ``fit`` runs the steps (see :meth:`train`)."""
        raise NotImplementedError("the Keras example trains with model.fit")

    def losses_to_floats(self, losses: list[Any]) -> list[float]:
        """The ``step_loss`` values ``fit`` logged."""
        return [float(ops.convert_to_numpy(v)) for v in losses]

    def weights_finite(self) -> bool:
        """Every trainable weight of the student is finite."""
        return all(np.isfinite(ops.convert_to_numpy(v)).all() for v in self.model.trainable_variables)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Teacher-backbone features in inference mode."""
        out = self.model.teacher_backbone(ops.convert_to_tensor(images), training=False)
        return np.asarray(ops.convert_to_numpy(out), np.float32)

    def save_checkpoint(self, path: Path, meta: dict[str, Any]) -> None:
        """``model.save`` (model, teacher, statistics, optimizer) plus the loop's metadata in the zip."""
        self.model.save(path)
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(META_ENTRY, json.dumps(meta))

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        """Load weights and optimizer state into the model built by :meth:`setup`; return the metadata.

        ``keras.models.load_model`` would rebuild the optimizer from its config, which does not hold
        the weight-decay exclusions set in :meth:`setup`: the resumed run would decay BatchNorm
        parameters. Loading into the objects built here keeps every setting.
        """
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read(META_ENTRY))
        self.model.optimizer.build(self.model.trainable_variables)  # create the slots to load into
        self.model.load_weights(path)
        return meta

    def peak_memory_bytes(self) -> int | None:
        """Peak GPU memory where the backend reports it."""
        if not self.on_gpu:
            return None
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
        if backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use")
        import torch

        return int(torch.cuda.max_memory_allocated())
