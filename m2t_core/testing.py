"""Test helpers: hypothesis strategies for every public function, and a dtype-aware ``assert_close``.

Adapters' test suites, and users checking their own ports, draw inputs here and compare against the
NumPy reference::

    from hypothesis import given
    from m2t_core import momentum_batch_norm
    from m2t_core.testing import assert_close, bn_cases, bn_rounding_bound

    @given(bn_cases())
    def test_my_port(case):
        y_ref, stats_ref = momentum_batch_norm(case.x, case.stats, **case.kwargs)
        y, stats = my_momentum_batch_norm(case.x, case.stats, **case.kwargs)
        assert_close(y, y_ref, atol=bn_rounding_bound(case.x, case.stats, case.kwargs))
        assert_close(stats, stats_ref)

The strategies draw well-conditioned data (per-channel offsets a few times the spread, variances far
from zero), so float32 ports can be held to ``rtol=1e-5, atol=1e-6``: any larger difference is a
bug, not rounding — except in the output of a training-mode call where a view's sample spread is
small next to its offset, whose rounding :func:`bn_rounding_bound` accounts for. This module needs
``hypothesis`` (the ``test`` dependency group); importing :mod:`m2t_core` alone does not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

try:
    from hypothesis import strategies as st
except ImportError as err:  # pragma: no cover - exercised only without the test group
    raise ImportError(
        "m2t_core.testing needs hypothesis: pip install hypothesis "
        "(or install the project's 'test' dependency group)"
    ) from err

from m2t_core._validation import CORRECTIONS, correction_factor
from m2t_core.stats import MomentumStats, view_moments

__all__ = [
    "TOLERANCES",
    "BNCase",
    "EMACase",
    "LossCase",
    "assert_close",
    "bn_cases",
    "bn_rounding_bound",
    "ema_cases",
    "float_dtypes",
    "loss_cases",
    "schedule_args",
]

#: ``(rtol, atol)`` per dtype name; :func:`assert_close` uses the entry of the less precise operand.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-12),
    "float32": (1e-5, 1e-6),
    "float16": (2e-3, 2e-3),
    "bfloat16": (1.6e-2, 1e-2),
}
_PRECISION_ORDER = ("bfloat16", "float16", "float32", "float64")
_DTYPE_NAME = re.compile(r"(bfloat16|float16|float32|float64|half|double)")
_ALIASES = {"half": "float16", "double": "float64"}


def _dtype_name(a: Any) -> str | None:
    dtype = getattr(a, "dtype", None)
    if dtype is None:
        return None
    m = _DTYPE_NAME.search(str(dtype))
    if m is None:
        return None
    return _ALIASES.get(m.group(1), m.group(1))


def _to_numpy(a: Any) -> np.ndarray:
    """Any framework's tensor (or a number) as a NumPy array, without importing the framework."""
    if hasattr(a, "detach"):  # torch: leave autograd, come to the host, widen bfloat16
        a = a.detach().cpu()
        if _dtype_name(a) in ("bfloat16", "float16"):
            a = a.float()
    arr = np.asarray(a)
    if arr.dtype.kind == "V":  # ml_dtypes (bfloat16, ...) as float64 for comparison
        arr = arr.astype(np.float64)
    return arr


