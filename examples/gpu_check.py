"""GPU check: run each example for a few hundred steps on CUDA with its real settings; print speed and memory.

Settings: PyTorch in bfloat16 autocast with channels_last tensors and ``torch.compile``; Flax with its
jit-compiled step in bfloat16; Keras on its default backend (``KERAS_BACKEND``, or JAX where
TensorFlow is not installed) in bfloat16 mixed precision. Each example runs in its own process on a
synthetic CIFAR-sized data set (32×32×3, written to ``--out``; no download) and reports training
images per second after a warm-up (compilation excluded) and the peak device memory. Sized to finish
in under five minutes on one GPU.

Usage::

    python examples/gpu_check.py                      # all three frameworks, 300 steps each
    python examples/gpu_check.py --frameworks torch --steps 500

Exit status: 0 when every example that could run did, 1 when no CUDA GPU is present (nothing runs),
3 when an example failed or timed out. A framework that is not installed is reported and skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from run_files import write_json

__all__ = ["EXAMPLES", "find_cuda", "main", "parse_args", "synthetic_npz"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: Example script and the packages it needs, per framework.
EXAMPLES = {
    "torch": ("torch_m2t.py", ("torch", "m2t_torch")),
    "flax": ("flax_m2t.py", ("jax", "flax", "optax", "m2t_flax")),
    "keras": ("keras_m2t.py", ("keras", "m2t_keras")),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The check's flags.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The parsed flags.
    """
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--frameworks", nargs="+", default=list(EXAMPLES), choices=list(EXAMPLES))
    p.add_argument("--steps", type=int, default=300, help="training steps per example (50 of them warm-up)")
    p.add_argument("--batch-size", type=int, default=256, help="images per view and step")
    p.add_argument("--width", type=int, default=64, help="backbone width (features: 4x)")
    p.add_argument("--train-images", type=int, default=10_000, help="size of the synthetic training set")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds allowed per example")
    p.add_argument("--out", default="runs/gpu_check", help="folder for the data, the runs and gpu_check.json")
    args = p.parse_args(argv)
    if min(args.steps, args.batch_size, args.width, args.train_images) < 1:
        p.error("--steps, --batch-size, --width and --train-images must be >= 1")
    if args.train_images < args.batch_size:
        p.error(f"--train-images {args.train_images} is smaller than one batch ({args.batch_size})")
    return args


