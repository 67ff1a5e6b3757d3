r"""Cosine schedules that evaluate on torch tensors as well as on Python ints.

The curve is the core's (:mod:`m2t_core.schedules`)::

    cosine(k, K, start, end) = end − (end − start)·(cos(π·k/K) + 1)/2      k clamped to [0, K]

A :class:`TorchCosineSchedule` called with a Python int returns the core's Python float. Called with
an integer tensor (typically a step-counter buffer) it returns a tensor on the same device, computed
with tensor operations only: no ``.item()``, no host synchronisation, and under ``torch.compile`` one
graph serves every step because the step is data, not a constant baked into the graph.

References:
    Grill et al. *Bootstrap Your Own Latent.* NeurIPS 2020 (teacher momentum schedule).
    Li, Liu, Sun. *Momentum² Teacher.* arXiv:2101.07525, 2021 (statistics momentum schedule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from m2t_core.schedules import CosineSchedule
from m2t_core.schedules import cosine_schedule as _core_cosine_schedule
from m2t_core.schedules import stats_momentum_schedule as _core_stats_schedule
from m2t_core.schedules import teacher_momentum_schedule as _core_teacher_schedule

__all__ = [
    "TorchCosineSchedule",
    "cosine_schedule",
    "stats_momentum_schedule",
    "teacher_momentum_schedule",
]


def _schedule_dtype(device: torch.device) -> torch.dtype:
    # float64 reproduces the core's values to the last bit on CPU and CUDA; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass(frozen=True)
class TorchCosineSchedule(CosineSchedule):
    """A validated cosine schedule (a :class:`m2t_core.CosineSchedule`) that also accepts tensors.

    Attributes:
        start: Value at step 0.
        end: Value at steps ``>= total_steps``.
        total_steps: ``K``, or ``None`` for a constant schedule (``start == end``).
    """

    def __call__(self, step: int | np.ndarray | torch.Tensor) -> float | np.ndarray | torch.Tensor:  # type: ignore[override]
        """Value at ``step``.

        Args:
            step: A Python int or NumPy array (answered by the core, as a float / float64 array), or an
                integer or floating tensor (answered as a float64 tensor of the same shape and device;
                float32 on MPS).

        Returns:
            The schedule's value(s).
        """
        if not isinstance(step, torch.Tensor):
            return super().__call__(step)
        k = step.to(_schedule_dtype(step.device))
        if self.is_constant:
            return torch.full_like(k, self.start)
        total = float(self.total_steps)  # type: ignore[arg-type]
        k = k.clamp(0.0, total)
        return self.end - (self.end - self.start) * (torch.cos(k * (math.pi / total)) + 1.0) / 2.0


def _wrap(schedule: CosineSchedule) -> TorchCosineSchedule:
    return TorchCosineSchedule(schedule.start, schedule.end, schedule.total_steps)


def cosine_schedule(start: float, end: float, total_steps: int | None) -> TorchCosineSchedule:
    """Cosine curve from ``start`` (step 0) to ``end`` (step ``total_steps`` and after).

    Args:
        start: Value at step 0, in [0, 1].
        end: Final value, in [0, 1].
        total_steps: ``K > 0``; may be ``None`` only when ``start == end``.

    Returns:
        A :class:`TorchCosineSchedule` (callable on ints and tensors).

    Raises:
        ValueError: ``total_steps <= 0``, ``start``/``end`` outside [0, 1], or ``total_steps`` missing
            for a non-constant schedule (checked now, as in the core).
        TypeError: ``total_steps`` is not an int.
    """
    return _wrap(_core_cosine_schedule(start, end, total_steps))


def teacher_momentum_schedule(
    total_steps: int | None, base_momentum: float = 0.99, final_momentum: float = 1.0
) -> TorchCosineSchedule:
    """Teacher EMA momentum ``m_k``: cosine from ``base_momentum`` (0.99) to ``final_momentum`` (1).

    Args:
        total_steps: ``K``; may be ``None`` only for a constant momentum.
        base_momentum: ``m_0``, in [0, 1].
        final_momentum: ``m_K``, in [0, 1].

    Returns:
        A :class:`TorchCosineSchedule`.

    Raises:
        ValueError: as :func:`cosine_schedule`, naming ``base_momentum``/``final_momentum``.

    References:
        Grill et al. *Bootstrap Your Own Latent*, NeurIPS 2020, §3.2.
    """
    return _wrap(_core_teacher_schedule(total_steps, base_momentum, final_momentum))


def stats_momentum_schedule(
    total_steps: int | None, alpha_start: float = 0.0, alpha_end: float = 1.0
) -> TorchCosineSchedule:
    """Statistics history weight ``α_k``: cosine from ``alpha_start`` (0) to ``alpha_end`` (1).

    Args:
        total_steps: ``K``; may be ``None`` only for a constant ``α``.
        alpha_start: ``α_0``, in [0, 1].
        alpha_end: ``α_K``, in [0, 1].

    Returns:
        A :class:`TorchCosineSchedule`.

    Raises:
        ValueError: as :func:`cosine_schedule`, naming ``alpha_start``/``alpha_end``.

    References:
        Li, Liu, Sun. *Momentum² Teacher*, arXiv:2101.07525, §3.
    """
    return _wrap(_core_stats_schedule(total_steps, alpha_start, alpha_end))
