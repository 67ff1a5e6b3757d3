"""Run an example script in a subprocess with tiny settings (imported by the example tests)."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

# A few steps on digits: batch 128 gives 11 steps per epoch over the 1,438 training images.
TINY = [
    "--epochs",
    "2",
    "--batch-size",
    "128",
    "--width",
    "4",
    "--hidden-dim",
    "16",
    "--projection-dim",
    "8",
    "--eval-every",
    "1",
    "--knn-k",
    "5",
    "--no-progress",
]
STEPS_PER_EPOCH = 1438 // 128


# XLA compiles the same Flax/Keras-on-JAX steps in every subprocess: share a persistent cache.
JAX_CACHE = Path(tempfile.gettempdir()) / f"m2t-example-tests-jax-cache-{os.getuid()}"


def example_env(**extra: str) -> dict[str, str]:
    """The environment of an example subprocess: deterministic hashing, quiet TensorFlow, XLA cache."""
    env = dict(os.environ, PYTHONHASHSEED="0", TF_CPP_MIN_LOG_LEVEL="3", **extra)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(JAX_CACHE))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # the many small init kernels too
    env.setdefault("KERAS_BACKEND", "tensorflow")  # Keras' own default, unless the caller chose one
    return env


def run_example(
    script: str, *args: str, cwd: Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """Run ``examples/<script> args`` to completion and return the finished process (text output)."""
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        env=example_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def describe(proc: subprocess.CompletedProcess) -> str:
    """Exit status and output tails, for assertion messages."""
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