def find_cuda() -> tuple[bool, str]:
    """Look for a CUDA GPU without claiming its memory.

    ``CUDA_VISIBLE_DEVICES`` set to ``""`` or ``-1`` hides every GPU (the examples would see none).
    Otherwise PyTorch (when installed) is asked first, then ``nvidia-smi -L``. JAX is not asked here:
    its first use reserves most of the GPU's memory for the whole life of this process.

    Returns:
        ``(found, description)``: the GPU's name, or why none was found.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False, f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    reasons = []
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return True, f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
        reasons.append(f"torch {torch.__version__} sees no CUDA device")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        reasons.append("nvidia-smi is not installed")
    else:
        try:
            listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as err:
            reasons.append(f"nvidia-smi -L failed ({err})")
        else:
            gpus = [line for line in listing.stdout.splitlines() if line.startswith("GPU ")]
            if listing.returncode == 0 and gpus:
                return True, gpus[0]
            reasons.append("nvidia-smi -L lists no GPU")
    return False, "; ".join(reasons)


def synthetic_npz(path: Path, train: int, test: int = 1_000, seed: int = 0) -> Path:
    """Write a CIFAR-sized ``.npz`` of random 32×32×3 uint8 images and labels (speed only, no meaning).

    Args:
        path: The file to write.
        train: Training images.
        test: Test images.
        seed: Seed of the random content.

    Returns:
        ``path``.
    """
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (train, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, train),
        x_test=rng.integers(0, 256, (test, 32, 32, 3), dtype=np.uint8),
        y_test=rng.integers(0, 10, test),
    )
    return path


def _missing_packages(names: tuple[str, ...]) -> list[str]:
    # The children find m2t_core and the adapters in the source tree (_child_env); look there too.
    for folder in (str(REPO / "adapters"), str(REPO)):
        if folder not in sys.path:
            sys.path.append(folder)
    return [n for n in names if importlib.util.find_spec(n) is None]


def _child_env(framework: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # A source checkout without `pip install -e .`: make m2t_core and the adapters importable.
    paths = [str(REPO), str(REPO / "adapters")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if framework == "keras" and "KERAS_BACKEND" not in env and importlib.util.find_spec("tensorflow") is None:
        env["KERAS_BACKEND"] = "jax"  # Keras' default backend is TensorFlow; use JAX where it is absent
    return env


def _run_example(framework: str, args: argparse.Namespace, data: Path, out: Path) -> dict:
    script, packages = EXAMPLES[framework]
    missing = _missing_packages(packages)
    if missing:
        return {"framework": framework, "status": f"skipped: {', '.join(missing)} not installed"}
    run_dir = out / framework
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [
        sys.executable,
        str(HERE / script),
        "--data",
        str(data),
        "--out",
        str(run_dir),
        "--device",
        "cuda",
        "--precision",
        "bf16",
        "--batch-size",
        str(args.batch_size),
        "--width",
        str(args.width),
        "--hidden-dim",
        "1024",
        "--projection-dim",
        "128",
        "--epochs",
        "1000",  # --max-steps ends the run long before: no final evaluation in the timing
        "--max-steps",
        str(args.steps),
        "--eval-every",
        "0",
        "--no-progress",
        "--report-throughput",
    ]
    if framework == "torch":
        cmd += ["--channels-last", "--compile"]
    env = _child_env(framework)
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"framework": framework, "status": f"timed out after {args.timeout:.0f} s"}
    wall = time.perf_counter() - started
    (out / f"{framework}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr, encoding="utf-8")
    records = [
        json.loads(line[len("THROUGHPUT ") :])
        for line in proc.stdout.splitlines()
        if line.startswith("THROUGHPUT ")
    ]
    if proc.returncode != 0 or not records:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {
            "framework": framework,
            "status": f"failed (exit {proc.returncode}): {tail}",
            "wall_seconds": wall,
        }
    rec = records[-1]
    if framework == "keras":
        rec["backend"] = env.get("KERAS_BACKEND", "tensorflow")
    return {**rec, "framework": framework, "status": "ok", "wall_seconds": wall}


def _table(results: list[dict]) -> str:
    lines = [
        "| framework | settings | images/s | ms/step | peak memory (MiB) | wall (s) | status |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        ips = r.get("images_per_second")
        ms = 1000 * r["seconds"] / r["steps_timed"] if "steps_timed" in r else None
        mem = r.get("peak_memory_mib")
        lines.append(
            f"| {r['framework']} | {r.get('device', '')} | {'' if ips is None else f'{ips:,.0f}'} | "
            f"{'' if ms is None else f'{ms:.1f}'} | {'' if mem is None else f'{mem:,.0f}'} | "
            f"{r.get('wall_seconds', 0):.0f} | {r['status']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Check for CUDA, run the examples, print the table.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status (see the module docstring).
    """
    args = parse_args(argv)
    found, gpu = find_cuda()
    if not found:
        print(
            f"gpu_check.py: error: no CUDA GPU found ({gpu}); this check measures the examples on a GPU — "
            "run it on a machine with an NVIDIA GPU (the examples themselves run on the CPU as they are)",
            file=sys.stderr,
        )
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"GPU: {gpu}; {args.steps} steps per example, batch {args.batch_size}, 32x32x3 synthetic images")
    data = synthetic_npz(out / "synthetic32.npz", args.train_images)
    results = []
    for framework in args.frameworks:
        result = _run_example(framework, args, data, out)
        results.append(result)
        print(f"{framework}: {result['status']}", flush=True)
    table = _table(results)
    write_json(out / "gpu_check.json", {"gpu": gpu, "settings": vars(args), "results": results})
    print()
    print(table)
    print(
        "\nimages/s counts training images (two views each) over the steps after a 50-step warm-up; "
        f"logs in {out}"
    )
    return 3 if any(not (r["status"] == "ok" or r["status"].startswith("skipped")) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
