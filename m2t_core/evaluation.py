r"""Evaluating frozen features the way self-supervised learning papers do: weighted kNN and a linear probe.

Both work on NumPy features — e.g. the teacher backbone's outputs in evaluation mode, collected with
:func:`extract_features` — and need no framework.

**Weighted kNN** (the protocol of InstDisc, used by DINO and most later work): L2-normalise every
feature, take the ``k`` training features with the largest cosine similarity ``s`` to a test feature,
give each the weight ``exp(s / T)``, sum the weights per class and predict the heaviest class::

    score_c(x) = Σ_{i ∈ top-k(x)} [y_i = c] · exp(cos(x, x_i) / T)        prediction = argmax_c score_c

The defaults are DINO's ``k = 20``, ``T = 0.07``. Test rows are processed in chunks, so memory stays
at ``chunk_size × N_train`` similarities, computed in the features' precision (float32 features:
float32 products; float64: float64). Ties are broken deterministically: among equally similar
training features the one with the lower index is a neighbour first, and among equally heavy classes
the lower label wins.

**Linear probe**: multinomial logistic regression on the frozen features, standardised with the
training features' mean and std, minimising the convex objective::

    L(W, b) = mean_i CE(softmax(x_i·W + b), y_i) + (l2 / 2)·‖W‖²            (the bias is not penalised)

with full-batch L-BFGS and a backtracking (Armijo) line search, in float64, from zero — so the result
depends on the data alone: no seed, no batch order. It is scikit-learn's
``LogisticRegression(C=1 / (l2 · N))`` objective.

References:
    Wu, Xiong, Yu, Lin. *Unsupervised Feature Learning via Non-Parametric Instance Discrimination.*
    CVPR 2018 (the weighted kNN, T = 0.07).
    Caron et al. *Emerging Properties in Self-Supervised Vision Transformers.* ICCV 2021 (DINO; kNN
    with k = 20, T = 0.07).
    Nocedal, Wright. *Numerical Optimization*, 2nd ed., 2006, algorithm 7.4 (L-BFGS two-loop recursion).
    Hager, Zhang. *A New Conjugate Gradient Method with Guaranteed Descent and an Efficient Line
    Search.* SIAM J. Optim. 16(1), 2005 (the approximate Wolfe conditions).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "LinearProbeResult",
    "extract_features",
    "knn_accuracy",
    "knn_classify",
    "linear_probe",
    "softmax_objective",
    "softmax_regression",
]


# --------------------------------------------------------------------------------------------------
# input checks


def _features(x: Any, name: str, dtype: Any = np.float64) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {a.shape}")
    a = a.astype(dtype)
    bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    if bad:
        raise ValueError(f"{name} has {bad} non-finite values (NaN or inf)")
    return a


def _labels(y: Any, rows: int, name: str, rows_name: str) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be a 1-D integer array, got {a.dtype} of shape {a.shape}")
    if a.shape[0] != rows:
        raise ValueError(f"{name} has {a.shape[0]} entries but {rows_name} has {rows} rows")
    if a.size and a.min() < 0:
        raise ValueError(f"{name} must be >= 0, got min {a.min()}")
    return a.astype(np.int64)


def _num_classes(num_classes: int | None, *labels: np.ndarray) -> int:
    top = max((int(y.max()) for y in labels if y.size), default=-1)
    if num_classes is None:
        return top + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be an int or None, got {num_classes!r}")
    if num_classes <= top:
        raise ValueError(f"num_classes={num_classes} but the labels reach {top}")
    return int(num_classes)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), x.dtype.type(1e-12))


# --------------------------------------------------------------------------------------------------
# kNN


def _top_k(sim: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's ``k`` largest values; ties at the boundary go to the lower index."""
    n = sim.shape[1]
    if k == n:
        return np.broadcast_to(np.arange(n), sim.shape)
    top = np.argpartition(sim, n - k, axis=1)[:, n - k :]
    kth = np.take_along_axis(sim, top, axis=1).min(axis=1)
    # argpartition picks arbitrarily among values equal to the k-th largest; only rows with such a
    # tie need a (stable, so lower index first) full sort.
    tied = np.flatnonzero(np.count_nonzero(sim >= kth[:, None], axis=1) > k)
    if tied.size:
        top[tied] = np.argsort(-sim[tied], axis=1, kind="stable")[:, :k]
    return top


