"""Weighted kNN and the linear probe: against brute-force and scikit-learn references, and their semantics."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2t_core import evaluation as ev
from m2t_core.evaluation import extract_features, knn_accuracy, knn_classify, linear_probe

seeds = st.integers(0, 2**32 - 1)


def unit_rows(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def brute_force_scores(train, labels, test, k, temperature, num_classes):
    """Class scores by the definition: sort every similarity (ties: lower index first), loop the k."""
    sim = unit_rows(test) @ unit_rows(train).T
    scores = np.zeros((len(test), num_classes))
    for r, row in enumerate(sim):
        order = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
        top = max(row[i] for i in order)
        for i in order:
            scores[r, labels[i]] += math.exp((row[i] - top) / temperature)
    return scores


@st.composite
def knn_cases(draw):
    rng = np.random.default_rng(draw(seeds))
    n, m, d = draw(st.integers(1, 40)), draw(st.integers(1, 20)), draw(st.integers(1, 6))
    c = draw(st.integers(1, 5))
    if draw(st.booleans()):  # a small integer grid: exact ties in similarity are common
        train = rng.integers(-2, 3, (n, d)).astype(np.float64)
        test = rng.integers(-2, 3, (m, d)).astype(np.float64)
    else:
        train = rng.standard_normal((n, d)) * rng.uniform(0.1, 10.0)
        test = rng.standard_normal((m, d))
    labels = rng.integers(0, c, n)
    k = draw(st.integers(1, n))
    temperature = draw(st.sampled_from([0.01, 0.07, 0.5, 10.0]))
    return train, labels, test, k, temperature, c


# --------------------------------------------------------------------------------------------------
# kNN


@settings(max_examples=100)
@given(case=knn_cases())
def test_knn_matches_brute_force(case):
    train, labels, test, k, temperature, c = case
    pred = knn_classify(train, labels, test, k=k, temperature=temperature, num_classes=c, chunk_size=10**6)
    scores = brute_force_scores(train, labels, test, k, temperature, c)
    best = scores.max(axis=1)
    # The prediction is a heaviest class; where that class is unique up to rounding, it is the one.
    assert np.all(scores[np.arange(len(test)), pred] >= best * (1 - 1e-9))
    clear = np.sum(scores >= best[:, None] * (1 - 1e-9), axis=1) == 1
    np.testing.assert_array_equal(pred[clear], np.argmax(scores, axis=1)[clear])
    assert pred.dtype == np.int64


@given(seed=seeds, chunk=st.integers(1, 30))
def test_knn_is_independent_of_the_chunk_size(seed, chunk):
    rng = np.random.default_rng(seed)
    train, test = rng.standard_normal((50, 8)), rng.standard_normal((25, 8))
    labels = rng.integers(0, 4, 50)
    np.testing.assert_array_equal(
        knn_classify(train, labels, test, chunk_size=chunk),
        knn_classify(train, labels, test, chunk_size=1000),
    )


@given(seed=seeds, classes=st.integers(2, 6), dim=st.integers(6, 16))
def test_knn_separates_clusters_perfectly(seed, classes, dim):
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:classes] * 5.0
    y_train, y_test = rng.integers(0, classes, 200), rng.integers(0, classes, 50)
    train = centres[y_train] + 0.3 * rng.standard_normal((200, dim))
    test = centres[y_test] + 0.3 * rng.standard_normal((50, dim))
    assert knn_accuracy(train, y_train, test, y_test, k=20) == 1.0


@given(seed=seeds, k=st.integers(1, 30))
def test_k1_and_a_tiny_temperature_give_the_nearest_neighbour(seed, k):
    rng = np.random.default_rng(seed)
    train, test = rng.standard_normal((30, 5)), rng.standard_normal((12, 5))
    labels = rng.integers(0, 3, 30)
    nearest = labels[np.argmax(unit_rows(test) @ unit_rows(train).T, axis=1)]
    np.testing.assert_array_equal(knn_classify(train, labels, test, k=1, temperature=5.0), nearest)
    # exp(s / 1e-4) overflows float64; the classifier must still return the nearest neighbour.
    np.testing.assert_array_equal(knn_classify(train, labels, test, k=k, temperature=1e-4), nearest)


@given(seed=seeds, k=st.sampled_from([1, 3, 5, 7, 9]))
def test_a_huge_temperature_is_a_majority_vote_of_the_k_nearest(seed, k):
    rng = np.random.default_rng(seed)
    train, test = rng.standard_normal((40, 4)), rng.standard_normal((15, 4))
    labels = rng.integers(0, 2, 40)  # two classes and odd k: no tied counts
    sim = unit_rows(test) @ unit_rows(train).T
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    majority = (labels[nearest].sum(axis=1) * 2 > k).astype(np.int64)
    np.testing.assert_array_equal(knn_classify(train, labels, test, k=k, temperature=1e6), majority)


def test_ties_are_broken_deterministically():
    a, b = [1.0, 0.0], [0.0, 1.0]
    train = np.array([a, a, b, b])
    test = np.array([a])
    # Equal similarity: the lower training index is the neighbour, whatever its label.
    assert knn_classify(train, np.array([0, 1, 0, 0]), test, k=1)[0] == 0
    assert knn_classify(train, np.array([1, 0, 0, 0]), test, k=1)[0] == 1
    assert knn_classify(train, np.array([2, 1, 0, 0]), test, k=1, num_classes=3)[0] == 2
    # Equally heavy classes: the lower label wins, whatever the index order.
    assert knn_classify(train, np.array([1, 0, 2, 2]), test, k=2)[0] == 0
    assert knn_classify(train, np.array([0, 1, 2, 2]), test, k=2)[0] == 0
    # Far neighbours weigh almost nothing at T = 0.07 but count at a large T.
    labels = np.array([0, 1, 2, 2])
    assert knn_classify(train, labels, test, k=4, temperature=0.07)[0] == 0
    assert knn_classify(train, labels, test, k=4, temperature=100.0)[0] == 2


def test_knn_accuracy_is_the_mean_of_correct_predictions():
    rng = np.random.default_rng(0)
    train, test = rng.standard_normal((30, 4)), rng.standard_normal((20, 4))
    y_train, y_test = rng.integers(0, 3, 30), rng.integers(0, 3, 20)
    pred = knn_classify(train, y_train, test, k=5)
    assert knn_accuracy(train, y_train, test, y_test, k=5) == np.mean(pred == y_test)
    # A test label beyond the training labels is a class no prediction can hit.
    assert knn_accuracy(train, y_train, test, np.full(20, 5), k=5) == 0.0


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"k": 0}, ValueError, "k must be >= 1"),
        ({"k": 31}, ValueError, "k=31 exceeds the 30 training features"),
        ({"k": 2.5}, TypeError, "k must be an int"),
        ({"temperature": 0.0}, ValueError, "temperature must be a finite number > 0"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"num_classes": 2}, ValueError, "num_classes=2 but the labels reach 2"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
    ],
)
def test_knn_rejects_bad_arguments(kwargs, error, message):
    rng = np.random.default_rng(0)
    with pytest.raises(error, match=message):
        knn_classify(rng.standard_normal((30, 3)), np.arange(30) % 3, rng.standard_normal((4, 3)), **kwargs)


def test_knn_rejects_mismatched_inputs():
    x = np.zeros((10, 3))
    y = np.arange(10) % 2
    with pytest.raises(ValueError, match="train_labels has 9 entries but train_features has 10 rows"):
        knn_classify(x, y[:9], x)
    with pytest.raises(ValueError, match="3 dimensions but test_features have 4"):
        knn_classify(x, y, np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"2-D \[N, D\]"):
        knn_classify(x, y, np.zeros(3))
    with pytest.raises(TypeError, match="1-D integer array"):
        knn_classify(x, y.astype(float), x)
    with pytest.raises(ValueError, match="1 non-finite"):
        knn_classify(x, y, np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(ValueError, match="test_labels has 3 entries but test_features has 10 rows"):
        knn_accuracy(x, y, x, y[:3], k=3)
    with pytest.raises(ValueError, match="num_classes=2 but the labels reach 4"):
        knn_accuracy(x, y, x, np.full(10, 4), k=3, num_classes=2)


# --------------------------------------------------------------------------------------------------
# linear probe


def standardise(train, test):
    mean, std = train.mean(0), train.std(0)
    std[std <= 1e-12] = 1.0
    return (train - mean) / std, (test - mean) / std


@st.composite
def probe_cases(draw):
    rng = np.random.default_rng(draw(seeds))
    c, d = draw(st.integers(3, 6)), draw(st.integers(2, 12))
    n, m = draw(st.integers(30, 150)), 40
    centres = rng.standard_normal((c, d)) * draw(st.sampled_from([0.5, 1.5, 4.0]))
    y, yt = rng.integers(0, c, n), rng.integers(0, c, m)
    y[:c] = np.arange(c)  # every class present in training
    x = centres[y] + rng.standard_normal((n, d)) + 3.0  # an offset: standardisation matters
    xt = centres[yt] + rng.standard_normal((m, d)) + 3.0
    l2 = draw(st.sampled_from([1e-3, 1e-2, 1e-1]))
    return x, y, xt, yt, l2, c


@settings(max_examples=20)
@given(case=probe_cases())
def test_linear_probe_matches_scikit_learn(case):
    from sklearn.linear_model import LogisticRegression

    x, y, xt, yt, l2, _ = case
    result = linear_probe(x, y, xt, yt, l2=l2, tol=1e-8)
    assert result.converged
    xs, xts = standardise(x, xt)
    sk = LogisticRegression(C=1.0 / (l2 * len(x)), tol=1e-8, max_iter=20_000).fit(xs, y)
    sk_loss = ev.softmax_objective(sk.coef_.T, sk.intercept_, xs, y, l2=l2)
    # The same convex objective: both solvers reach its minimum.
    assert result.loss == pytest.approx(sk_loss, rel=1e-6, abs=1e-9)
    assert result.loss <= sk_loss + 1e-9
    assert ev.softmax_objective(result.weights, result.bias, xs, y, l2=l2) == pytest.approx(
        result.loss, rel=1e-12
    )
    sk_acc = float(np.mean(sk.predict(xts) == yt))
    assert abs(result.accuracy - sk_acc) <= 1.0 / len(yt) + 1e-12
    np.testing.assert_allclose(result.weights, sk.coef_.T, atol=1e-3 * max(1.0, np.abs(sk.coef_).max()))


def test_linear_probe_on_digits_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    from m2t_core.datasets import load_digits

    data = load_digits()
    x, xt = (
        data.train_images.reshape(len(data.train_images), -1),
        data.test_images.reshape(len(data.test_images), -1),
    )
    l2 = 1e-3
    result = linear_probe(x, data.train_labels, xt, data.test_labels, l2=l2, tol=1e-7)
    xs, xts = standardise(x.astype(np.float64), xt.astype(np.float64))
    sk = LogisticRegression(C=1.0 / (l2 * len(x)), tol=1e-8, max_iter=20_000).fit(xs, data.train_labels)
    sk_loss = ev.softmax_objective(sk.coef_.T, sk.intercept_, xs, data.train_labels, l2=l2)
    assert result.loss == pytest.approx(sk_loss, rel=1e-6)
    assert abs(result.accuracy - sk.score(xts, data.test_labels)) <= 1.0 / len(xt)
    assert result.accuracy > 0.93


@given(seed=seeds, classes=st.integers(2, 5))
def test_linear_probe_learns_separable_data(seed, classes):
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[:classes] * 6.0
    y, yt = np.arange(120) % classes, rng.integers(0, classes, 40)
    x = centres[y] + 0.3 * rng.standard_normal((120, 8))
    xt = centres[yt] + 0.3 * rng.standard_normal((40, 8))
    result = linear_probe(x, y, xt, yt)
    assert result.train_accuracy == 1.0
    assert result.accuracy == 1.0
    assert float(np.mean(result.predict(xt) == yt)) == result.accuracy
    assert result.decision_function(xt).shape == (40, classes)


def test_linear_probe_is_deterministic():
    rng = np.random.default_rng(0)
    x, xt = rng.standard_normal((200, 10)), rng.standard_normal((50, 10))
    y, yt = rng.integers(0, 4, 200), rng.integers(0, 4, 50)
    a = linear_probe(x, y, xt, yt)
    b = linear_probe(x.copy(), y.copy(), xt.copy(), yt.copy())
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.bias, b.bias)
    assert a.loss == b.loss
    assert a.iterations == b.iterations


@given(seed=seeds)
def test_objective_gradient_matches_finite_differences(seed):
    rng = np.random.default_rng(seed)
    n, d, c = 12, 3, 4
    x = rng.standard_normal((n, d))
    onehot = np.eye(c)[rng.integers(0, c, n)]
    theta = rng.standard_normal(d * c + c)
    _, grad = ev._softmax_loss_grad(theta, x, onehot, 0.3)
    h = 1e-6
    numeric = np.array(
        [
            (
                ev._softmax_loss_grad(theta + h * e, x, onehot, 0.3)[0]
                - ev._softmax_loss_grad(theta - h * e, x, onehot, 0.3)[0]
            )
            / (2 * h)
            for e in np.eye(theta.size)
        ]
    )
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_softmax_regression_stops_at_a_small_gradient():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((80, 5)), rng.integers(0, 3, 80)
    w, b, _, iters, converged = ev.softmax_regression(x, y, l2=1e-2, tol=1e-9)
    assert converged
    onehot = np.eye(3)[y]
    _, grad = ev._softmax_loss_grad(np.concatenate([w.ravel(), b]), x, onehot, 1e-2)
    assert np.max(np.abs(grad)) <= 1e-9
    assert 0 < iters < 1000
    _, _, _, iters_capped, converged_capped = ev.softmax_regression(x, y, l2=1e-2, tol=1e-9, max_iter=2)
    assert iters_capped == 2
    assert not converged_capped


def test_linear_probe_handles_a_constant_feature():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 3))
    x[:, 1] = 7.0
    y = (x[:, 0] > 0).astype(int)
    result = linear_probe(x, y, x, y)
    assert result.scale[1] == 1.0
    assert np.all(np.isfinite(result.weights))
    assert result.accuracy > 0.9


def test_linear_probe_rejects_bad_input():
    x, y = np.zeros((10, 3)), np.arange(10) % 2
    with pytest.raises(ValueError, match="train_y has 9 entries but train_x has 10 rows"):
        linear_probe(x, y[:9], x, y)
    with pytest.raises(ValueError, match="train_x has 3 dimensions but test_x has 2"):
        linear_probe(x, y, np.zeros((4, 2)), y[:4])
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0"):
        linear_probe(x, y, x, y, l2=-1.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        linear_probe(x, np.zeros(10, int), x, np.zeros(10, int))
    with pytest.raises(ValueError, match="tol must be > 0"):
        linear_probe(x, y, x, y, tol=0.0)
    with pytest.raises(ValueError, match="test_x has 1 non-finite"):
        linear_probe(x, y, np.array([[np.inf, 0.0, 0.0]]), y[:1])


# --------------------------------------------------------------------------------------------------
# feature extraction


@given(n=st.integers(1, 50), batch=st.integers(1, 20))
def test_extract_features_batches_in_order(n, batch):
    images = np.arange(n * 4, dtype=np.float64).reshape(n, 2, 2)
    calls = []

    def encode(x):
        calls.append(len(x))
        return x * 2.0

    out = extract_features(encode, images, batch_size=batch)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, (images * 2).reshape(n, 4).astype(np.float32))
    assert calls == [min(batch, n - i) for i in range(0, n, batch)]


def test_extract_features_rejects_empty_input():
    with pytest.raises(ValueError, match="no rows"):
        extract_features(lambda x: x, np.zeros((0, 3)))
