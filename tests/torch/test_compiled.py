"""torch.compile: compiled functional BN, layer and M2Teacher step equal the core / eager, without recompiling.

Compilation on CPU costs seconds per graph, so each configuration (rank, views, correction, dtype,
mode — the things a graph is specialised on) is compiled once with ``dynamic=True`` and then fed
many hypothesis-drawn shapes and values under ``error_on_recompile``: a recompilation, or a silent
fallback to eager after too many of them, fails the test.
"""

import copy

import numpy as np
import pytest
import torch
import torch._dynamo
import torch.fx.experimental._config as fx_config
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import m2t_core
from m2t_core import MomentumStats
from m2t_core.testing import assert_close, bn_cases
from m2t_torch import M2Teacher, MomentumBatchNorm, functional

EXAMPLES = 12  # per configuration; each one runs the already compiled graph

# (rank, channel axis, views, correction, dtype, training)
FUNCTIONAL_CONFIGS = [
    (4, 1, 2, "official", np.float32, True),
    (2, 1, 3, "unbiased", np.float64, True),
    (3, 2, 1, "biased", np.float32, False),
]
LAYER_CONFIGS = [(4, 2, "official", np.float32), (3, 3, "biased", np.float64)]
LAYER_TOTAL_STEPS = 1000
LAYER_WIDTH = 6

_compiled = {}


@pytest.fixture(autouse=True, scope="module")
def no_duck_shapes():
    # Sizes that happen to be equal in the first example must not be assumed equal forever after.
    with fx_config.patch(use_duck_shape=False):
        yield


def compiled(key, build):
    if key not in _compiled:
        _compiled[key] = build()
    return _compiled[key]


def no_unit_dims(case):
    # Dynamic shapes still specialise sizes 0 and 1; keep every size >= 2 so one graph serves all.
    per_view = case.x.shape[0] // case.kwargs["num_views"]
    return per_view >= 2 and all(s >= 2 for s in case.x.shape[1:])


def cases(rank, axis, views, correction, dtype, training):
    # "biased" is always among the drawn corrections: m2t_core.testing.bn_cases fails to generate a
    # case when none of its corrections allows n = 1. Every kept case has n >= 2, so the configured
    # correction is valid for it and replaces the drawn one.
    return (
        bn_cases(
            dtypes=st.just(np.dtype(dtype)),
            min_rank=rank,
            max_rank=rank,
            axis=axis,
            num_views=st.just(views),
            corrections=["biased", correction],
            training=st.just(training),
            affine=st.just(True),
        )
        .filter(no_unit_dims)
        .map(lambda case: case._replace(kwargs=dict(case.kwargs, correction=correction)))
    )


def output_tolerance(dtype):
    """Tolerance for compiled outputs against the core.

    Inductor fuses and reorders the float operations (reductions, multiply-adds), so a float32 output
    that cancels to near zero differs from the core's by a few ulp of the *intermediate* values
    (|γ·(x − μ)/σ| reaches ~15 on the drawn data, one ulp ~1e-6) — both are within rounding of the
    exact value, but the core's default atol of 1e-6 is below that ulp. float64 keeps the defaults.
    """
    return {"rtol": 1e-5, "atol": 1e-5} if np.dtype(dtype) == np.float32 else {}


def widen(case, width):
    """The same case on exactly ``width`` channels (drawn channels repeated), for a fixed-width layer."""
    axis = case.kwargs["axis"]
    idx = np.arange(width) % case.x.shape[axis]
    kw = dict(case.kwargs, scale=case.kwargs["scale"][idx], offset=case.kwargs["offset"][idx])
    stats = case.stats._replace(mean=case.stats.mean[idx], var=case.stats.var[idx])
    return case._replace(x=np.take(case.x, idx, axis=axis), stats=stats, kwargs=kw)


def torch_stats(stats):
    return MomentumStats(*(torch.from_numpy(np.asarray(f).copy()) for f in stats))


def functional_case(config):
    dtype = config[4]

    @settings(max_examples=EXAMPLES)
    @given(case=cases(*config))
    def check(case):
        kw = dict(case.kwargs, eps=1e-5)
        y_ref, stats_ref = m2t_core.momentum_batch_norm(case.x, case.stats, **kw)
        fn = compiled(
            ("functional", config), lambda: torch.compile(functional.momentum_batch_norm, dynamic=True)
        )
        x = torch.from_numpy(case.x)
        tkw = dict(kw, alpha=torch.tensor(kw["alpha"], dtype=torch.float64))
        tkw["scale"], tkw["offset"] = torch.from_numpy(kw["scale"]), torch.from_numpy(kw["offset"])
        fn(x, torch_stats(case.stats), **tkw)  # the first call of a configuration compiles
        with torch._dynamo.config.patch(error_on_recompile=True):
            y, stats = fn(x, torch_stats(case.stats), **tkw)
        assert_close(y, y_ref, **output_tolerance(dtype))
        assert_close(stats, stats_ref)

    return check


