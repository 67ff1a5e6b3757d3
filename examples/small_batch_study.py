"""Small-batch study: does the teacher's normalisation matter when batches are small?

Trains the PyTorch example (``torch_m2t.py``) on digits with three teacher normalisations —

* ``batch``: the teacher's BatchNorm uses the statistics of the current batch (BYOL);
* ``momentum``: momentum statistics (Momentum² Teacher);
* ``eman``: the teacher's BatchNorm in evaluation mode on an EMA of the student's running statistics
  (Cai et al., CVPR 2021) —

each at a small and a large batch size, for several seeds and the same number of epochs, and writes a
markdown table of the teacher's kNN and linear-probe accuracy (mean ± sample standard deviation over
seeds) and a bar plot. The paper's claim (Li, Liu, Sun, 2021) is that momentum statistics keep the
teacher stable at small per-device batches where batch statistics get noisy.

Fairness between batch sizes, at equal epochs:

* the learning rate scales linearly with the batch (``--lr`` is the rate at batch 256; Goyal et al.);
* the teacher momentum scales so the EMA spans the same number of *images* at every batch:
  ``m_B = 1 − (1 − m_ref)·B/64`` with ``m_ref = --base-momentum`` (BYOL's τ at batch 64); at batch
  256 that is 0.96 for 0.99, at batch 16 0.9975.

Runs are stored under ``--out/<norm>-b<batch>-s<seed>/`` (checkpoint, metrics, plot, log); a finished
run is reused and an unfinished one resumed, so an interrupted study continues where it stopped.

Usage::

    python examples/small_batch_study.py                       # the sized default (~15 min, 2 CPU cores)
    python examples/small_batch_study.py --epochs 100 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path
from typing import TypedDict

from run_files import atomic_write, read_json, write_json

__all__ = ["RunResult", "format_table", "main", "parse_args", "plot_study", "run_one", "teacher_momentum_for"]

NORM_LABELS = {"batch": "batch stats (BYOL)", "momentum": "momentum stats (M2T)", "eman": "EMAN"}
REFERENCE_BATCH = 64


def teacher_momentum_for(batch_size: int, reference_momentum: float) -> float:
    """Teacher momentum at ``batch_size`` whose EMA spans as many images as ``reference_momentum`` at 64.

    Args:
        batch_size: The batch size.
        reference_momentum: Teacher momentum at batch 64.

    Returns:
        ``1 − (1 − m_ref)·B/64``, clipped to [0, 1].
    """
    return min(1.0, max(0.0, 1.0 - (1.0 - reference_momentum) * batch_size / REFERENCE_BATCH))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The study's flags.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The parsed flags.
    """
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", default="digits", help="data set (see torch_m2t.py --help)")
    p.add_argument(
        "--out", default="runs/study", help="output folder: runs, results.md, results.json, study.png"
    )
    p.add_argument("--epochs", type=int, default=30, help="epochs of every run")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 256], help="batch sizes")
    p.add_argument(
        "--norms",
        nargs="+",
        default=["batch", "momentum", "eman"],
        choices=list(NORM_LABELS),
        help="teacher norms",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds")
    p.add_argument("--lr", type=float, default=0.2, help="peak learning rate at batch 256 (scaled linearly)")
    p.add_argument("--base-momentum", type=float, default=0.99, help="teacher momentum at batch 64 (scaled)")
    p.add_argument("--width", type=int, default=16, help="backbone width")
    p.add_argument("--hidden-dim", type=int, default=256, help="hidden width of the heads")
    p.add_argument("--projection-dim", type=int, default=64, help="output width of the heads")
    p.add_argument(
        "--extra", default="", help="more flags for torch_m2t.py, e.g. --extra='--device cuda --threads 4'"
    )
    args = p.parse_args(argv)
    if args.epochs < 1 or min(args.batch_sizes) < 1 or min(args.seeds) < 0:
        p.error("--epochs and --batch-sizes must be >= 1 and --seeds >= 0")
    if not 0.0 <= args.base_momentum <= 1.0:
        p.error(f"--base-momentum must be in [0, 1], got {args.base_momentum}")
    return args


class RunResult(TypedDict):
    """One run's outcome (accuracies in [0, 1]; ``seconds`` is ``None`` for a reused run)."""

    norm: str
    batch_size: int
    seed: int
    knn_before: float
    knn: float
    probe: float
    seconds: float | None


def _example_argv(args: argparse.Namespace, norm: str, batch: int, seed: int, out: Path) -> list[str]:
    return [
        "--data",
        args.data,
        "--out",
        str(out),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(batch),
        "--lr",
        repr(args.lr * batch / 256),
        "--base-momentum",
        repr(teacher_momentum_for(batch, args.base_momentum)),
        "--teacher-norm",
        norm,
        "--seed",
        str(seed),
        "--width",
        str(args.width),
        "--hidden-dim",
        str(args.hidden_dim),
        "--projection-dim",
        str(args.projection_dim),
        "--eval-every",
        "0",
        "--no-progress",
        *args.extra.split(),
    ]


def run_one(args: argparse.Namespace, norm: str, batch: int, seed: int) -> RunResult:
    """Train one configuration with the PyTorch example (in this process), or reuse a finished run.

    Args:
        args: The study's flags.
        norm: Teacher normalisation.
        batch: Batch size.
        seed: Seed.

    Returns:
        The :class:`RunResult`.

    Raises:
        RuntimeError: the example failed (its log is named in the message).
    """
    import torch_m2t  # imported here so that --help works without torch

    out = Path(args.out) / f"{norm}-b{batch}-s{seed}"
    argv = _example_argv(args, norm, batch, seed, out)
    metrics_path = out / "metrics.json"
    started = time.perf_counter()
    done = metrics_path.exists() and read_json(metrics_path).get("status") == "complete"
    if not done:
        if (out / torch_m2t.TorchTrainer.checkpoint_name).exists():
            argv.append("--resume")
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            status = torch_m2t.main(argv)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "log.txt", lambda tmp: tmp.write_text(log.getvalue(), encoding="utf-8"))
        if status != 0:
            raise RuntimeError(f"run {out} failed with status {status}; see {out / 'log.txt'}")
    metrics = read_json(metrics_path)
    history = metrics["history"]
    knn = {rec["epoch"]: rec["accuracy"] for rec in history["knn"]}
    return RunResult(
        norm=norm,
        batch_size=batch,
        seed=seed,
        knn_before=knn[0],
        knn=knn[args.epochs],
        probe=history["probe"]["accuracy"],
        seconds=round(time.perf_counter() - started, 1) if not done else None,
    )


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return 100 * mean, 100 * std


