"""m2t_core — the NumPy reference of Momentum² Teacher (Li, Liu, Sun, arXiv:2101.07525).

Pure functions with explicit state in and out; nothing is mutated and no deep-learning framework is
imported. Every adapter (``m2t_torch``, ``m2t_keras``, ``m2t_flax``) exposes the same functional API
on its own tensors and is tested against this package.

* :mod:`m2t_core.stats` — momentum BatchNorm with per-view moments and the lazy commit
  (:func:`momentum_batch_norm`, :func:`view_moments`, :class:`MomentumStats`, :func:`init_stats`);
* :mod:`m2t_core.ema` — the teacher parameter EMA (:func:`ema_update`);
* :mod:`m2t_core.schedules` — cosine schedules for the teacher momentum and the statistics momentum;
* :mod:`m2t_core.losses` — the symmetrised BYOL regression loss;
* :mod:`m2t_core.datasets`, :mod:`m2t_core.augment`, :mod:`m2t_core.evaluation` — the examples'
  data pipeline, the two view augmentations and the kNN / linear-probe evaluation (import them
  directly; scikit-learn and Pillow are loaded only by the loaders that need them, extra ``[data]``);
* :mod:`m2t_core.testing` — hypothesis strategies and :func:`~m2t_core.testing.assert_close`
  (needs ``hypothesis``; not imported here).

Conventions: ``alpha`` is the weight on the stored statistics' history and ``momentum`` (teacher) the
weight on the old teacher. ``torch.nn.BatchNorm`` calls ``1 - alpha`` its momentum; Keras and Flax
call ``alpha`` their momentum. See :mod:`m2t_core.stats` for the full table and the math.
"""

from m2t_core.ema import ema_update
from m2t_core.losses import normalize, regression_loss, symmetric_loss
from m2t_core.schedules import (
    CosineSchedule,
    cosine_schedule,
    stats_momentum_schedule,
    teacher_momentum_schedule,
)
from m2t_core.stats import MomentumStats, init_stats, momentum_batch_norm, view_moments

__version__ = "0.1.0"

__all__ = [
    "CosineSchedule",
    "MomentumStats",
    "cosine_schedule",
    "ema_update",
    "init_stats",
    "momentum_batch_norm",
    "normalize",
    "regression_loss",
    "stats_momentum_schedule",
    "symmetric_loss",
    "teacher_momentum_schedule",
    "view_moments",
]
