r"""Cosine schedules for the teacher momentum ``m_k`` and the statistics momentum ``α_k``.

Step ``k`` counts from 0, ``K`` is the total number of training steps, and ``k`` is clamped to
``[0, K]``::

    cosine(k, K, start, end) = end − (end − start)·(cos(π·k/K) + 1)/2      start at k=0, end at k≥K
    teacher momentum  m_k = cosine(k, K, 0.99, 1.0)                        BYOL / original release
    stats momentum    α_k = cosine(k, K, 0.0, 1.0)                         original release

Both rise monotonically when ``start < end``. A constant schedule has ``start == end``; then
``total_steps`` may be ``None``. Arguments are checked when the schedule is built (``ValueError``
for ``total_steps <= 0`` or values outside [0, 1]), never when it is evaluated — the same contract
as optax's schedules.

References:
    Grill et al. *Bootstrap Your Own Latent.* NeurIPS 2020 (τ from 0.996 to 1 by a cosine).
    Li, Liu, Sun. *Momentum² Teacher.* arXiv:2101.07525, 2021 (α from 0 to 1 by a cosine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from m2t_core._validation import check_schedule_steps

__all__ = [
    "CosineSchedule",
    "cosine_schedule",
    "stats_momentum_schedule",
    "teacher_momentum_schedule",
]


@dataclass(frozen=True)
class CosineSchedule:
    """A validated cosine schedule; call it with a step (int or integer array) to get the value.

    Build it with :func:`cosine_schedule` (or the two named schedules); adapters read ``start``,
    ``end`` and ``total_steps`` to evaluate the same curve on their own tensors.

    Attributes:
        start: Value at step 0.
        end: Value at steps ``>= total_steps``.
        total_steps: ``K``, or ``None`` for a constant schedule (``start == end``).
    """

    start: float
    end: float
    total_steps: int | None

    @property
    def is_constant(self) -> bool:
        """True when the schedule never changes (``start == end``)."""
        return self.start == self.end

    def __call__(self, step: int | np.ndarray) -> float | np.ndarray:
        """Value at ``step`` (float for a scalar step, float64 array for an array of steps)."""
        k = np.asarray(step, dtype=np.float64)
        if self.is_constant:
            value = np.full_like(k, self.start)
        else:
            total = float(self.total_steps)  # type: ignore[arg-type]
            k = np.clip(k, 0.0, total)
            value = self.end - (self.end - self.start) * (np.cos(math.pi * k / total) + 1.0) / 2.0
        return float(value) if value.ndim == 0 else value


def cosine_schedule(start: float, end: float, total_steps: int | None) -> CosineSchedule:
    """Cosine curve from ``start`` (step 0) to ``end`` (step ``total_steps`` and after).

    Args:
        start: Value at step 0, in [0, 1].
        end: Final value, in [0, 1].
        total_steps: ``K > 0``; may be ``None`` only when ``start == end``.

    Returns:
        A :class:`CosineSchedule` (callable ``step -> value``).

    Raises:
        ValueError: ``total_steps <= 0``, ``start``/``end`` outside [0, 1], or ``total_steps`` missing
            for a non-constant schedule.
        TypeError: ``total_steps`` is not an int.
    """
    total = check_schedule_steps(start, end, total_steps)
    return CosineSchedule(float(start), float(end), total)


def teacher_momentum_schedule(
    total_steps: int | None, base_momentum: float = 0.99, final_momentum: float = 1.0
) -> CosineSchedule:
    """Teacher EMA momentum ``m_k``: cosine from ``base_momentum`` (0.99) to ``final_momentum`` (1)."""
    check_schedule_steps(
        base_momentum, final_momentum, total_steps, names=("base_momentum", "final_momentum")
    )
    return CosineSchedule(float(base_momentum), float(final_momentum), total_steps)


def stats_momentum_schedule(
    total_steps: int | None, alpha_start: float = 0.0, alpha_end: float = 1.0
) -> CosineSchedule:
    """Statistics history weight ``α_k``: cosine from ``alpha_start`` (0) to ``alpha_end`` (1)."""
    check_schedule_steps(alpha_start, alpha_end, total_steps, names=("alpha_start", "alpha_end"))
    return CosineSchedule(float(alpha_start), float(alpha_end), total_steps)
