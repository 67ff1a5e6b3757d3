r"""``MomentumBatchNorm``: the teacher normalisation of Momentum² Teacher as an ``nn.Module``.

The layer normalises ``V = num_views`` views concatenated along dim 0 in one forward: view ``v`` is
normalised with ``(1−α_k)·moments_v + α_k·stored`` (every view mixes with the *same* history), then
the statistics are committed once, ``stored ← (1−α_k)·mean_v(moments_v) + α_k·stored`` — the paper's
lazy update, so no view sees statistics built from another view of the same step (DESIGN §2).

Conventions versus ``torch.nn.BatchNorm*``:

=================================  =============================  ============================
quantity                           ``MomentumBatchNorm``          ``nn.BatchNorm*``
=================================  =============================  ============================
weight on the stored statistics    ``α_k`` (``alpha_*``)          ``1 - momentum``
weight on the current batch        ``1 - α_k``                    ``momentum`` (0.1)
normalise with, in training        mix of batch and history       the batch alone
variance normalised / stored       ``correction`` / same          biased / unbiased
``num_batches_tracked``            the commit step ``k``          batches seen
=================================  =============================  ============================

``α_k`` follows a cosine from ``alpha_start`` to ``alpha_end`` over ``total_steps`` commits (the
original release's schedule is 0 → 1), evaluated from the ``num_batches_tracked`` buffer with tensor
operations: no Python float changes from step to step, so ``torch.compile`` builds one graph that
serves every step, and nothing synchronises with the host. A constant ``α`` is
``alpha_start == alpha_end`` (then ``total_steps`` may be ``None``); ``α = 0`` is per-view batch
normalisation and ``α = 1`` normalises with the stored statistics alone.

References:
    Li, Liu, Sun. *Momentum² Teacher: Momentum Teacher with Momentum Statistics for Self-Supervised
    Learning.* arXiv:2101.07525, 2021, §3.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from m2t_core._validation import check_correction, check_eps, check_num_views, correction_factor
from m2t_torch._bn_kernels import as_weight, mix_and_commit, normalize_views, per_view_moments
from m2t_torch._validation import check_floating_tensor, compute_dtype
from m2t_torch.distributed import check_sync_stats, resolve_sync_stats, sync_momentum_stats
from m2t_torch.schedules import TorchCosineSchedule, stats_momentum_schedule

__all__ = ["MomentumBatchNorm", "MomentumBatchNorm1d", "MomentumBatchNorm2d"]


class MomentumBatchNorm(nn.Module):
    r"""Momentum batch normalisation over dim 1 of an input of any rank >= 2.

    Training mode: the batch holds ``num_views`` views of equal size concatenated along dim 0; each is
    normalised with its own moments mixed with the stored history, then the buffers are committed
    **in place** once per forward (so ``torch.func.functional_call`` sees the update) and
    ``num_batches_tracked`` (the commit step ``k``) advances. If a committed moment would be
    non-finite, the stored statistics keep their values and ``skipped`` is incremented (decided with
    ``torch.where``: no host sync); the output is computed as usual, so the loop sees the bad loss.

    Evaluation mode: ``y = γ·(x − running_mean)/sqrt(running_var + eps) + β`` for any batch size;
    nothing changes.

    ``alpha`` is the weight on the stored history (the paper's α) — the *opposite* of
    ``nn.BatchNorm``'s ``momentum``, which weights the current batch (``alpha = 1 − momentum``).

    Moments are computed in float32 (float64 for float64 inputs or buffers), so float16/bfloat16
    inputs, with or without autocast, keep buffers and moments in float32 and return the input dtype.
    The output keeps the input's memory format (channels_last in, channels_last out).

    The state dict holds ``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked`` (the keys of ``nn.BatchNorm*``) and ``skipped``. An ``nn.BatchNorm*``
    state dict loads into this layer (``skipped`` then starts at 0); this layer's state dict loads into
    an ``nn.BatchNorm*`` with ``strict=False`` (the only unexpected key is ``skipped``). The layer is
    not an ``nn.modules.batchnorm._BatchNorm``, so ``nn.SyncBatchNorm.convert_sync_batchnorm`` leaves it
    alone.

    Args:
        num_features: Number of channels ``C`` (size of dim 1).
        eps: Added to the variance before the square root.
        affine: Learnable ``weight`` (γ, ones) and ``bias`` (β, zeros).
        num_views: ``V``, views per training batch; must divide the batch size.
        alpha_start: ``α`` at step 0, in [0, 1].
        alpha_end: ``α`` at steps ``>= total_steps``, in [0, 1].
        total_steps: Length of the cosine schedule; may be ``None`` when ``alpha_start == alpha_end``.
        correction: Variance estimator used to normalise and to store: ``"biased"`` (÷n),
            ``"unbiased"`` (÷(n−1)) or ``"official"`` (what the original release computes).
        sync_stats: Across processes, after each commit: ``"mean"`` all-reduces the committed
            statistics, ``"broadcast"`` copies rank 0's, ``"none"`` keeps them local; ``None`` means
            ``"mean"`` when ``torch.distributed`` is initialised, else ``"none"``. That is one small
            collective per layer and step; :class:`m2t_torch.M2Teacher` instead builds its layers with
            ``"none"`` and syncs the whole teacher with a single collective.
        device: Device of parameters and buffers.
        dtype: dtype of parameters and buffers (default: torch's default float dtype).

    Raises:
        ValueError: bad ``num_features``, ``eps``, ``num_views``, schedule, ``correction`` or
            ``sync_stats``.

    References:
        Li, Liu, Sun. Momentum² Teacher, arXiv:2101.07525, §3.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        num_views: int = 2,
        alpha_start: float = 0.0,
        alpha_end: float = 1.0,
        total_steps: int | None = None,
        correction: str = "biased",
        sync_stats: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Build the layer (arguments documented on the class)."""
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int):
            raise TypeError(f"num_features must be an int, got {num_features!r}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = num_features
        self.eps = check_eps(eps)
        self.affine = bool(affine)
        self.num_views = check_num_views(num_views)
        self.schedule: TorchCosineSchedule = stats_momentum_schedule(total_steps, alpha_start, alpha_end)
        self.correction = check_correction(correction)
        self.sync_stats = check_sync_stats(sync_stats)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        if self.affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))
            self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("skipped", torch.zeros((), dtype=torch.long, device=device))

    # -- schedule ---------------------------------------------------------------------------------

    @property
    def alpha_start(self) -> float:
        """``α`` at step 0."""
        return self.schedule.start

    @property
    def alpha_end(self) -> float:
        """``α`` at the end of the schedule."""
        return self.schedule.end

    @property
    def total_steps(self) -> int | None:
        """Length of the ``α`` schedule (``None`` for a constant ``α``)."""
        return self.schedule.total_steps

    def current_alpha(self) -> float | torch.Tensor:
        """``α_k`` for the next commit: a Python float when constant, else a float64 0-d tensor."""
        if self.schedule.is_constant:
            return self.schedule.start
        return self.schedule(self.num_batches_tracked)

    # -- state ------------------------------------------------------------------------------------

    def reset_running_stats(self) -> None:
        """Stored statistics back to mean 0, variance 1; step and skipped counters to 0."""
        with torch.no_grad():
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()
            self.skipped.zero_()

    def reset_parameters(self) -> None:
        """Reset the statistics and set ``weight`` to ones, ``bias`` to zeros."""
        self.reset_running_stats()
        if self.affine:
            with torch.no_grad():
                self.weight.fill_(1.0)
                self.bias.zero_()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # An nn.BatchNorm* state dict has no `skipped` (and none has `num_batches_tracked` when saved
        # with track_running_stats=False): such counters start from zero instead of failing the load.
        for name in ("num_batches_tracked", "skipped"):
            key = prefix + name
            if key in missing_keys:
                missing_keys.remove(key)
                with torch.no_grad():
                    getattr(self, name).zero_()

    def extra_repr(self) -> str:
        """Constructor arguments, for ``repr``."""
        s = self.schedule
        alpha = f"alpha={s.start}"
        if not s.is_constant:
            alpha += f"->{s.end} over {s.total_steps} steps"
        return (
            f"{self.num_features}, eps={self.eps}, affine={self.affine}, num_views={self.num_views}, "
            f"{alpha}, correction={self.correction!r}, sync_stats={self.sync_stats!r}"
        )

    # -- forward ----------------------------------------------------------------------------------

    def _check_rank(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input of rank >= 2 (batch, channels, ...), got rank {x.dim()}")

    def _check_input(self, x: torch.Tensor) -> int:
        """Validate ``x``; return ``n``, the values per channel and view. Errors name the layer."""
        try:
            check_floating_tensor(x, "input")
            self._check_rank(x)
            if x.shape[1] != self.num_features:
                raise ValueError(f"expected {self.num_features} channels on dim 1, got {x.shape[1]}")
            if not self.training:
                return 0
            check_num_views(self.num_views, x.shape[0])
            n = x.numel() // (self.num_features * self.num_views)
            correction_factor(n, self.correction)
            return n
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"{self._get_name()}(num_features={self.num_features}, num_views={self.num_views}) got an "
                f"input of shape {tuple(x.shape)}: {err}"
            ) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (``[V·B, C, ...]`` in training mode, ``[N, C, ...]`` in evaluation mode).

        Args:
            x: Floating input with ``num_features`` channels on dim 1.

        Returns:
            Tensor of ``x``'s shape, dtype and memory format.

        Raises:
            TypeError: ``x`` is not a floating tensor.
            ValueError: wrong rank, wrong channel count, ``num_views`` not dividing the batch, or a
                single value per channel and view with a correction that divides by ``n − 1``; the
                message names the layer's ``num_features`` and the input shape.
        """
        n = self._check_input(x)
        ct = compute_dtype(x.dtype, self.running_mean.dtype)
        weight = self.weight if self.affine else None
        bias = self.bias if self.affine else None
        if not self.training:
            xv = x.unflatten(0, (1, -1))
            mean = self.running_mean.to(ct)[None]
            var = self.running_var.to(ct)[None]
            return normalize_views(xv, mean, var, 2, self.eps, weight, bias, ct).flatten(0, 1)

        xv = x.unflatten(0, (self.num_views, -1))
        mu_v, var_v, scratch = per_view_moments(xv, 2, n, self.correction, ct)
        hist_mean = self.running_mean.detach().to(ct)
        hist_var = self.running_var.detach().to(ct)
        alpha = as_weight(self.current_alpha(), ct, x.device)
        mean_hat, var_hat, new_mean, new_var, finite = mix_and_commit(mu_v, var_v, hist_mean, hist_var, alpha)
        y = normalize_views(xv, mean_hat, var_hat, 2, self.eps, weight, bias, ct, scratch)
        with torch.no_grad():
            self.running_mean.copy_(new_mean)
            self.running_var.copy_(new_var)
            self.num_batches_tracked.add_(1)
            self.skipped.add_((~finite).to(self.skipped.dtype))
        mode = resolve_sync_stats(self.sync_stats)
        if mode != "none":
            sync_momentum_stats(self, mode)
        return y.flatten(0, 1)


class MomentumBatchNorm1d(MomentumBatchNorm):
    """:class:`MomentumBatchNorm` for ``[N, C]`` or ``[N, C, L]`` inputs (the shapes of ``nn.BatchNorm1d``).

    Args:
        num_features: Number of channels ``C``.
        eps: Added to the variance before the square root.
        affine: Learnable ``weight``/``bias``.
        **kwargs: Keyword arguments of :class:`MomentumBatchNorm`.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True, **kwargs: Any) -> None:
        """Build the layer (arguments documented on the class)."""
        super().__init__(num_features, eps, affine, **kwargs)

    def _check_rank(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input, got {x.dim()}D input")


class MomentumBatchNorm2d(MomentumBatchNorm):
    """:class:`MomentumBatchNorm` for ``[N, C, H, W]`` inputs (the shapes of ``nn.BatchNorm2d``).

    Args:
        num_features: Number of channels ``C``.
        eps: Added to the variance before the square root.
        affine: Learnable ``weight``/``bias``.
        **kwargs: Keyword arguments of :class:`MomentumBatchNorm`.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True, **kwargs: Any) -> None:
        """Build the layer (arguments documented on the class)."""
        super().__init__(num_features, eps, affine, **kwargs)

    def _check_rank(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input, got {x.dim()}D input")