def format_table(results: list[RunResult], args: argparse.Namespace) -> str:
    """Markdown table: mean ± std (over seeds, in %) of kNN and linear-probe accuracy per norm and batch.

    Args:
        results: All runs.
        args: The study's flags (for the column of seeds and the caption).

    Returns:
        The table, with a first row for the untrained network.
    """
    lines = [
        "| teacher normalisation | batch | teacher kNN accuracy (%) | linear probe accuracy (%) | seeds |",
        "|---|---:|---:|---:|---:|",
    ]
    # Every norm and batch size starts from the same weights for a seed: one untrained value per seed.
    before = list({r["seed"]: r["knn_before"] for r in results}.values())
    m, s = _mean_std(before)
    lines.append(f"| untrained network (reference) | — | {m:.1f} ± {s:.1f} | — | {len(before)} |")
    for batch in args.batch_sizes:
        for norm in args.norms:
            rs = [r for r in results if r["norm"] == norm and r["batch_size"] == batch]
            if not rs:
                continue
            km, ks = _mean_std([r["knn"] for r in rs])
            pm, ps = _mean_std([r["probe"] for r in rs])
            lines.append(
                f"| {NORM_LABELS[norm]} | {batch} | {km:.1f} ± {ks:.1f} | {pm:.1f} ± {ps:.1f} | {len(rs)} |"
            )
    return "\n".join(lines)


def plot_study(results: list[RunResult], args: argparse.Namespace, path: Path) -> Path:
    """Bar plot of mean kNN and probe accuracy with ± std error bars, one group per batch size.

    Args:
        results: All runs.
        args: The study's flags.
        path: The PNG file.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    width = 0.8 / len(args.norms)
    for ax, (key, name) in zip(axes, (("knn", "teacher kNN"), ("probe", "linear probe")), strict=True):
        for i, norm in enumerate(args.norms):
            means, stds = [], []
            for batch in args.batch_sizes:
                rs = [r[key] for r in results if r["norm"] == norm and r["batch_size"] == batch]
                m, s = _mean_std(rs) if rs else (float("nan"), 0.0)
                means.append(m)
                stds.append(s)
            xs = [j + (i - (len(args.norms) - 1) / 2) * width for j in range(len(args.batch_sizes))]
            ax.bar(xs, means, width, yerr=stds, capsize=3, label=NORM_LABELS[norm])
        ax.set_xticks(range(len(args.batch_sizes)), [f"batch {b}" for b in args.batch_sizes])
        ax.set_title(f"{name} accuracy (%), {len(args.seeds)} seeds, {args.epochs} epochs")
        ax.grid(axis="y", alpha=0.3)
    lows = [100 * min(r["knn"], r["probe"]) for r in results]
    axes[0].set_ylim(max(0.0, min(lows) - 5), 100)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run every configuration, then write ``results.md``, ``results.json`` and ``study.png``.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        0 on success, 1 if a run failed, 130 on Ctrl-C.
    """
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = [(n, b, s) for b in args.batch_sizes for n in args.norms for s in args.seeds]
    results: list[RunResult] = []
    started = time.perf_counter()
    for i, (norm, batch, seed) in enumerate(configs, 1):
        try:
            r = run_one(args, norm, batch, seed)
        except RuntimeError as err:
            print(f"small_batch_study.py: error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted; run the same command again to continue the study", file=sys.stderr)
            return 130
        results.append(r)
        took = "reused" if r["seconds"] is None else f"{r['seconds']:.0f} s"
        print(
            f"[{i}/{len(configs)}] {norm:<8} batch {batch:<4} seed {seed}: kNN {100 * r['knn']:.1f}%  "
            f"probe {100 * r['probe']:.1f}%  ({took})",
            flush=True,
        )
    table = format_table(results, args)
    command = "python examples/small_batch_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (
        f"# Small-batch study ({args.data}, {args.epochs} epochs, seeds {args.seeds})\n\n"
        f"Command: `{command.strip()}`\n\nMean ± sample std over seeds.\n\n{table}\n"
    )
    atomic_write(out / "results.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    write_json(out / "results.json", {"settings": vars(args), "runs": results})
    plot = plot_study(results, args, out / "study.png")
    print()
    print(table)
    print(f"\ntable: {out / 'results.md'}\nplot: {plot}\ntook {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
