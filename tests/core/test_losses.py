"""Properties of the BYOL regression loss."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2t_core import normalize, regression_loss, symmetric_loss
from m2t_core.testing import assert_close, loss_cases

f64 = st.just(np.dtype(np.float64))


@given(loss_cases())
def test_loss_in_range(case):
    loss = float(symmetric_loss(*case))
    assert -1e-5 <= loss <= 8 + 1e-5
    per = regression_loss(case.p1, case.z2)
    assert per.shape == case.p1.shape[:-1]
    assert np.all((per >= -1e-5) & (per <= 4 + 1e-5))


@given(loss_cases(dtypes=f64), st.floats(0.01, 100.0), st.floats(0.01, 100.0))
def test_zero_when_aligned(case, c1, c2):
    assert_close(symmetric_loss(case.p1, case.p2, c1 * case.p2, c2 * case.p1), 0.0, atol=1e-12)


@given(loss_cases(dtypes=f64))
def test_opposite_vectors_give_the_maximum(case):
    assert_close(symmetric_loss(case.p1, case.p2, -case.p2, -case.p1), 8.0)


@given(loss_cases(dtypes=f64), st.floats(0.01, 100.0), st.floats(0.01, 100.0))
def test_scale_invariant(case, a, b):
    base = symmetric_loss(*case)
    assert_close(symmetric_loss(a * case.p1, b * case.p2, case.z1 / a, case.z2 * b), base)


@given(loss_cases(dtypes=f64))
def test_zero_iff_aligned(case):
    loss = float(symmetric_loss(*case))
    cos12 = np.sum(normalize(case.p1) * normalize(case.z2), -1)
    cos21 = np.sum(normalize(case.p2) * normalize(case.z1), -1)
    aligned = np.all(cos12 > 1 - 1e-12) and np.all(cos21 > 1 - 1e-12)
    assert (loss < 1e-10) == bool(aligned)


@given(loss_cases(dtypes=f64))
def test_matches_squared_distance_of_unit_vectors(case):
    def sq(p, z):
        pu = p / np.linalg.norm(p, axis=-1, keepdims=True)
        zu = z / np.linalg.norm(z, axis=-1, keepdims=True)
        return np.sum((pu - zu) ** 2, -1)

    assert_close(symmetric_loss(*case), np.mean(sq(case.p1, case.z2) + sq(case.p2, case.z1)))


def test_normalize_keeps_zero_vectors_and_dtype():
    x = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
    out = normalize(x)
    assert out.dtype == np.float32
    assert_close(out, np.array([[0.0, 0.0], [0.6, 0.8]], np.float32))


def test_half_inputs_compute_in_float32():
    rng = np.random.default_rng(0)
    p, z = rng.standard_normal((4, 8)).astype(np.float16), rng.standard_normal((4, 8)).astype(np.float16)
    assert regression_loss(p, z).dtype == np.float32


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda: regression_loss(np.ones((2, 3)), np.ones((2, 4))), ValueError, ["(2, 3)", "(2, 4)"]),
        (
            lambda: symmetric_loss(np.ones((2, 3)), np.ones((3, 3)), np.ones((2, 3)), np.ones((2, 3))),
            ValueError,
            ["p2", "(3, 3)"],
        ),
        (
            lambda: regression_loss(np.ones((2, 3), np.int32), np.ones((2, 3))),
            TypeError,
            ["floating", "int32"],
        ),
        (lambda: normalize(np.float32(1.0)), ValueError, ["rank >= 1"]),
    ],
)
def test_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))