def assert_close(
    actual: Any,
    desired: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    err_msg: str = "",
) -> None:
    """Assert ``actual`` matches ``desired`` within tolerances chosen from their dtypes.

    Works on NumPy arrays, torch/JAX/TensorFlow/Keras tensors, numbers, and (recursively) on tuples,
    lists, NamedTuples such as :class:`~m2t_core.MomentumStats`, and mappings. Shapes must match
    exactly (no broadcasting); integer arrays must be equal; floating arrays use the
    :data:`TOLERANCES` row of the less precise of the two dtypes unless ``rtol``/``atol`` are given.

    Args:
        actual: Computed value.
        desired: Reference value.
        rtol: Relative tolerance override.
        atol: Absolute tolerance override.
        err_msg: Prefix for the failure message (the path into nested containers is appended).

    Raises:
        AssertionError: on any mismatch, naming where it is.
    """
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping) or set(actual) != set(desired):
            got = sorted(actual) if isinstance(actual, Mapping) else type(actual).__name__
            raise AssertionError(f"{err_msg}: keys differ: {got} vs {sorted(desired)}")
        for key in desired:
            assert_close(actual[key], desired[key], rtol=rtol, atol=atol, err_msg=f"{err_msg}[{key!r}]")
        return
    if isinstance(desired, (tuple, list)):
        if not isinstance(actual, (tuple, list)) or len(actual) != len(desired):
            raise AssertionError(f"{err_msg}: expected a sequence of {len(desired)} items, got {actual!r}")
        fields = getattr(desired, "_fields", None) or range(len(desired))
        for i, (a, d) in enumerate(zip(actual, desired, strict=False)):
            label = fields[i] if isinstance(fields, Sequence) else i
            assert_close(a, d, rtol=rtol, atol=atol, err_msg=f"{err_msg}.{label}")
        return

    names = [n for n in (_dtype_name(actual), _dtype_name(desired)) if n is not None]
    a, d = _to_numpy(actual), _to_numpy(desired)
    if a.shape != d.shape:
        raise AssertionError(f"{err_msg}: shape {a.shape} != desired shape {d.shape}")
    if a.dtype.kind in "iub" and d.dtype.kind in "iub":
        np.testing.assert_array_equal(a, d, err_msg=err_msg)
        return
    ranked = [n for n in _PRECISION_ORDER if n in names] or ["float64"]
    default_rtol, default_atol = TOLERANCES[ranked[0]]
    np.testing.assert_allclose(
        a.astype(np.float64),
        d.astype(np.float64),
        rtol=default_rtol if rtol is None else rtol,
        atol=default_atol if atol is None else atol,
        err_msg=f"{err_msg} (dtype {ranked[0]})",
    )


def bn_rounding_bound(x: np.ndarray, stats: MomentumStats, kwargs: Mapping[str, Any]) -> float | None:
    """Absolute tolerance for the output ``y`` of a float32 momentum BN, from its conditioning.

    ``y = γ·(x − μ̂)/sqrt(σ̂² + eps)`` with ``μ̂ = (1−α)·μ_v + α·μ``: any float32 evaluation rounds
    ``μ̂`` to a few ulp of ``max(|x|, |μ|)``, and ``|γ|/sqrt(σ̂² + eps)`` amplifies that. Where a view's
    spread is small next to its offset (few samples, a small ``α``), two correct float32 ports — or
    one and the float64 reference — differ by more than the fixed float32 ``atol``. The bound is that
    ``atol`` plus eight float32 unit roundoffs (2⁻²⁴, about four ulp) of ``max(|x|, |μ|)``, times the
    largest ``|γ|/sqrt(σ̂² + eps)``; compare with
    ``assert_close(y, y_ref, atol=bn_rounding_bound(x, stats, kwargs))``.

    Args:
        x: The case's input (``BNCase.x``).
        stats: The statistics the layer starts from (``BNCase.stats``, or float32 copies of them).
        kwargs: The call's keyword arguments (``BNCase.kwargs``; ``alpha`` may be overridden).

    Returns:
        The absolute tolerance for a float32 ``x``: the float32 ``atol`` in evaluation mode (no
        mixing), the bound above in training mode. ``None`` for other dtypes (their defaults apply).
    """
    if np.dtype(x.dtype) != np.float32:
        return None
    atol = TOLERANCES["float32"][1]
    if not kwargs["training"]:
        return atol
    _, var_v = view_moments(
        x.astype(np.float64),
        num_views=kwargs["num_views"],
        axis=kwargs["axis"],
        correction=kwargs["correction"],
    )
    alpha = float(kwargs["alpha"])
    var_hat = (1 - alpha) * var_v + alpha * np.asarray(stats.var, np.float64)
    scale = kwargs.get("scale")
    gamma = 1.0 if scale is None else float(np.max(np.abs(scale)))
    gain = gamma / np.sqrt(np.min(var_hat) + kwargs["eps"])
    magnitude = max(float(np.max(np.abs(x))), float(np.max(np.abs(stats.mean))))
    return float(atol + 8 * 2.0**-24 * magnitude * gain)


# --------------------------------------------------------------------------------------------------
# strategies


