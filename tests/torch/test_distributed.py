"""Two gloo processes on CPU: teacher parameters and statistics agree after 3 steps ("mean", "broadcast")."""

import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import m2t_core
from m2t_core.testing import assert_close

sys.path.insert(0, str(Path(__file__).parent))
import dist_worker


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(dist_worker.run, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def stat_names(state):
    return [k for k in state if k.endswith(("running_mean", "running_var"))]


@pytest.mark.parametrize("mode", ["mean", "broadcast"])
def test_synced_modes_leave_identical_teachers(results, mode):
    a, b = results[0][mode]["teacher"], results[1][mode]["teacher"]
    assert a.keys() == b.keys()
    assert stat_names(a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert int(a["backbone.1.num_batches_tracked"]) == dist_worker.STEPS


@pytest.mark.parametrize(("mode", "collective"), [("mean", "all_reduce"), ("broadcast", "broadcast")])
def test_one_collective_per_step_for_the_whole_teacher(results, mode, collective):
    for rank in range(2):
        assert results[rank][mode]["collectives"][collective] == dist_worker.STEPS


def test_local_statistics_differ_so_the_check_can_fail(results):
    a, b = results[0]["none"]["teacher"], results[1]["none"]["teacher"]
    assert all(results[r]["none"]["collectives"] == {"all_reduce": 0, "broadcast": 0} for r in range(2))
    assert any(not torch.equal(a[n], b[n]) for n in stat_names(a))
    # parameters still agree: the teacher follows the DDP-synchronised student
    for name in a:
        if name not in stat_names(a) and a[name].is_floating_point():
            assert torch.equal(a[name], b[name]), name


def test_mean_is_the_average_of_the_ranks_commits(results):
    commits = [
        m2t_core.momentum_batch_norm(
            dist_worker.layer_input(r).numpy(), m2t_core.init_stats(3), alpha=0.25, axis=1
        )[1]
        for r in range(2)
    ]
    for r in range(2):
        assert_close(results[r]["layer"]["mean"], np.mean([c.mean for c in commits], axis=0))
        assert_close(results[r]["layer"]["var"], np.mean([c.var for c in commits], axis=0))
