"""m2t_flax — Momentum² Teacher for JAX and Flax (NNX and Linen).

* :mod:`m2t_flax.functional` — the functional API of :mod:`m2t_core` on JAX arrays (also exported
  here): :func:`momentum_batch_norm`, :func:`view_moments`, :func:`ema_update`, the schedules and
  the loss; pure and ``jax.jit``/``jax.vmap``-safe;
* :mod:`m2t_flax.nnx` — ``MomentumBatchNorm``, ``convert_momentum_bn``, ``M2Teacher`` and the
  jit-compiled ``train_step`` / ``make_train_step``;
* :mod:`m2t_flax.linen` — ``MomentumBatchNorm`` for Linen models (statistics in ``batch_stats``);
* :mod:`m2t_flax.linen_teacher` — the Linen M2T model (``M2Teacher``, ``M2TState``, the reference
  backbone) and its jit-compiled train step;
* :mod:`m2t_flax.interchange` — the framework-neutral checkpoint format shared with PyTorch and
  Keras (``export_checkpoint``, ``import_checkpoint``, ``to_canonical``, ``from_canonical``, also
  exported here);
* :mod:`m2t_flax.parallel` — data-parallel training with per-device momentum statistics;
* :mod:`m2t_flax.checkpoint` — save/restore the whole training state with orbax-checkpoint.

Importing this package loads JAX and Flax only (no torch, Keras or TensorFlow); ``parallel`` and
``checkpoint`` (which loads orbax) are imported on first use.

References:
    Li, Liu, Sun. *Momentum² Teacher.* arXiv:2101.07525, 2021.
"""

from __future__ import annotations

import importlib
from typing import Any

from m2t_flax import functional, linen, linen_teacher, nnx
from m2t_flax.functional import (
    CosineSchedule,
    MomentumStats,
    cosine_schedule,
    ema_update,
    init_stats,
    momentum_batch_norm,
    normalize,
    regression_loss,
    stats_momentum_schedule,
    symmetric_loss,
    teacher_momentum_schedule,
    view_moments,
)
from m2t_flax.interchange import (
    checkpoint_config,
    export_checkpoint,
    from_canonical,
    import_checkpoint,
    to_canonical,
)

__version__ = "0.1.0"

_LAZY = ("checkpoint", "parallel")

__all__ = [
    "CosineSchedule",
    "MomentumStats",
    "checkpoint",
    "checkpoint_config",
    "cosine_schedule",
    "ema_update",
    "export_checkpoint",
    "from_canonical",
    "functional",
    "import_checkpoint",
    "init_stats",
    "linen",
    "linen_teacher",
    "momentum_batch_norm",
    "nnx",
    "normalize",
    "parallel",
    "regression_loss",
    "stats_momentum_schedule",
    "symmetric_loss",
    "teacher_momentum_schedule",
    "to_canonical",
    "view_moments",
]


def __getattr__(name: str) -> Any:
    # orbax takes about a second to import; load it only for users who save checkpoints.
    if name in _LAZY:
        return importlib.import_module(f"m2t_flax.{name}")
    raise AttributeError(f"module 'm2t_flax' has no attribute {name!r}")
