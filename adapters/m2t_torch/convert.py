"""``convert_momentum_bn``: swap every BatchNorm of a module tree for a :class:`MomentumBatchNorm`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from m2t_torch.batchnorm import MomentumBatchNorm, MomentumBatchNorm1d, MomentumBatchNorm2d

__all__ = ["convert_momentum_bn"]

_LAYER_KWARGS = ("num_views", "alpha_start", "alpha_end", "total_steps", "correction", "sync_stats")


def _replacement(bn: _BatchNorm, kwargs: dict[str, Any]) -> MomentumBatchNorm:
    if isinstance(bn, LazyModuleMixin) and bn.has_uninitialized_params():
        raise ValueError(
            f"cannot convert the uninitialised lazy batch norm {bn!r}: run one forward first so that it "
            "knows its num_features"
        )
    # BatchNorm1d/2d keep their rank checks; 3d and SyncBatchNorm (any rank) get the general layer.
    cls = (
        MomentumBatchNorm1d
        if isinstance(bn, nn.BatchNorm1d)
        else MomentumBatchNorm2d
        if isinstance(bn, nn.BatchNorm2d)
        else MomentumBatchNorm
    )
    like = bn.weight if bn.affine else bn.running_mean
    factory = {} if like is None else {"device": like.device, "dtype": like.dtype}
    new = cls(bn.num_features, bn.eps, bn.affine, **kwargs, **factory)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight)
            new.bias.copy_(bn.bias)
            new.weight.requires_grad_(bn.weight.requires_grad)
            new.bias.requires_grad_(bn.bias.requires_grad)
        if bn.track_running_stats and bn.running_mean is not None:
            new.running_mean.copy_(bn.running_mean)
            new.running_var.copy_(bn.running_var)
    new.train(bn.training)
    return new


def convert_momentum_bn(module: nn.Module, **kwargs: Any) -> nn.Module:
    """Replace every ``BatchNorm1d/2d/3d`` and ``SyncBatchNorm`` in ``module`` by momentum BN.

    Works like ``nn.SyncBatchNorm.convert_sync_batchnorm``: children are replaced in place and the
    (possibly new) root is returned, so ``convert_momentum_bn(nn.BatchNorm2d(8))`` returns the new
    layer. ``BatchNorm1d`` becomes :class:`MomentumBatchNorm1d`, ``BatchNorm2d``
    :class:`MomentumBatchNorm2d`, the others :class:`MomentumBatchNorm`.

    Copied: ``num_features``, ``eps``, ``affine``, the affine parameters (values and
    ``requires_grad``), the running mean and variance (when tracked; otherwise 0 and 1), the
    training flag, device and dtype. Not copied: torch's ``momentum`` (the ``α`` schedule comes from
    ``kwargs``, in the opposite convention) and ``num_batches_tracked`` — there it counts batches seen,
    here it is the commit step that drives the ``α`` schedule, which starts from step 0.

    Args:
        module: Any module tree.
        **kwargs: Keyword arguments for every new layer: ``num_views``, ``alpha_start``, ``alpha_end``,
            ``total_steps``, ``correction``, ``sync_stats``.

    Returns:
        ``module`` with its batch norms replaced, or the new layer if ``module`` itself is one.

    Raises:
        TypeError: an unknown keyword argument.
        ValueError: invalid layer arguments (checked once, before anything is replaced), or an
            uninitialised lazy batch norm.
    """
    unknown = sorted(set(kwargs) - set(_LAYER_KWARGS))
    if unknown:
        raise TypeError(
            f"convert_momentum_bn got unknown keyword arguments {unknown}; allowed: {_LAYER_KWARGS}"
        )
    MomentumBatchNorm(1, **kwargs)  # validate the arguments before touching the tree
    return _convert(module, kwargs)


def _convert(module: nn.Module, kwargs: dict[str, Any]) -> nn.Module:
    if isinstance(module, _BatchNorm):
        return _replacement(module, kwargs)
    for name, child in module.named_children():
        new_child = _convert(child, kwargs)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
