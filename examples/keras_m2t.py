"""Pretrain a small ResNet with Momentum² Teacher in Keras 3 (``model.fit``), then evaluate the teacher.

The same run as ``torch_m2t.py`` — same flags, data, views, schedules and outputs — with
``m2t_keras.M2Teacher`` trained by ``compile()`` + ``fit()``; a callback runs the kNN evaluation,
the checkpoints, Ctrl-C and the non-finite-loss stop. Any Keras backend works: set
``KERAS_BACKEND`` to ``tensorflow`` (default), ``jax`` or ``torch``. On a GPU the model computes in
the ``mixed_bfloat16`` policy (``--precision``).

Usage::

    python examples/keras_m2t.py                         # digits, TensorFlow backend
    KERAS_BACKEND=jax python examples/keras_m2t.py --out runs/keras-jax
    python examples/keras_m2t.py --resume                # continue runs/keras after Ctrl-C

Output in ``--out`` (default ``runs/keras``): ``checkpoint.keras`` (``model.save`` format, with the
optimizer; loadable with ``keras.models.load_model`` once this folder is importable),
``metrics.json`` and ``curves.png``.
"""

from __future__ import annotations

import argparse
import os
import sys

from epoch_loop import load_example_data
from example_flags import build_parser, check_args

__all__ = ["main", "parse_args"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The shared flags (``example_flags``).

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The checked flags.
    """
    parser = build_parser("keras", __doc__.split("\n\n")[0])
    return check_args(parser, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    """Parse flags, pick the device, then import Keras, train and evaluate; returns the exit status.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status (see ``ExampleTrainer.run``).
    """
    args = parse_args(argv)
    data = load_example_data(args)  # a bad --data fails fast, before the backend's slow start
    if args.device == "cpu":
        # Every Keras backend reads this when it starts, which is why Keras is imported below.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    from keras_training import KerasTrainer

    return KerasTrainer(args).run(data)


if __name__ == "__main__":
    sys.exit(main())
