"""Properties of the cosine schedules."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2t_core import cosine_schedule, stats_momentum_schedule, teacher_momentum_schedule
from m2t_core.testing import assert_close, schedule_args


@given(schedule_args(constant=False))
def test_endpoints(args):
    start, end, total = args
    f = cosine_schedule(start, end, total)
    assert_close(f(0), start)
    assert f(total) == end  # exactly: cos(π) = −1, so nothing is left of the mix
    assert f(total + 1) == end
    assert f(10 * total) == end
    assert f(-5) == f(0)


@given(schedule_args(constant=False), st.data())
def test_monotone_between_endpoints(args, data):
    start, end, total = args
    f = cosine_schedule(start, end, total)
    ks = np.sort(np.asarray(data.draw(st.lists(st.integers(-2, total + 2), min_size=2, max_size=20))))
    values = np.asarray([f(int(k)) for k in ks])
    steps = np.diff(values) * math.copysign(1.0, end - start)
    assert np.all(steps >= -1e-15)
    assert np.all((min(start, end) - 1e-15 <= values) & (values <= max(start, end) + 1e-15))


@given(schedule_args(), st.lists(st.integers(-3, 10**6), min_size=1, max_size=10))
def test_array_steps_match_scalar_steps(args, steps):
    f = cosine_schedule(*args)
    out = f(np.asarray(steps))
    assert out.shape == (len(steps),)
    assert_close(out, np.asarray([f(k) for k in steps]))


@given(schedule_args(constant=True), st.integers(-10, 10**7))
def test_constant_schedule(args, step):
    start, end, total = args
    assert cosine_schedule(start, end, total)(step) == start


def test_midpoint_is_the_average():
    f = cosine_schedule(0.2, 0.6, 100)
    assert_close(f(50), 0.4)


def test_named_schedules_defaults():
    m = teacher_momentum_schedule(1000)
    a = stats_momentum_schedule(1000)
    assert_close(m(0), 0.99)
    assert m(1000) == 1.0
    assert a(0) == 0.0
    assert a(1000) == 1.0
    assert_close(a(500), 0.5)
    assert (m.start, m.end, m.total_steps) == (0.99, 1.0, 1000)
    assert stats_momentum_schedule(None, alpha_start=0.9, alpha_end=0.9)(123) == 0.9
    assert teacher_momentum_schedule(None, base_momentum=0.996, final_momentum=0.996)(7) == 0.996


@pytest.mark.parametrize(
    ("build", "exc", "words"),
    [
        (lambda: cosine_schedule(0.0, 1.0, 0), ValueError, ["total_steps", "0"]),
        (lambda: cosine_schedule(0.0, 1.0, -3), ValueError, ["total_steps", "-3"]),
        (lambda: cosine_schedule(0.0, 1.0, None), ValueError, ["total_steps is required"]),
        (lambda: cosine_schedule(0.0, 1.5, 10), ValueError, ["end", "1.5"]),
        (lambda: cosine_schedule(-0.1, 1.0, 10), ValueError, ["start", "-0.1"]),
        (lambda: cosine_schedule(0.0, 1.0, 10.5), TypeError, ["total_steps", "10.5"]),
        (lambda: teacher_momentum_schedule(10, base_momentum=1.2), ValueError, ["base_momentum", "1.2"]),
        (lambda: stats_momentum_schedule(0), ValueError, ["total_steps", "0"]),
        (lambda: stats_momentum_schedule(None), ValueError, ["alpha_start", "alpha_end"]),
    ],
)
def test_bad_arguments_fail_when_built(build, exc, words):
    with pytest.raises(exc) as info:
        build()
    for word in words:
        assert word in str(info.value), (word, str(info.value))
