"""Worker of test_distributed.py, in its own module so that spawned processes can import it."""

import os

import torch
import torch.distributed as dist
from torch import nn

from m2t_torch import M2Teacher, MomentumBatchNorm1d

MODES = ("mean", "broadcast", "none")
STEPS = 3


def backbone():
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def layer_input(rank):
    return torch.randn(6, 3, generator=torch.Generator().manual_seed(rank)) * (1 + rank) + rank


def run(rank, world, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    calls = {"all_reduce": 0, "broadcast": 0}
    originals = {name: getattr(dist, name) for name in calls}

    def counting(name):
        def call(*args, **kwargs):
            calls[name] += 1
            return originals[name](*args, **kwargs)

        return call

    try:
        for mode in MODES:
            # Different initialisations per rank: DDP broadcasts rank 0's student, and the first step
            # copies the student into the teacher, so the teachers must agree anyway.
            torch.manual_seed(rank)
            model = M2Teacher(backbone(), hidden_dim=16, projection_dim=8, total_steps=10, sync_stats=mode)
            model.student = nn.parallel.DistributedDataParallel(model.student)
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            for name in calls:
                calls[name] = 0
                setattr(dist, name, counting(name))
            for k in range(STEPS):
                g = torch.Generator().manual_seed(100 * rank + k)  # every rank sees other data
                v1, v2 = torch.randn(4, 3, 6, 6, generator=g), torch.randn(4, 3, 6, 6, generator=g) * 2
                loss = model(v1, v2)
                opt.zero_grad()
                loss.backward()
                opt.step()
            for name, fn in originals.items():
                setattr(dist, name, fn)
            results[mode] = {
                "teacher": {k: v.clone() for k, v in model.teacher.state_dict().items()},
                "collectives": dict(calls),
            }
        # A standalone layer with the default sync_stats=None syncs with "mean" once initialised.
        layer = MomentumBatchNorm1d(3, alpha_start=0.25, alpha_end=0.25)
        layer(layer_input(rank))
        results["layer"] = {"mean": layer.running_mean.clone(), "var": layer.running_var.clone()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
