r"""Keeping momentum statistics identical across processes (torchrun / DDP).

Each process normalises its teacher batch with its *local* per-view moments mixed with the stored
history — no communication inside the forward. After the commit, one collective makes the stored
statistics agree again:

* ``"mean"`` — all-reduce the committed ``running_mean``/``running_var`` and divide by the world size.
  Every rank starts the step from the same history, so this equals committing the rank-averaged
  moments (the commit is linear in the moments), like averaging the views within one process;
* ``"broadcast"`` — copy rank 0's statistics (what the original release effectively does under DDP);
* ``"none"`` — keep them local (ranks drift apart; fine for single-process training).

``None`` resolves to ``"mean"`` when ``torch.distributed`` is initialised and ``"none"`` otherwise.
All layers' statistics are flattened into one buffer per (device, dtype) — one collective for the
whole teacher in the usual all-float32 case.

Caveat: the non-finite guard runs per rank before the collective. If one rank's commit is skipped,
its unchanged history enters the mean (still finite, still identical on every rank afterwards); the
``skipped`` counters stay per rank.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["SYNC_MODES", "resolve_sync_stats", "sync_momentum_stats"]

SYNC_MODES = ("mean", "broadcast", "none")


def check_sync_stats(mode: str | None) -> str | None:
    """Check a ``sync_stats`` argument (``None`` or one of :data:`SYNC_MODES`) and return it."""
    if mode is not None and mode not in SYNC_MODES:
        raise ValueError(f"sync_stats must be one of {SYNC_MODES} or None, got {mode!r}")
    return mode


def resolve_sync_stats(mode: str | None) -> str:
    """``None`` → ``"mean"`` if ``torch.distributed`` is initialised, else ``"none"``; others unchanged.

    Args:
        mode: ``"mean"``, ``"broadcast"``, ``"none"`` or ``None``.

    Returns:
        The effective mode.

    Raises:
        ValueError: an unknown mode.
    """
    check_sync_stats(mode)
    if mode is None:
        return "mean" if dist.is_available() and dist.is_initialized() else "none"
    return mode


def _statistics(module: nn.Module | Iterable[nn.Module]) -> list[torch.Tensor]:
    from m2t_torch.batchnorm import MomentumBatchNorm  # the layer module imports this one

    modules = module.modules() if isinstance(module, nn.Module) else module
    tensors: list[torch.Tensor] = []
    for m in modules:
        if isinstance(m, MomentumBatchNorm):
            tensors += [m.running_mean, m.running_var]
    return tensors


def sync_momentum_stats(
    module: nn.Module | Iterable[nn.Module],
    mode: str | None = None,
    *,
    group: dist.ProcessGroup | None = None,
) -> None:
    """Make every :class:`~m2t_torch.MomentumBatchNorm` statistic in ``module`` agree across ranks.

    Call it once per training step, after the teacher forward (``M2Teacher`` does). It is a no-op
    for ``"none"``, without an initialised process group, or with a single process.

    Args:
        module: A module tree (all its momentum-BN layers are synced) or an iterable of layers.
        mode: ``"mean"``, ``"broadcast"``, ``"none"`` or ``None`` (see :func:`resolve_sync_stats`).
        group: Process group (default: the world).

    Raises:
        ValueError: an unknown mode.
    """
    mode = resolve_sync_stats(mode)
    if mode == "none" or not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size(group)
    if world == 1:
        return
    by_kind: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in _statistics(module):
        by_kind.setdefault((t.device, t.dtype), []).append(t)
    src = 0 if group is None else dist.get_global_rank(group, 0)
    with torch.no_grad():
        for tensors in by_kind.values():
            flat = torch.cat([t.reshape(-1) for t in tensors])
            if mode == "mean":
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)  # gloo has no AVG
                flat.div_(world)
            else:
                dist.broadcast(flat, src=src, group=group)
            offset = 0
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