def _check_knn(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    k: int,
    temperature: float,
    num_classes: int | None,
    chunk_size: int,
):
    # Similarities in the features' own precision (float32 or wider): float32 features get float32
    # matrix products, twice as fast as float64, and rankings that differ only within rounding.
    dtypes = [np.asarray(a).dtype for a in (train_features, test_features)]
    numeric = all(d.kind in "fiu" for d in dtypes)  # otherwise _features names the bad input
    dtype = np.result_type(*dtypes, np.float32) if numeric else np.dtype(np.float64)
    train = _features(train_features, "train_features", dtype)
    test = _features(test_features, "test_features", dtype)
    if train.shape[1] != test.shape[1]:
        raise ValueError(
            f"train_features have {train.shape[1]} dimensions but test_features have {test.shape[1]}"
        )
    labels = _labels(train_labels, train.shape[0], "train_labels", "train_features")
    k = _positive_int(k, "k")
    if k > train.shape[0]:
        raise ValueError(f"k={k} exceeds the {train.shape[0]} training features")
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return (
        train,
        labels,
        test,
        k,
        t,
        _num_classes(num_classes, labels),
        _positive_int(chunk_size, "chunk_size"),
    )


def knn_classify(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Weighted kNN predictions on L2-normalised features (cosine similarity, weights ``exp(s/T)``).

    Args:
        train_features: ``[N, D]`` features of the labelled (training) set.
        train_labels: ``[N]`` integer labels in ``[0, num_classes)``.
        test_features: ``[M, D]`` features to classify.
        k: Number of neighbours, ``1 <= k <= N``.
        temperature: ``T > 0``; small ``T`` lets the nearest neighbour decide, large ``T`` tends to an
            unweighted majority vote of the ``k``.
        num_classes: Number of classes (default: largest training label + 1).
        chunk_size: Test rows per similarity block (memory ``chunk_size × N`` similarities).

    Returns:
        ``[M]`` int64 predicted labels.

    Raises:
        ValueError: shapes or lengths that do not match, ``k`` outside ``[1, N]``, ``T <= 0``,
            non-finite features, or labels beyond ``num_classes``.
        TypeError: non-integer labels or ``k``.

    References:
        Wu et al. CVPR 2018 (instance discrimination); Caron et al. ICCV 2021 (DINO).
    """
    train, labels, test, k, t, c, chunk = _check_knn(
        train_features, train_labels, test_features, k, temperature, num_classes, chunk_size
    )
    train = _l2_normalize(train)
    test = _l2_normalize(test)
    preds = np.empty(test.shape[0], np.int64)
    for start in range(0, test.shape[0], chunk):  # bounded memory: one block of rows at a time
        sim = test[start : start + chunk] @ train.T
        rows = sim.shape[0]
        nbr = _top_k(sim, k)
        s = np.take_along_axis(sim, nbr, axis=1)
        # exp(s/T) overflows float64 for T below ~0.0014; a per-row factor exp(-max/T) changes no
        # argmax, so weigh by exp((s - max)/T) in [0, 1].
        w = np.exp((s - s.max(axis=1, keepdims=True)).astype(np.float64) / t)
        flat = (np.arange(rows)[:, None] * c + labels[nbr]).ravel()
        votes = np.bincount(flat, weights=w.ravel(), minlength=rows * c).reshape(rows, c)
        preds[start : start + rows] = np.argmax(votes, axis=1)
    return preds


def knn_accuracy(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy of :func:`knn_classify` on labelled test features, in [0, 1].

    Args:
        train_features: ``[N, D]``.
        train_labels: ``[N]``.
        test_features: ``[M, D]``.
        test_labels: ``[M]``.
        k: Number of neighbours.
        temperature: Weight temperature ``T``.
        num_classes: Number of classes (default: largest training label + 1; test labels beyond it
            simply count as misses).
        chunk_size: Test rows per similarity block.

    Returns:
        The fraction of test rows predicted correctly.

    Raises:
        ValueError: as :func:`knn_classify`, or ``test_labels`` of the wrong length.
    """
    pred = knn_classify(
        train_features,
        train_labels,
        test_features,
        k=k,
        temperature=temperature,
        num_classes=num_classes,
        chunk_size=chunk_size,
    )
    y = _labels(test_labels, pred.shape[0], "test_labels", "test_features")
    if num_classes is not None:
        _num_classes(num_classes, y)  # a test label beyond the given class count is an error too
    return float(np.mean(pred == y)) if y.size else 0.0


# --------------------------------------------------------------------------------------------------
# linear probe


def _softmax_loss_grad(theta: np.ndarray, x: np.ndarray, onehot: np.ndarray, l2: float):
    d, c = x.shape[1], onehot.shape[1]
    w = theta[: d * c].reshape(d, c)
    b = theta[d * c :]
    z = x @ w + b
    z -= z.max(axis=1, keepdims=True)
    logsum = np.log(np.exp(z).sum(axis=1, keepdims=True))
    logp = z - logsum
    n = x.shape[0]
    loss = -np.sum(onehot * logp) / n + 0.5 * l2 * np.sum(w * w)
    r = (np.exp(logp) - onehot) / n
    grad = np.concatenate([(x.T @ r + l2 * w).ravel(), r.sum(axis=0)])
    return float(loss), grad


def softmax_objective(weights: Any, bias: Any, features: Any, labels: Any, *, l2: float) -> float:
    """``mean_i CE(softmax(x_i·W + b), y_i) + (l2/2)·‖W‖²`` — the objective the probe minimises.

    Args:
        weights: ``[D, C]``.
        bias: ``[C]``.
        features: ``[N, D]`` (already standardised, if the weights are for standardised features).
        labels: ``[N]`` integers in ``[0, C)``.
        l2: L2 strength on ``W``.

    Returns:
        The objective's value.
    """
    x = _features(features, "features")
    w = np.asarray(weights, np.float64)
    b = np.asarray(bias, np.float64).ravel()
    if w.shape != (x.shape[1], b.size):
        raise ValueError(f"weights {w.shape} do not fit features {x.shape} and bias {b.shape}")
    y = _labels(labels, x.shape[0], "labels", "features")
    onehot = np.eye(b.size)[y]
    return _softmax_loss_grad(np.concatenate([w.ravel(), b]), x, onehot, float(l2))[0]


def softmax_regression(
    features: Any,
    labels: Any,
    *,
    l2: float = 1e-4,
    num_classes: int | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    history: int = 10,
) -> tuple[np.ndarray, np.ndarray, float, int, bool]:
    """Fit multinomial logistic regression by full-batch L-BFGS (deterministic, float64, from zero).

    Minimises :func:`softmax_objective` on ``features`` as given (no standardisation here).

    Args:
        features: ``[N, D]``.
        labels: ``[N]`` integers.
        l2: L2 strength on the weights (``>= 0``; ``> 0`` makes the minimiser unique).
        num_classes: Number of classes (default: largest label + 1).
        max_iter: Most L-BFGS iterations.
        tol: Stop when every gradient entry is at most ``tol`` in absolute value.
        history: L-BFGS memory (pairs of steps and gradient changes kept).

    Returns:
        ``(weights [D, C], bias [C], objective, iterations, converged)``.

    Raises:
        ValueError: bad shapes, ``l2 < 0``, ``tol <= 0``, or fewer than 2 classes.
    """
    x = _features(features, "features")
    y = _labels(labels, x.shape[0], "labels", "features")
    c = _num_classes(num_classes, y)
    if c < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got num_classes={c}")
    if x.shape[0] == 0:
        raise ValueError("features has no rows")
    l2 = float(l2)
    if not (math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    if not float(tol) > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    max_iter = _positive_int(max_iter, "max_iter")
    history = _positive_int(history, "history")
    d = x.shape[1]
    onehot = np.eye(c)[y]

    theta = np.zeros(d * c + c)
    f, g = _softmax_loss_grad(theta, x, onehot, l2)
    steps: list[np.ndarray] = []
    changes: list[np.ndarray] = []
    converged = bool(np.max(np.abs(g)) <= tol)
    it = 0
    while not converged and it < max_iter:
        it += 1
        # Two-loop recursion: direction = −H·g with H the L-BFGS inverse-Hessian estimate.
        q = g.copy()
        coeffs = []
        for s, yv in zip(reversed(steps), reversed(changes), strict=True):
            rho = 1.0 / float(yv @ s)
            a = rho * float(s @ q)
            q -= a * yv
            coeffs.append((rho, a))
        if steps:
            q *= float(steps[-1] @ changes[-1]) / float(changes[-1] @ changes[-1])
        for (s, yv), (rho, a) in zip(zip(steps, changes, strict=True), reversed(coeffs), strict=True):
            q += (a - rho * float(yv @ q)) * s
        direction = -q
        slope = float(g @ direction)
        if slope >= 0:  # not a descent direction (numerical trouble): restart from the gradient
            steps.clear()
            changes.clear()
            direction, slope = -g, -float(g @ g)
        step = 1.0 if steps else min(1.0, 1.0 / max(float(np.max(np.abs(g))), 1e-12))
        for _ in range(60):  # backtracking line search
            f_new, g_new = _softmax_loss_grad(theta + step * direction, x, onehot, l2)
            if f_new <= f + 1e-4 * step * slope:  # Armijo: sufficient decrease
                break
            # Near the minimum the decrease Armijo asks for falls below float64's resolution of f;
            # then accept a step that keeps f within rounding and shrinks the slope along the
            # direction (Hager and Zhang's approximate Wolfe conditions), so tight tolerances work.
            slope_new = float(g_new @ direction)
            if f_new <= f + 1e-12 * abs(f) and 0.9 * slope <= slope_new <= -0.8 * slope:
                break
            step *= 0.5
        else:
            break  # no acceptable step at machine precision: the minimum is reached numerically
        s_vec = step * direction
        y_vec = g_new - g
        theta, f, g = theta + s_vec, f_new, g_new
        if float(y_vec @ s_vec) > 1e-12 * float(np.linalg.norm(y_vec) * np.linalg.norm(s_vec)):
            steps.append(s_vec)
            changes.append(y_vec)
            if len(steps) > history:
                steps.pop(0)
                changes.pop(0)
        converged = bool(np.max(np.abs(g)) <= tol)
    w = theta[: d * c].reshape(d, c)
    return w, theta[d * c :].copy(), f, it, converged


class LinearProbeResult(NamedTuple):
    """What :func:`linear_probe` returns.

    Attributes:
        accuracy: Test accuracy in [0, 1].
        train_accuracy: Training accuracy.
        loss: Final value of the training objective.
        weights: ``[D, C]`` weights on standardised features.
        bias: ``[C]``.
        mean: ``[D]`` training-feature mean used to standardise.
        scale: ``[D]`` training-feature std used to standardise (1 where a feature is constant).
        iterations: L-BFGS iterations run.
        converged: Whether the gradient tolerance was met.
    """

    accuracy: float
    train_accuracy: float
    loss: float
    weights: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    iterations: int
    converged: bool

    def decision_function(self, features: Any) -> np.ndarray:
        """Logits ``[N, C]`` for raw (unstandardised) features."""
        x = _features(features, "features")
        return ((x - self.mean) / self.scale) @ self.weights + self.bias

    def predict(self, features: Any) -> np.ndarray:
        """Predicted labels ``[N]`` for raw features."""
        return np.argmax(self.decision_function(features), axis=1)


def linear_probe(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    l2: float = 1e-4,
    max_iter: int = 1000,
    tol: float = 1e-6,
    num_classes: int | None = None,
) -> LinearProbeResult:
    """Linear probe: logistic regression on standardised frozen features, scored on the test set.

    The features are standardised with the training set's per-dimension mean and std (a constant
    dimension gets std 1), then :func:`softmax_regression` fits ``W, b``. Deterministic: the same
    features give the same bits on the same machine and BLAS.

    Args:
        train_x: ``[N, D]`` training features.
        train_y: ``[N]`` training labels.
        test_x: ``[M, D]`` test features.
        test_y: ``[M]`` test labels.
        l2: L2 strength on the weights (scikit-learn's ``C = 1 / (l2 · N)``).
        max_iter: Most L-BFGS iterations.
        tol: Gradient tolerance (max absolute entry).
        num_classes: Number of classes (default: inferred from both label arrays).

    Returns:
        A :class:`LinearProbeResult` (``.accuracy`` is the test accuracy).

    Raises:
        ValueError: lengths or dimensions that do not match, or a bad ``l2``/``tol``.
    """
    xtr = _features(train_x, "train_x")
    xte = _features(test_x, "test_x")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train_x has {xtr.shape[1]} dimensions but test_x has {xte.shape[1]}")
    ytr = _labels(train_y, xtr.shape[0], "train_y", "train_x")
    yte = _labels(test_y, xte.shape[0], "test_y", "test_x")
    c = _num_classes(num_classes, ytr, yte)
    mean = xtr.mean(axis=0)
    scale = xtr.std(axis=0)
    scale[scale <= 1e-12 * np.maximum(np.abs(mean), 1.0)] = 1.0
    w, b, loss, iters, converged = softmax_regression(
        (xtr - mean) / scale, ytr, l2=l2, num_classes=c, max_iter=max_iter, tol=tol
    )
    train_acc = float(np.mean(np.argmax(((xtr - mean) / scale) @ w + b, axis=1) == ytr))
    test_acc = float(np.mean(np.argmax(((xte - mean) / scale) @ w + b, axis=1) == yte)) if yte.size else 0.0
    return LinearProbeResult(test_acc, train_acc, loss, w, b, mean, scale, iters, converged)


def extract_features(
    encode: Callable[[np.ndarray], Any], images: np.ndarray, *, batch_size: int = 256
) -> np.ndarray:
    """Run ``encode`` over ``images`` in order, in batches, and stack the outputs as ``[N, D]`` float32.

    ``encode`` takes a NumPy batch and returns anything ``numpy.asarray`` accepts (move torch tensors
    to the CPU first: ``lambda x: model(torch.from_numpy(x)).cpu()``). Outputs with more than two axes
    are flattened per row.

    Args:
        encode: The feature function, e.g. the teacher backbone in evaluation mode.
        images: ``[N, ...]`` inputs.
        batch_size: Rows per call.

    Returns:
        ``[N, D]`` float32 features.
    """
    batch_size = _positive_int(batch_size, "batch_size")
    x = np.asarray(images)
    outs = [
        np.asarray(encode(x[i : i + batch_size])).reshape(min(batch_size, x.shape[0] - i), -1)
        for i in range(0, x.shape[0], batch_size)
    ]
    if not outs:
        raise ValueError("images has no rows to encode")
    return np.concatenate(outs).astype(np.float32)
