"""Pretrain a small ResNet with Momentum² Teacher in PyTorch, then evaluate the teacher.

Runs on the bundled digits by default (a few minutes on a laptop CPU); ``--data`` takes a CIFAR-10
python folder, an ImageFolder tree or an ``.npz`` file. On a CUDA machine it trains in bfloat16
autocast with channels_last tensors (and ``--compile`` for ``torch.compile``).

Usage::

    python examples/torch_m2t.py                         # digits, CPU or GPU
    python examples/torch_m2t.py --resume                # continue runs/torch after Ctrl-C
    python examples/torch_m2t.py --data ~/data/cifar-10-batches-py --epochs 200 --batch-size 256 --width 64

Output in ``--out`` (default ``runs/torch``): ``checkpoint.pt`` (every epoch), ``metrics.json`` and
``curves.png`` (loss and teacher kNN accuracy). The last lines printed are the teacher's kNN accuracy
before vs after training and the plot's path.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from epoch_loop import ExampleTrainer, learning_rate, usable_cores
from example_flags import build_parser, check_args
from torch import nn

from m2t_core.datasets import Dataset
from m2t_torch import M2Teacher
from m2t_torch.teacher import TEACHER_NORMS

__all__ = ["BasicBlock", "SmallResNet", "TorchTrainer", "default_threads", "main", "parse_args"]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convolutions with BatchNorm, plus a (projected) shortcut.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution (2 halves the resolution).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        """Build the block (arguments documented on the class)."""
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet for small images (8×8 digits, 32×32 CIFAR): 3×3 stem and three stages of basic blocks.

    Stages have ``width``, ``2·width`` and ``4·width`` channels at strides 1, 2, 2 (8×8 → 8, 4, 2;
    32×32 → 32, 16, 8), followed by global average pooling. There is no 7×7 stem or max-pool: on
    images this small they would discard most of the pixels.

    Args:
        in_channels: Image channels (1 for digits, 3 for RGB).
        width: Channels of the first stage.
        blocks: Basic blocks per stage.
    """

    def __init__(self, in_channels: int, width: int = 32, blocks: tuple[int, int, int] = (1, 1, 1)) -> None:
        """Build the network (arguments documented on the class)."""
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        channels = width
        for stage, (count, stride) in enumerate(zip(blocks, (1, 2, 2), strict=True)):
            out = width * 2**stage
            for b in range(count):
                layers.append(BasicBlock(channels, out, stride if b == 0 else 1))
                channels = out
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        #: Width of the features: ``4 * width``.
        self.feature_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` images to ``[N, feature_dim]`` features."""
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The shared flags plus ``--teacher-norm``, ``--compile`` and ``--channels-last``.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The checked flags.
    """
    parser = build_parser("torch", __doc__.split("\n\n")[0])
    g = parser.add_argument_group("PyTorch")
    g.add_argument(
        "--teacher-norm",
        choices=TEACHER_NORMS,
        default="momentum",
        help="teacher BatchNorm: momentum statistics (M2T), batch statistics (BYOL) or EMAN",
    )
    g.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the step"
    )
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: on for CUDA)",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: the usable cores minus one, for the view pipeline; at least 1)",
    )
    return check_args(parser, parser.parse_args(argv))


def default_threads() -> int:
    """Usable CPU cores minus one (at least one): the view pipeline runs on a thread of its own.

    On a small machine torch's default — one thread per core — makes every parallel kernel wait for
    a thread that the view pipeline (or any other process) has descheduled; on two shared cores that
    was ten times slower than one thread (see docs/examples.md).
    """
    return max(1, usable_cores() - 1)


class TorchTrainer(ExampleTrainer):
    """:class:`ExampleTrainer` hooks for PyTorch and ``m2t_torch.M2Teacher``.

    Args:
        args: Flags from :func:`parse_args`.
    """

    framework = "torch"
    checkpoint_name = "checkpoint.pt"

    def setup(self, data: Dataset, steps_per_epoch: int) -> None:
        """Pick device and precision, seed torch, build model, optimizer and (optionally) the compiled step.

        Args:
            data: The data set.
            steps_per_epoch: Batches per epoch.
        """
        args = self.args
        if args.device == "cuda" and not torch.cuda.is_available():
            prog = Path(sys.argv[0]).name
            print(f"{prog}: error: --device cuda, but CUDA is not available to torch", file=sys.stderr)
            raise SystemExit(2)
        use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if use_cuda else "cpu")
        precision = args.precision if args.precision != "auto" else ("bf16" if use_cuda else "fp32")
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.channels_last = use_cuda if args.channels_last is None else args.channels_last
        if use_cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.cuda.reset_peak_memory_stats()

        if not use_cuda or args.threads is not None:
            torch.set_num_threads(args.threads or default_threads())
        torch.manual_seed(args.seed)
        backbone = SmallResNet(data.image_shape[2], args.width)
        self.total_steps = steps_per_epoch * args.epochs
        self.warmup_steps = round(args.warmup_epochs * steps_per_epoch)
        model = M2Teacher(
            backbone,
            feature_dim=backbone.feature_dim,
            hidden_dim=args.hidden_dim,
            projection_dim=args.projection_dim,
            total_steps=self.total_steps,
            base_momentum=args.base_momentum,
            teacher_norm=args.teacher_norm,
        ).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        # No weight decay on BatchNorm parameters and biases (BYOL's LARS setting).
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=args.lr,
            momentum=0.9,
        )
        # The compiled module shares parameters and buffers with `model`; checkpoints use `model`.
        self.step_model = torch.compile(model) if args.compile else model

    def device_summary(self) -> str:
        """Device, precision, memory format, compile."""
        dev = str(self.device)
        if self.device.type == "cuda":
            dev += f" ({torch.cuda.get_device_name(self.device)})"
        else:
            n = torch.get_num_threads()
            dev += f" ({n} thread{'' if n == 1 else 's'})"
        parts = [dev, "bf16 autocast" if self.autocast_dtype is not None else "fp32"]
        if self.channels_last:
            parts.append("channels_last")
        if self.args.compile:
            parts.append("torch.compile")
        return ", ".join(parts)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, images: np.ndarray) -> torch.Tensor:
        # NHWC NumPy permuted to NCHW *is* channels_last in memory: no copy needed for that format.
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        if not self.channels_last:
            x = x.contiguous()
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x

    def train_step(self, view1: np.ndarray, view2: np.ndarray, step: int) -> torch.Tensor:
        """One M2T step: EMA, teacher, student, loss, backward, SGD.

        Args:
            view1: ``[B, H, W, C]`` float32.
            view2: Same shape.
            step: Global step (sets the learning rate).

        Returns:
            The detached loss (still on the device).
        """
        lr = learning_rate(
            step, peak=self.args.lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x1, x2 = self._to_device(view1), self._to_device(view2)
        with self._autocast():
            loss = self.step_model(x1, x2)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def losses_to_floats(self, losses: list[torch.Tensor]) -> list[float]:
        """One device-to-host copy for all pending losses."""
        return torch.stack(losses).float().cpu().tolist()

    def weights_finite(self) -> bool:
        """One reduction over the student's parameters, one host sync."""
        return bool(torch.stack([p.detach().isfinite().all() for p in self.model.parameters()]).all())

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Teacher-backbone features in evaluation mode."""
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                return self.model.teacher_backbone(self._to_device(images)).float().cpu().numpy()
        finally:
            self.model.train()

    def save_checkpoint(self, path: Path, meta: dict[str, Any]) -> None:
        """``torch.save`` of model, optimizer, torch's RNG state and the loop's metadata."""
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "meta": meta,
            },
            path,
        )

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        """Restore model, optimizer and RNG; return the metadata."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"].cpu())
        return state["meta"]

    def on_accelerator(self) -> bool:
        """True on CUDA."""
        return self.device.type == "cuda"

    def peak_memory_bytes(self) -> int | None:
        """``torch.cuda.max_memory_allocated`` on CUDA."""
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None


def main(argv: list[str] | None = None) -> int:
    """Parse flags, train, evaluate; returns the exit status.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status (see :meth:`ExampleTrainer.run`).
    """
    return TorchTrainer(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
