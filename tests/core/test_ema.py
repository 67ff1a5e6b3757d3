"""Properties of the reference teacher EMA."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2t_core import ema_update
from m2t_core.testing import assert_close, ema_cases


@given(ema_cases())
def test_ema_is_the_convex_mix(case):
    out = ema_update(case.teacher, case.student, case.momentum)
    assert set(out) == set(case.teacher)
    m = case.momentum
    for key, t in case.teacher.items():
        s = case.student[key]
        assert out[key].dtype == t.dtype
        assert out[key].shape == t.shape
        assert_close(out[key], m * t + (1 - m) * s)
        lo, hi = np.minimum(t, s), np.maximum(t, s)
        slack = np.finfo(t.dtype).eps * 4 * np.maximum(np.abs(t), np.abs(s))
        assert np.all((lo - slack <= out[key]) & (out[key] <= hi + slack))


@given(ema_cases())
def test_momentum_one_keeps_teacher_and_zero_copies_student(case):
    kept = ema_update(case.teacher, case.student, 1.0)
    copied = ema_update(case.teacher, case.student, 0.0)
    for key in case.teacher:
        np.testing.assert_array_equal(kept[key], case.teacher[key])
        np.testing.assert_array_equal(copied[key], case.student[key])


@given(ema_cases())
def test_inputs_are_not_mutated(case):
    before = {k: v.copy() for k, v in case.teacher.items()}
    ema_update(case.teacher, case.student, case.momentum)
    for key, value in before.items():
        np.testing.assert_array_equal(case.teacher[key], value)


def test_nested_mappings():
    teacher = {"backbone": {"w": np.ones(3)}, "head": {"b": np.zeros(2)}}
    student = {"backbone": {"w": np.zeros(3)}, "head": {"b": np.ones(2)}}
    out = ema_update(teacher, student, 0.75)
    assert_close(out["backbone"]["w"], np.full(3, 0.75))
    assert_close(out["head"]["b"], np.full(2, 0.25))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtype_is_kept(dtype):
    out = ema_update({"a": np.ones(4, dtype)}, {"a": np.zeros(4, dtype)}, 0.9)
    assert out["a"].dtype == dtype
    assert_close(out["a"], np.full(4, 0.9, dtype))


@st.composite
def _momenta(draw):
    return draw(
        st.one_of(
            st.floats(max_value=-1e-9, allow_nan=False),
            st.floats(min_value=1 + 1e-9, allow_nan=False, allow_infinity=True),
        )
    )


@given(_momenta())
def test_momentum_outside_unit_interval_is_rejected(momentum):
    with pytest.raises(ValueError, match="momentum must be in"):
        ema_update({"a": np.ones(1)}, {"a": np.ones(1)}, momentum)


@pytest.mark.parametrize(
    ("teacher", "student", "exc", "words"),
    [
        ({"a": np.ones(2), "b": np.ones(2)}, {"a": np.ones(2), "c": np.ones(2)}, ValueError, ["'b'", "'c'"]),
        ({"a": np.ones(2)}, {"a": np.ones(3)}, ValueError, ["'a'", "(2,)", "(3,)"]),
        ({"a": {"w": np.ones(2)}}, {"a": {"v": np.ones(2)}}, ValueError, ["a.w", "a.v"]),
        ({"a": np.ones(2, np.int64)}, {"a": np.ones(2, np.int64)}, TypeError, ["'a'", "int64"]),
        ([np.ones(2)], [np.ones(2)], TypeError, ["mappings", "list"]),
    ],
)
def test_bad_input_errors_name_the_keys(teacher, student, exc, words):
    with pytest.raises(exc) as info:
        ema_update(teacher, student, 0.5)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_nan_momentum_is_rejected():
    with pytest.raises(ValueError, match="nan"):
        ema_update({"a": np.ones(1)}, {"a": np.ones(1)}, float("nan"))