def float_dtypes(*, half: bool = False) -> st.SearchStrategy[np.dtype]:
    """Floating dtypes the reference handles: float32 and float64, and float16 with ``half=True``.

    bfloat16 needs ml_dtypes, so adapters that support it add it themselves.
    """
    names = ["float32", "float64"] + (["float16"] if half else [])
    return st.sampled_from([np.dtype(n) for n in names])


class BNCase(NamedTuple):
    """Inputs of :func:`m2t_core.momentum_batch_norm`: call ``fn(case.x, case.stats, **case.kwargs)``.

    ``kwargs`` holds ``alpha, num_views, axis, eps, scale, offset, correction, training``;
    ``axis`` is non-negative.
    """

    x: np.ndarray
    stats: MomentumStats
    kwargs: dict[str, Any]


def _well_conditioned(
    rng: np.random.Generator, shape: tuple[int, ...], axis: int, dtype: np.dtype
) -> np.ndarray:
    """Activations with per-channel offset in [-4, 4] and spread in [0.5, 3].

    Their float32 moments are accurate to a few ulp, so ports can be held to tight tolerances.
    """
    c = shape[axis]
    bshape = [1] * len(shape)
    bshape[axis] = c
    loc = rng.uniform(-4.0, 4.0, c).reshape(bshape)
    spread = rng.uniform(0.5, 3.0, c).reshape(bshape)
    return (loc + spread * rng.standard_normal(shape)).astype(dtype)


@st.composite
def bn_cases(
    draw: st.DrawFn,
    *,
    dtypes: st.SearchStrategy[np.dtype] | None = None,
    min_rank: int = 2,
    max_rank: int = 4,
    axis: int | None = None,
    num_views: st.SearchStrategy[int] | None = None,
    corrections: Sequence[str] = CORRECTIONS,
    training: st.SearchStrategy[bool] | None = None,
    affine: st.SearchStrategy[bool] | None = None,
    stats_dtype: np.dtype | None = None,
    max_channels: int = 6,
) -> BNCase:
    """Valid inputs for :func:`~m2t_core.momentum_batch_norm` (and :func:`~m2t_core.view_moments`).

    Args:
        draw: Supplied by hypothesis.
        dtypes: Strategy for the input dtype (default :func:`float_dtypes`).
        min_rank: Smallest rank of ``x`` (>= 2).
        max_rank: Largest rank of ``x``.
        axis: Fix the channel axis (e.g. ``1`` for torch layers, ``-1`` for Keras/Flax); it is
            returned non-negative. ``None`` draws any axis except 0.
        num_views: Strategy for ``V`` (default 1–4).
        corrections: Variance estimators to draw from.
        training: Strategy for the mode (default: training 3 times in 4).
        affine: Strategy for whether ``scale``/``offset`` are given (default: both drawn).
        stats_dtype: dtype of the statistics (default: float64 for float64 input, else float32).
        max_channels: Largest ``C``.

    Returns:
        A :class:`BNCase`.
    """
    dtype = np.dtype(draw(dtypes if dtypes is not None else float_dtypes()))
    rank = draw(st.integers(min_rank, max_rank))
    if axis is None:
        ax = draw(st.integers(1, rank - 1))
    else:
        if not -rank <= axis < rank or axis % rank == 0:
            raise ValueError(f"axis={axis} is not a valid channel axis for rank {rank}")
        ax = axis % rank
    views = draw(num_views if num_views is not None else st.integers(1, 4))
    per_view = draw(st.integers(1, 5))
    shape = [views * per_view]
    for i in range(1, rank):
        shape.append(draw(st.integers(1, max_channels)) if i == ax else draw(st.integers(1, 4)))
    c = shape[ax]
    n = per_view * int(np.prod([s for i, s in enumerate(shape) if i not in (0, ax)], dtype=np.int64))
    allowed = [k for k in corrections if k == "biased" or n > 1]
    if not allowed:  # n = 1 and only ÷(n−1) estimators requested: two samples per view instead
        per_view += 1
        shape[0] = views * per_view
        n *= per_view
        allowed = list(corrections)
    correction = draw(st.sampled_from(allowed))
    correction_factor(n, correction)  # sanity: never draw an invalid case

    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = _well_conditioned(rng, tuple(shape), ax, dtype)
    sdt = (
        np.dtype(stats_dtype)
        if stats_dtype is not None
        else (np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32))
    )
    step = draw(st.integers(0, 1000))
    stats = MomentumStats(
        mean=rng.uniform(-4.0, 4.0, c).astype(sdt),
        var=rng.uniform(0.25, 9.0, c).astype(sdt),
        step=np.asarray(step, np.int64),
        skipped=np.asarray(draw(st.integers(0, step)), np.int64),
    )
    alpha = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)))
    with_affine = draw(affine if affine is not None else st.booleans())
    kwargs: dict[str, Any] = {
        "alpha": alpha,
        "num_views": views,
        "axis": ax,
        "eps": draw(st.sampled_from([1e-5, 1e-3])),
        "scale": rng.uniform(0.5, 2.0, c).astype(sdt) if with_affine else None,
        "offset": rng.uniform(-1.0, 1.0, c).astype(sdt) if with_affine else None,
        "correction": correction,
        "training": draw(training if training is not None else st.sampled_from([True, True, True, False])),
    }
    return BNCase(x, stats, kwargs)


