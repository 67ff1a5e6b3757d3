"""Seconds per ``fit`` step of ``m2t_keras.M2Teacher`` vs the same model with a plain-BN teacher.

For each Keras backend (each in its own subprocess, ``KERAS_BACKEND`` set), both variants train the
same convolutional backbone on the same random view pairs. The baseline is an ``M2Teacher`` whose
teacher keeps Keras's own ``BatchNormalization`` in training mode (batch statistics over the
concatenated views, moving averages updated) instead of momentum BN; everything else — EMA, heads,
loss, optimizer — is identical, so the ratio is the cost of momentum statistics with per-view moments.

After one warm-up ``fit`` per variant (tracing and compilation), the two variants alternate
``fit(epochs=1)`` calls, so load changes on a shared machine hit both alike; the table reports the
median seconds per step over the timed calls, their ratio, and the ratio of the fastest calls
(less sensitive to other processes on a busy machine). Run::

    python benchmarks/bench_keras.py                  # all three backends, ~1.5 minutes on 2 CPUs
    python benchmarks/bench_keras.py --backends jax --repeats 9
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKER = r"""
import json, statistics, sys, time
import numpy as np
import keras
import m2t_keras
from m2t_keras.convert import _clone_replacing_bn

args = json.loads(sys.argv[1])
# Thread counts are backend-specific by nature; JAX reads its own from XLA_FLAGS (set by the parent).
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(args["threads"])
elif keras.backend.backend() == "torch":
    import torch

    torch.set_num_threads(args["threads"])


class TrainingModeBatchNorm(keras.layers.BatchNormalization):
    # Keras normalises with batch statistics only when `training and self.trainable`; a teacher is
    # frozen, so this baseline reports itself trainable to keep the training-mode branch. Its
    # variables are still non-trainable (the setter marks them), so the optimizer never sees them.
    @property
    def trainable(self):
        return True

    @trainable.setter
    def trainable(self, value):
        keras.layers.Layer.trainable.fset(self, value)


class PlainBNTeacher(m2t_keras.M2Teacher):
    def _make_teacher(self, student):
        return _clone_replacing_bn(student, lambda bn: TrainingModeBatchNorm.from_config(bn.get_config()))


def backbone(size, width):
    layers = [keras.Input((size, size, 3))]
    for filters, stride in ((width, 1), (2 * width, 2), (2 * width, 2)):
        layers += [keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False),
                   keras.layers.BatchNormalization(), keras.layers.ReLU()]
    layers.append(keras.layers.GlobalAveragePooling2D())
    return keras.Sequential(layers)


def build(cls):
    keras.utils.set_random_seed(0)
    model = cls(backbone(args["size"], args["width"]), hidden_dim=args["hidden"], projection_dim=args["proj"],
                total_steps=10**6)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return model


rng = np.random.default_rng(0)
n = args["steps"] * args["batch"]
views = tuple(rng.standard_normal((n, args["size"], args["size"], 3)).astype("float32") for _ in range(2))
models = {"m2t": build(m2t_keras.M2Teacher), "plain": build(PlainBNTeacher)}
fit = dict(batch_size=args["batch"], epochs=1, shuffle=False, verbose=0)
for model in models.values():
    model.fit(views, **fit)  # warm-up: trace and compile
times = {name: [] for name in models}
for _ in range(args["repeats"]):
    for name, model in models.items():
        start = time.perf_counter()
        model.fit(views, **fit)
        times[name].append((time.perf_counter() - start) / args["steps"])
summary = {f"{k}_{stat.__name__}": stat(v) for k, v in times.items() for stat in (statistics.median, min)}
print(json.dumps({"backend": keras.backend.backend(), **summary}))
"""


def run_backend(backend: str, settings: dict[str, int]) -> dict[str, float] | None:
    threads = settings["threads"]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS=str(threads))
    if backend == "jax":
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if threads == 1 else ""
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
    out = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(settings)], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        print(f"{backend}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--batch", type=int, default=32, help="samples per view and step")
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--width", type=int, default=16, help="channels of the first conv layer")
    parser.add_argument("--hidden", type=int, default=256, help="projector/predictor hidden width")
    parser.add_argument("--proj", type=int, default=64, help="projection width")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed fit call")
    parser.add_argument("--repeats", type=int, default=21, help="timed fit calls per variant")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per backend (1: least noise)")
    args = parser.parse_args()
    keys = ("batch", "size", "width", "hidden", "proj", "steps", "repeats", "threads")
    settings = {k: getattr(args, k) for k in keys}

    start = time.perf_counter()
    rows = [r for r in (run_backend(b, settings) for b in args.backends) if r is not None]
    print(
        f"M2Teacher fit step vs plain-BN teacher, batch {args.batch} per view, {args.size}x{args.size}x3, "
        f"{args.threads} thread(s), median of {args.repeats} x {args.steps} steps "
        f"(total {time.perf_counter() - start:.0f} s)\n"
    )
    print("| Keras backend | M2T s/step | plain-BN teacher s/step | ratio (median) | ratio (fastest) |")
    print("|---------------|-----------:|------------------------:|---------------:|----------------:|")
    for r in rows:
        median = r["m2t_median"] / r["plain_median"]
        fastest = r["m2t_min"] / r["plain_min"]
        times = f"{r['m2t_median']:.4f} | {r['plain_median']:.4f}"
        print(f"| {r['backend']} | {times} | {median:.2f}x | {fastest:.2f}x |")


if __name__ == "__main__":
    main()
