"""What a run records (losses, kNN accuracy, linear probe), its plot and its closing summary.

No framework is imported here. A :class:`History` travels inside every checkpoint, so a resumed run
continues its curves; :func:`plot_history` draws them with Matplotlib's file-only Agg backend (no
display needed), and :func:`summary_lines` prints the result a user looks for: the teacher's kNN
accuracy before training and after.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from run_files import atomic_write

__all__ = ["History", "Position", "plot_history", "summary_lines"]


@dataclass
class Position:
    """Where training stands: the next batch to run and the running sums of the epoch in progress.

    Attributes:
        epoch: 0-based epoch of the next batch (``epochs`` once training is finished).
        step: 0-based batch index within that epoch.
        loss_sum: Sum of this epoch's losses so far (so a resumed epoch reports the same mean).
        loss_count: Number of losses in ``loss_sum``.
    """

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Position:
        """Inverse of :meth:`to_dict`."""
        return cls(int(d["epoch"]), int(d["step"]), float(d["loss_sum"]), int(d["loss_count"]))


@dataclass
class History:
    """Per-epoch losses, kNN accuracies and the final linear probe of one run.

    Attributes:
        epochs: ``{"epoch": 1-based epoch, "loss": mean loss, "step": global steps done}`` per epoch.
        knn: ``{"epoch": epochs done (0 = before training), "accuracy": kNN top-1}`` per evaluation.
        probe: ``{"accuracy", "train_accuracy"}`` of the final linear probe, or ``None``.
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    knn: list[dict[str, Any]] = field(default_factory=list)
    probe: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"epochs": list(self.epochs), "knn": list(self.knn), "probe": self.probe}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        return cls(list(d["epochs"]), list(d["knn"]), d.get("probe"))

    def knn_at(self, epoch: int) -> float | None:
        """The kNN accuracy recorded after ``epoch`` epochs, or ``None``."""
        for rec in self.knn:
            if rec["epoch"] == epoch:
                return float(rec["accuracy"])
        return None


def plot_history(history: History, path: str | os.PathLike, *, title: str) -> Path:
    """Save a PNG with the loss per epoch (left) and the teacher's kNN accuracy (right), atomically.

    Args:
        history: The run's records.
        path: The PNG file.
        title: Figure title (framework, data set, ...).

    Returns:
        ``path`` as a ``Path``.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: works on machines without a display
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(10, 3.8))
    if history.epochs:
        ax_loss.plot([r["epoch"] for r in history.epochs], [r["loss"] for r in history.epochs], "o-", ms=3)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("mean training loss (BYOL, 0-8)")
    ax_loss.grid(alpha=0.3)
    if history.knn:
        xs = [r["epoch"] for r in history.knn]
        ys = [100 * r["accuracy"] for r in history.knn]
        ax_knn.plot(xs, ys, "o-", ms=4, color="tab:green")
        ax_knn.annotate(f"{ys[-1]:.1f}%", (xs[-1], ys[-1]), textcoords="offset points", xytext=(-14, -14))
    if history.probe is not None:
        ax_knn.axhline(100 * history.probe["accuracy"], ls="--", color="tab:gray", label="linear probe")
        ax_knn.legend(loc="lower right")
    ax_knn.set_xlabel("epochs trained")
    ax_knn.set_ylabel("teacher kNN accuracy (%)")
    ax_knn.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def summary_lines(history: History, *, epochs: int, k: int, plot: str | os.PathLike) -> list[str]:
    """The closing lines: kNN before vs after training, the linear probe, the plot's path.

    Args:
        history: The finished run's records.
        epochs: Epochs trained.
        k: The kNN classifier's k.
        plot: Path of the PNG.

    Returns:
        Lines to print.
    """
    before = history.knn_at(0)
    after = history.knn_at(epochs)
    lines = [
        f"teacher kNN accuracy (k={k}): before training {_pct(before)} -> after {epochs} epochs {_pct(after)}"
    ]
    if history.probe is not None:
        probe = _pct(history.probe["accuracy"])
        lines.append(f"linear probe on frozen teacher features: test accuracy {probe}")
    lines.append(f"plot: {plot}")
    return lines