class EMACase(NamedTuple):
    """Inputs of :func:`m2t_core.ema_update`: ``fn(case.teacher, case.student, case.momentum)``."""

    teacher: dict[str, np.ndarray]
    student: dict[str, np.ndarray]
    momentum: float


@st.composite
def ema_cases(
    draw: st.DrawFn, *, dtypes: st.SearchStrategy[np.dtype] | None = None, max_keys: int = 4
) -> EMACase:
    """Two flat mappings with identical keys and shapes, and a momentum in [0, 1] (0 and 1 often).

    Keys look like parameter paths (``"layer0.weight"``), shapes have rank 0–3.
    """
    dtype = np.dtype(draw(dtypes if dtypes is not None else float_dtypes()))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    num = draw(st.integers(1, max_keys))
    teacher: dict[str, np.ndarray] = {}
    student: dict[str, np.ndarray] = {}
    for i in range(num):
        shape = tuple(draw(st.lists(st.integers(1, 5), max_size=3)))
        key = f"layer{i}.{draw(st.sampled_from(['weight', 'bias', 'scale', 'kernel']))}"
        teacher[key] = rng.standard_normal(shape).astype(dtype)
        student[key] = rng.standard_normal(shape).astype(dtype)
    momentum = draw(st.one_of(st.sampled_from([0.0, 1.0, 0.99]), st.floats(0.0, 1.0)))
    return EMACase(teacher, student, momentum)


@st.composite
def schedule_args(draw: st.DrawFn, *, constant: bool | None = None) -> tuple[float, float, int | None]:
    """``(start, end, total_steps)`` accepted by :func:`~m2t_core.cosine_schedule`.

    Args:
        draw: Supplied by hypothesis.
        constant: ``True`` for ``start == end`` (``total_steps`` sometimes ``None``), ``False`` for
            ``start != end``, ``None`` for either.
    """
    unit = st.floats(0.0, 1.0)
    is_const = draw(st.booleans()) if constant is None else constant
    start = draw(unit)
    if is_const:
        return start, start, draw(st.one_of(st.none(), st.integers(1, 10**6)))
    end = draw(unit.filter(lambda e: e != start))
    return start, end, draw(st.integers(1, 10**6))


class LossCase(NamedTuple):
    """Inputs of :func:`m2t_core.symmetric_loss`: ``fn(case.p1, case.p2, case.z1, case.z2)``."""

    p1: np.ndarray
    p2: np.ndarray
    z1: np.ndarray
    z2: np.ndarray


@st.composite
def loss_cases(draw: st.DrawFn, *, dtypes: st.SearchStrategy[np.dtype] | None = None) -> LossCase:
    """Four ``[B, D]`` arrays of non-zero vectors (norms between about 0.1 and 100)."""
    dtype = np.dtype(draw(dtypes if dtypes is not None else float_dtypes()))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b, dim = draw(st.integers(1, 8)), draw(st.integers(1, 16))

    def vectors() -> np.ndarray:
        v = rng.standard_normal((b, dim))
        v /= np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)
        v[np.linalg.norm(v, axis=-1) < 0.5] = 1.0 / np.sqrt(dim)  # replace degenerate draws
        return (v * rng.uniform(0.1, 100.0, (b, 1))).astype(dtype)

    return LossCase(vectors(), vectors(), vectors(), vectors())
