"""Benchmark of the NumPy data pipeline and evaluation, each measured side by side with a baseline.

* ``two_views`` on a batch, vectorised, against the same operations applied one image at a time;
* ``knn_accuracy`` (weighted kNN, k=20, T=0.07) against scikit-learn's brute-force cosine kNN;
* ``linear_probe`` (L-BFGS in NumPy) against scikit-learn's ``LogisticRegression`` on the same
  objective and tolerance.

Run ``python benchmarks/bench_data.py`` (``--quick`` for smaller sizes); it prints a markdown table.
Timings are the median of ``--repeat`` runs in this process, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from m2t_core.augment import AugmentConfig, apply_view, sample_view_params, two_views
from m2t_core.evaluation import knn_accuracy, linear_probe, softmax_objective


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_views(n: int, side: int, channels: int, repeat: int) -> tuple[str, float, float]:
    rng = np.random.default_rng(0)
    x = rng.random((n, side, side, channels), dtype=np.float32)
    config = AugmentConfig.for_image_size(side, channels=channels)
    vec = median_time(lambda: two_views(x, np.random.default_rng(1), config), repeat)

    def per_image():
        g = np.random.default_rng(1)
        for view in (0, 1):
            p = sample_view_params(n, side, side, g, config, view=view)
            for i in range(n):
                apply_view(x[i : i + 1], p.select(i), config)

    loop = median_time(per_image, repeat)
    return f"two_views, {n}×{side}×{side}×{channels}", vec, loop


def bench_knn(n_train: int, n_test: int, dim: int, repeat: int) -> tuple[str, float, float]:
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    train = rng.standard_normal((n_train, dim)).astype(np.float32)
    test = rng.standard_normal((n_test, dim)).astype(np.float32)
    y_train, y_test = rng.integers(0, 10, n_train), rng.integers(0, 10, n_test)
    ours = median_time(lambda: knn_accuracy(train, y_train, test, y_test, k=20), repeat)

    def sk():
        clf = KNeighborsClassifier(n_neighbors=20, metric="cosine", algorithm="brute", weights="distance")
        clf.fit(train, y_train).score(test, y_test)

    return f"kNN k=20, {n_train} train × {n_test} test × {dim}-d", ours, median_time(sk, repeat)


def bench_probe(n: int, dim: int, classes: int, repeat: int) -> tuple[str, float, float, float]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((classes, dim))
    y = rng.integers(0, classes, n)
    x = centres[y] + 2.0 * rng.standard_normal((n, dim))
    yt = rng.integers(0, classes, n // 5)
    xt = centres[yt] + 2.0 * rng.standard_normal((n // 5, dim))
    l2, tol = 1e-3, 1e-6
    result = linear_probe(x, y, xt, yt, l2=l2, tol=tol)
    ours = median_time(lambda: linear_probe(x, y, xt, yt, l2=l2, tol=tol), repeat)
    xs = (x - result.mean) / result.scale

    def sk():
        return LogisticRegression(C=1.0 / (l2 * n), tol=tol, max_iter=10_000).fit(xs, y)

    theirs = median_time(sk, repeat)
    fitted = sk()
    gap = result.loss - softmax_objective(fitted.coef_.T, fitted.intercept_, xs, y, l2=l2)
    return f"linear probe, {n} × {dim}-d, {classes} classes", ours, theirs, gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 10 s)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    q = args.quick
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}\n")
    print("| what | this project | baseline | baseline / this project |")
    print("|---|---|---|---|")
    for n, side, c in [(256, 8, 1), (256 if not q else 64, 32, 3)]:
        name, vec, loop = bench_views(n, side, c, args.repeat)
        print(
            f"| {name} | {vec * 1e3:.1f} ms ({2 * n / vec:,.0f} views/s) "
            f"| {loop * 1e3:.1f} ms (one image at a time) | {loop / vec:.1f}× |"
        )
    name, ours, theirs = bench_knn(*((5000, 1000, 128) if q else (20000, 5000, 256)), args.repeat)
    print(
        f"| {name} | {ours * 1e3:.0f} ms | {theirs * 1e3:.0f} ms (scikit-learn, brute cosine) "
        f"| {theirs / ours:.1f}× |"
    )
    name, ours, theirs, gap = bench_probe(*((2000, 64, 10) if q else (10000, 256, 10)), args.repeat)
    print(
        f"| {name} | {ours * 1e3:.0f} ms | {theirs * 1e3:.0f} ms (scikit-learn lbfgs, same objective "
        f"and tol; our objective minus theirs {gap:+.1e}) | {theirs / ours:.1f}× |"
    )


if __name__ == "__main__":
    main()
