"""Pretrain a small ResNet with Momentum² Teacher in Flax NNX (jit-compiled step), then evaluate the teacher.

The same run as ``torch_m2t.py`` — same flags, data, views, schedules and outputs — on JAX: the
model is ``m2t_flax.nnx.M2Teacher`` and each step is the adapter's compiled
``make_train_step``. On a GPU the backbone computes in bfloat16 (``--precision``); parameters,
momentum statistics and the loss stay float32.

Usage::

    python examples/flax_m2t.py                          # digits, CPU or GPU
    python examples/flax_m2t.py --resume                 # continue runs/flax after Ctrl-C

Output in ``--out`` (default ``runs/flax``): ``checkpoint.json`` (points to the latest orbax
checkpoint folder ``state-*``, written with ``m2t_flax.checkpoint``), ``metrics.json`` and
``curves.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from epoch_loop import ExampleTrainer
from example_flags import build_parser, check_args
from flax import nnx

from m2t_core.datasets import Dataset
from m2t_flax.checkpoint import restore_checkpoint, save_checkpoint
from m2t_flax.nnx import M2Teacher, make_train_step

__all__ = ["BasicBlock", "FlaxTrainer", "SmallResNet", "learning_rate_schedule", "main", "parse_args"]


def _conv(cin: int, cout: int, kernel: int, stride: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
    pad = kernel // 2  # explicit padding, as torch_m2t.py's convolutions
    return nnx.Conv(
        cin,
        cout,
        (kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        rngs=rngs,
    )


def _bn(channels: int, dtype: Any, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # momentum 0.9 = torch's default 0.1 on the new batch; two-pass variance as DESIGN §5 asks.
    return nnx.BatchNorm(
        channels, momentum=0.9, epsilon=1e-5, use_fast_variance=False, dtype=dtype, rngs=rngs
    )


class BasicBlock(nnx.Module):
    """ResNet basic block (channels last): two 3×3 convolutions with BatchNorm, plus a shortcut.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution.
        dtype: Computation dtype (``None``: float32; ``jnp.bfloat16`` for mixed precision).
        rngs: Random streams for the initialisers.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, *, dtype: Any, rngs: nnx.Rngs
    ) -> None:
        """Build the block (arguments documented on the class)."""
        self.conv1 = _conv(in_channels, out_channels, 3, stride, dtype, rngs)
        self.bn1 = _bn(out_channels, dtype, rngs)
        self.conv2 = _conv(out_channels, out_channels, 3, 1, dtype, rngs)
        self.bn2 = _bn(out_channels, dtype, rngs)
        self.project = stride != 1 or in_channels != out_channels
        if self.project:
            self.short_conv = _conv(in_channels, out_channels, 1, stride, dtype, rngs)
            self.short_bn = _bn(out_channels, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        y = nnx.relu(self.bn1(self.conv1(x)))
        shortcut = self.short_bn(self.short_conv(x)) if self.project else x
        return nnx.relu(self.bn2(self.conv2(y)) + shortcut)


class SmallResNet(nnx.Module):
    """The ResNet of ``torch_m2t.py`` in NNX, channels last: 3×3 stem, stages of ``w, 2w, 4w`` channels.

    Args:
        in_channels: Image channels.
        width: Channels of the first stage (features: ``4 * width``).
        dtype: Computation dtype.
        rngs: Random streams.
    """

    def __init__(self, in_channels: int, width: int, *, dtype: Any = None, rngs: nnx.Rngs) -> None:
        """Build the network (arguments documented on the class)."""
        self.stem_conv = _conv(in_channels, width, 3, 1, dtype, rngs)
        self.stem_bn = _bn(width, dtype, rngs)
        blocks, channels = [], width
        for stage, stride in enumerate((1, 2, 2)):
            blocks.append(BasicBlock(channels, width * 2**stage, stride, dtype=dtype, rngs=rngs))
            channels = width * 2**stage
        self.blocks = nnx.Sequential(*blocks)
        #: Width of the features (read by ``M2Teacher``).
        self.feature_dim = channels

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[N, H, W, C]`` images to ``[N, feature_dim]`` float32 features (global average pooling)."""
        x = self.blocks(nnx.relu(self.stem_bn(self.stem_conv(x))))
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """``epoch_loop.learning_rate`` as an optax schedule of the update count (traceable).

    Args:
        peak: Learning rate after the warm-up.
        total_steps: Steps of the run.
        warmup_steps: Steps of the linear warm-up.

    Returns:
        ``count -> learning rate``.
    """
    span = max(total_steps - warmup_steps, 1)

    def schedule(count: jax.Array) -> jax.Array:
        count = jnp.asarray(count, jnp.float32)
        warm = peak * (count + 1) / max(warmup_steps, 1)
        progress = jnp.clip((count - warmup_steps) / span, 0.0, 1.0)
        return jnp.where(count < warmup_steps, warm, 0.5 * peak * (1 + jnp.cos(jnp.pi * progress)))

    return schedule


def _decay_mask(params: Any) -> Any:
    # No weight decay on BatchNorm parameters and biases (BYOL's LARS setting, as torch_m2t.py).
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _all_finite(student: nnx.Module) -> jax.Array:
    leaves = jax.tree.leaves(nnx.state(student, nnx.Param))
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The shared flags (``example_flags``).

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The checked flags.
    """
    parser = build_parser("flax", __doc__.split("\n\n")[0])
    return check_args(parser, parser.parse_args(argv))


class FlaxTrainer(ExampleTrainer):
    """:class:`ExampleTrainer` hooks for Flax NNX and ``m2t_flax.nnx.M2Teacher``.

    Args:
        args: Flags from :func:`parse_args`.
    """

    framework = "flax"
    checkpoint_name = "checkpoint.json"

    def setup(self, data: Dataset, steps_per_epoch: int) -> None:
        """Pick the platform, build model, optimizer and the compiled step.

        Args:
            data: The data set.
            steps_per_epoch: Batches per epoch.
        """
        args = self.args
        if args.device == "cpu":
            # Place every array on the CPU even where a GPU backend is present.
            jax.config.update("jax_default_device", jax.devices("cpu")[0])
        platform = "cpu" if args.device == "cpu" else jax.default_backend()
        if args.device == "cuda" and platform != "gpu":
            prog = Path(sys.argv[0]).name
            print(
                f"{prog}: error: --device cuda, but JAX's backend is {platform!r} (no CUDA)", file=sys.stderr
            )
            raise SystemExit(2)
        self.platform = platform
        precision = args.precision if args.precision != "auto" else ("bf16" if platform == "gpu" else "fp32")
        self.dtype = jnp.bfloat16 if precision == "bf16" else None

        rngs = nnx.Rngs(args.seed)
        backbone = SmallResNet(data.image_shape[2], args.width, dtype=self.dtype, rngs=rngs)
        total = steps_per_epoch * args.epochs
        self.model = M2Teacher(
            backbone,
            feature_dim=backbone.feature_dim,
            hidden_dim=args.hidden_dim,
            projection_dim=args.projection_dim,
            total_steps=total,
            base_momentum=args.base_momentum,
            rngs=rngs,
        )
        warmup = round(args.warmup_epochs * steps_per_epoch)
        tx = optax.chain(
            optax.add_decayed_weights(args.weight_decay, mask=_decay_mask),
            optax.sgd(learning_rate_schedule(args.lr, total, warmup), momentum=0.9),
        )
        self.optimizer = nnx.Optimizer(self.model.student, tx, wrt=nnx.Param)
        self.step_fn = make_train_step(self.model, self.optimizer)
        self.features_fn = nnx.jit(lambda model, x: model.features(x))
        self.finite_fn = nnx.jit(_all_finite)
        self._state_dir: Path | None = None

    def on_accelerator(self) -> bool:
        """True on a GPU backend."""
        return self.platform == "gpu"

    def device_summary(self) -> str:
        """Backend, device and precision."""
        dev = jax.devices("cpu")[0] if self.platform == "cpu" else jax.devices()[0]
        return f"{self.platform} ({dev.device_kind}), {'bf16' if self.dtype is not None else 'fp32'}, jit"

    def train_step(self, view1: np.ndarray, view2: np.ndarray, step: int) -> jax.Array:
        """One compiled M2T step (the learning rate comes from the optimizer's own step count).

        Args:
            view1: ``[B, H, W, C]`` float32.
            view2: Same shape.
            step: Global step (unused: the optax schedule reads the optimizer's count).

        Returns:
            The loss (a device array; not waited for).
        """
        return self.step_fn(jnp.asarray(view1), jnp.asarray(view2))

    def losses_to_floats(self, losses: list[jax.Array]) -> list[float]:
        """One device-to-host transfer for all pending losses."""
        return [float(v) for v in np.asarray(jax.device_get(jnp.stack(losses)), np.float32)]

    def weights_finite(self) -> bool:
        """One compiled reduction over the student's parameters."""
        return bool(self.finite_fn(self.model.student))

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Teacher-backbone features in evaluation mode (``M2Teacher.features``)."""
        return np.asarray(self.features_fn(self.model, jnp.asarray(images)), np.float32)

    def save_checkpoint(self, path: Path, meta: dict[str, Any]) -> None:
        """Write a new orbax folder ``state-*`` next to ``path``, then the pointer JSON to ``path``.

        The pointer (``checkpoint.json``) is renamed into place only after the folder is complete,
        so it always names a whole checkpoint; older folders are removed afterwards
        (:meth:`after_save`).
        """
        name = f"state-{uuid.uuid4().hex[:12]}"
        save_checkpoint(self.out / name, self.model, self.optimizer)
        path.write_text(json.dumps({"state": name, "meta": meta}), encoding="utf-8")
        self._state_dir = self.out / name

    def after_save(self) -> None:
        """Remove the orbax folders the pointer no longer names."""
        for old in self.out.glob("state-*"):
            if old != self._state_dir:
                shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        """Restore model and optimizer from the folder the pointer names; return the metadata."""
        pointer = json.loads(path.read_text(encoding="utf-8"))
        self._state_dir = self.out / pointer["state"]
        restore_checkpoint(self._state_dir, self.model, self.optimizer)
        return pointer["meta"]

    def peak_memory_bytes(self) -> int | None:
        """``peak_bytes_in_use`` of the first device, where the backend reports it (GPU)."""
        stats = jax.devices()[0].memory_stats()
        return None if not stats else stats.get("peak_bytes_in_use")


def main(argv: list[str] | None = None) -> int:
    """Parse flags, train, evaluate; returns the exit status.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status (see ``ExampleTrainer.run``).
    """
    return FlaxTrainer(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
