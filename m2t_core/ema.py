r"""Teacher parameter EMA: ``θ_t ← m·θ_t + (1−m)·θ_s``.

``momentum`` ``m`` is the weight on the **old teacher** (BYOL's τ), normally following
:func:`m2t_core.schedules.teacher_momentum_schedule` (cosine from 0.99 to 1). The EMA runs over every
parameter the teacher shares with the student — backbone and projector, including BN ``γ``/``β`` —
and **never** over the teacher's momentum statistics, which the teacher maintains itself
(:mod:`m2t_core.stats`). In the normative training step it runs *before* the teacher forward, so at
step 0, where the teacher is an exact copy of the student, it changes nothing.

In the conventions of other libraries: ``optax.incremental_update(new=student, old=teacher,
step_size=1 - m)``; ``torch.Tensor.lerp_(student, 1 - m)`` on the teacher.

References:
    Grill et al. *Bootstrap Your Own Latent.* NeurIPS 2020, §3.1 (the target network EMA).
    Li, Liu, Sun. *Momentum² Teacher.* arXiv:2101.07525, 2021.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from m2t_core._validation import check_param_trees, check_unit_interval

__all__ = ["ema_update"]


def _check_trees(teacher: Mapping[str, Any], student: Mapping[str, Any]) -> None:
    check_param_trees(teacher, student, shape_of=np.shape, dtype_of=lambda a: np.asarray(a).dtype.name)


def _ema(teacher: Mapping[str, Any], student: Mapping[str, Any], m: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, t in teacher.items():
        s = student[key]
        if isinstance(t, Mapping):
            out[key] = _ema(t, s, m)
            continue
        t = np.asarray(t)
        ct = np.result_type(np.float32, t.dtype) if t.dtype.itemsize < 4 else t.dtype
        mm = ct.type(m)
        new = mm * t.astype(ct) + (ct.type(1) - mm) * np.asarray(s).astype(ct)
        out[key] = new.astype(t.dtype)
    return out


def ema_update(teacher: Mapping[str, Any], student: Mapping[str, Any], momentum: float) -> dict[str, Any]:
    """Exponential moving average of the teacher towards the student: ``m·t + (1−m)·s`` per array.

    Args:
        teacher: Mapping of names to floating arrays (nested mappings are followed).
        student: Mapping with exactly the same keys and shapes.
        momentum: ``m`` in [0, 1], the weight on the old teacher. ``m = 1`` keeps the teacher,
            ``m = 0`` copies the student.

    Returns:
        A new ``dict`` (nested like ``teacher``); each array keeps the teacher's dtype
        (half precision is mixed in float32). The inputs are not modified.

    Raises:
        ValueError: keys differ (both sets of differing keys are named), shapes differ (the key and
            both shapes are named), or ``momentum`` is outside [0, 1].
        TypeError: a non-floating array.

    References:
        Grill et al. *Bootstrap Your Own Latent*, NeurIPS 2020, eq. (1).
    """
    check_unit_interval(momentum, "momentum")
    if not isinstance(teacher, Mapping) or not isinstance(student, Mapping):
        raise TypeError(
            f"teacher and student must be mappings of arrays, got {type(teacher).__name__} "
            f"and {type(student).__name__}"
        )
    _check_trees(teacher, student)
    return _ema(teacher, student, float(momentum))
