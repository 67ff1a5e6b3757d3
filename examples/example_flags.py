"""The command-line flags every example shares (PyTorch, Keras, Flax), with their checks.

No framework is imported here: each example builds its parser with :func:`build_parser`, adds its own
flags (``--compile`` for torch, ...) and parses. :data:`RUNTIME_FLAGS` lists the flags that may change
when a run is resumed; every other flag defines the run and must stay as it was (see
:func:`run_settings`).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["RUNTIME_FLAGS", "build_parser", "check_args", "run_settings"]

#: Flags that say *how* or *where* to run, not *what* to train: they may differ on ``--resume``.
RUNTIME_FLAGS = frozenset(
    {
        "out",
        "resume",
        "device",
        "precision",
        "compile",
        "channels_last",
        "progress",
        "max_steps",
        "report_throughput",
        "log_every",
        "debug_nan_at_step",
        "threads",
        "loader_threads",
    }
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def build_parser(framework: str, description: str, **defaults: Any) -> argparse.ArgumentParser:
    """The parser with the flags every example has; ``defaults`` overrides their default values.

    Args:
        framework: ``"torch"``, ``"keras"`` or ``"flax"``; the default output folder is
            ``runs/<framework>``.
        description: The example's one-paragraph description for ``--help``.
        **defaults: Per-example default values by destination name (e.g. ``epochs=30``).

    Returns:
        An ``argparse.ArgumentParser``; add framework flags, then call ``parse_args`` and
        :func:`check_args`.
    """
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    g = p.add_argument_group("data and run")
    g.add_argument(
        "--data",
        default="digits",
        help="'digits' (bundled with scikit-learn), a CIFAR-10 python folder, an ImageFolder tree or an .npz",
    )
    g.add_argument("--image-size", type=_positive_int, default=32, help="side of ImageFolder images")
    g.add_argument("--out", default=f"runs/{framework}", help="output folder: checkpoint, metrics, plot")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --out (repeat the original command and add --resume)",
    )
    g.add_argument("--seed", type=_non_negative_int, default=0, help="seed of weights, batches and views")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=_positive_int, default=50, help="training epochs")
    g.add_argument("--batch-size", type=_positive_int, default=64, help="images per view and step")
    g.add_argument("--lr", type=_positive_float, default=0.05, help="peak learning rate (cosine decay)")
    g.add_argument("--weight-decay", type=_non_negative_float, default=1e-4, help="L2 weight decay")
    g.add_argument("--warmup-epochs", type=_non_negative_float, default=1.0, help="linear LR warm-up")
    g.add_argument("--width", type=_positive_int, default=32, help="channels of the backbone's first stage")
    g.add_argument("--hidden-dim", type=_positive_int, default=256, help="hidden width of the MLP heads")
    g.add_argument("--projection-dim", type=_positive_int, default=64, help="output width of the heads")
    g.add_argument(
        "--base-momentum", type=_unit_float, default=0.99, help="teacher EMA momentum at step 0 (cosine to 1)"
    )
    g = p.add_argument_group("evaluation and output")
    g.add_argument(
        "--eval-every",
        type=_non_negative_int,
        default=5,
        help="kNN accuracy every N epochs (0: only before and after training)",
    )
    g.add_argument("--knn-k", type=_positive_int, default=20, help="neighbours of the kNN classifier")
    g.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar"
    )
    g.add_argument(
        "--log-every", type=_positive_int, default=10, help="steps between reading the loss back to the host"
    )
    g = p.add_argument_group("device and precision")
    g.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present"
    )
    g.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 on CUDA, fp32 on CPU",
    )
    g.add_argument(
        "--loader-threads",
        type=_positive_int,
        default=None,
        help="threads computing augmented views (default: 1 on CPU, up to 8 on a GPU machine)",
    )
    g = p.add_argument_group("benchmarking and tests")
    g.add_argument(
        "--max-steps",
        type=_positive_int,
        default=None,
        help="stop after N training steps in this invocation, saving a checkpoint (resume continues)",
    )
    g.add_argument(
        "--report-throughput",
        action="store_true",
        help="print a THROUGHPUT line (images/s after warm-up, peak device memory) at the end",
    )
    # Hidden: makes step N's views NaN, to test the non-finite-loss stop.
    p.add_argument("--debug-nan-at-step", type=_non_negative_int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(**defaults)
    return p


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Checks that involve several flags; ``parser.error`` (exit code 2) on a problem.

    Args:
        parser: The parser that produced ``args``.
        args: The parsed flags.

    Returns:
        ``args``.
    """
    if args.warmup_epochs > args.epochs:
        parser.error(f"--warmup-epochs {args.warmup_epochs} exceeds --epochs {args.epochs}")
    if getattr(args, "threads", None) is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that define a run (everything but :data:`RUNTIME_FLAGS`), as a JSON-able dict.

    Args:
        args: The parsed flags.

    Returns:
        ``{flag destination: value}``, sorted by name.
    """
    return {k: v for k, v in sorted(vars(args).items()) if k not in RUNTIME_FLAGS}