@pytest.mark.parametrize("config", FUNCTIONAL_CONFIGS, ids=str)
def test_compiled_functional_matches_core(config):
    functional_case(config)()


_layer_calls = {}


def layer_compiled_once(config):
    """False on a configuration's first call (it compiles), True afterwards."""
    _layer_calls[config] = _layer_calls.get(config, 0) + 1
    return _layer_calls[config] > 1


def layer_case(config):
    rank, views, correction, dtype = config
    schedule = m2t_core.stats_momentum_schedule(LAYER_TOTAL_STEPS)

    def build():
        layer = MomentumBatchNorm(
            LAYER_WIDTH,
            num_views=views,
            total_steps=LAYER_TOTAL_STEPS,
            correction=correction,
            dtype=torch.from_numpy(np.zeros(0, dtype)).dtype,
        )
        return layer, torch.compile(layer, dynamic=True)

    @settings(max_examples=EXAMPLES)
    @given(case=cases(rank, 1, views, correction, dtype, True).map(lambda c: widen(c, LAYER_WIDTH)))
    def check(case):
        layer, fn = compiled(("layer", config), build)
        kw = dict(case.kwargs, eps=layer.eps, alpha=schedule(int(case.stats.step)))
        y_ref, stats_ref = m2t_core.momentum_batch_norm(case.x, case.stats, **kw)
        with torch.no_grad():
            layer.running_mean.copy_(torch.from_numpy(case.stats.mean))
            layer.running_var.copy_(torch.from_numpy(case.stats.var))
            layer.num_batches_tracked.fill_(int(case.stats.step))
            layer.skipped.fill_(int(case.stats.skipped))
            layer.weight.copy_(torch.from_numpy(kw["scale"]))
            layer.bias.copy_(torch.from_numpy(kw["offset"]))
        with torch._dynamo.config.patch(error_on_recompile=layer_compiled_once(config)):
            y = fn(torch.from_numpy(case.x))
        assert_close(y, y_ref, **output_tolerance(dtype))
        assert_close(
            MomentumStats(layer.running_mean, layer.running_var, layer.num_batches_tracked, layer.skipped),
            stats_ref,
        )

    return check


@pytest.mark.parametrize("config", LAYER_CONFIGS, ids=str)
def test_compiled_layer_matches_core(config):
    layer_case(config)()


def test_compiled_layer_trains_many_steps_with_one_graph():
    torch.manual_seed(0)
    layer = MomentumBatchNorm(4, total_steps=8, correction="official")
    twin = copy.deepcopy(layer)
    step = torch.compile(layer)
    torch._dynamo.utils.counters.clear()
    for k in range(6):
        x = torch.randn(6, 4, 3, 3) * (1 + k) + k
        with torch._dynamo.config.patch(error_on_recompile=k > 0):
            y = step(x)
        assert_close(y, twin(x), rtol=1e-4, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert int(layer.num_batches_tracked) == 6
    assert_close(layer.running_var, twin.running_var)  # α followed the schedule inside the graph


def test_compiled_m2teacher_step_trains_without_recompiling():
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    model = M2Teacher(backbone, hidden_dim=16, projection_dim=8, total_steps=10)
    twin = copy.deepcopy(model)
    compiled_model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05)
    torch._dynamo.utils.counters.clear()
    for k in range(6):
        g = torch.Generator().manual_seed(k)
        v1, v2 = torch.randn(4, 3, 6, 6, generator=g), torch.randn(4, 3, 6, 6, generator=g)
        with torch._dynamo.config.patch(error_on_recompile=k > 0):
            loss = compiled_model(v1, v2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        twin_loss = twin(v1, v2)
        twin_opt.zero_grad()
        twin_loss.backward()
        twin_opt.step()
        assert_close(loss, twin_loss, rtol=1e-4, atol=1e-5, err_msg=f"step {k}")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # no graph breaks either
    assert int(model.step) == 6
    for (name, a), b in zip(
        model.teacher.state_dict().items(), twin.teacher.state_dict().values(), strict=True
    ):
        assert_close(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
