"""The PyTorch worker of the cross-framework equivalence check (``m2t-equivalence``).

``python -m m2t_torch.equivalence INPUT_DIR OUTPUT_NPZ`` reads the scenario, the initial checkpoint
and the batches written by :func:`m2t_core.equivalence.write_inputs`, trains
:class:`~m2t_torch.M2Teacher` with :class:`~m2t_torch.ReferenceNet` exactly as a user would
(``loss = model(view1, view2)``, ``loss.backward()``, ``torch.optim.SGD(momentum=0.9,
weight_decay=...)``, whose weight decay is coupled: added to the gradient), and writes what
:class:`m2t_core.equivalence.Recorder` collects. Batches are stored NHWC; torch gets NCHW.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import torch

from m2t_core.equivalence import Recorder, Scenario, WorkerInputs, worker_main
from m2t_torch.interchange import from_canonical, to_canonical
from m2t_torch.models import ReferenceNet
from m2t_torch.teacher import M2Teacher

__all__ = ["build_model", "main", "run"]


def build_model(scenario: Scenario) -> M2Teacher:
    """The scenario's M2T model with the reference backbone (weights still to be loaded).

    Args:
        scenario: The run.

    Returns:
        An :class:`~m2t_torch.M2Teacher` in the scenario's dtype.
    """
    model = M2Teacher(
        ReferenceNet(scenario.in_channels, scenario.width),
        hidden_dim=scenario.hidden_dim,
        projection_dim=scenario.projection_dim,
        total_steps=scenario.schedule_steps,
        base_momentum=scenario.base_momentum,
        alpha_start=scenario.alpha_start,
        alpha_end=scenario.alpha_end,
        correction=scenario.correction,
    )
    return model.to(getattr(torch, scenario.dtype))


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def run(inputs: WorkerInputs, args: argparse.Namespace | None = None) -> dict[str, np.ndarray]:
    """Train the scenario and return the recorded trajectory.

    Args:
        inputs: Scenario, initial arrays and batches.
        args: Unused (the worker has no options of its own).

    Returns:
        :meth:`m2t_core.equivalence.Recorder.result`.
    """
    scenario = inputs.scenario
    torch.manual_seed(scenario.seed)
    model = from_canonical(build_model(scenario), inputs.arrays).train()
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=scenario.learning_rate,
        momentum=scenario.momentum,
        weight_decay=scenario.weight_decay,
    )
    captured: list[np.ndarray] = []
    # The teacher's projections inside the real first step, read by a hook and not recomputed.
    hook = model.teacher.register_forward_hook(
        lambda _m, _i, out: captured.append(out.detach().numpy().copy())
    )
    recorder = Recorder()
    for batch in inputs.batches:
        loss = model(_nchw(batch[0]), _nchw(batch[1]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        hook.remove()
        recorder.after_step(loss.item(), to_canonical(model))
    return recorder.result(to_canonical(model), captured[0])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the worker (see the module docstring).

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    return worker_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
