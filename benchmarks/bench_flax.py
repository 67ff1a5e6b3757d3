"""Benchmark of the Flax adapter: what momentum BatchNorm costs, and how the NNX step is compiled.

1. **Momentum-BN teacher vs plain-BN teacher.** The same ``M2Teacher`` twice, trained by the same
   compiled step (``make_train_step``): once as built (every teacher BatchNorm is a
   ``MomentumBatchNorm``), once with each teacher ``MomentumBatchNorm`` swapped back for an
   ``nnx.BatchNorm`` (two-pass variance) normalising the whole concatenated batch, as a BYOL teacher
   does. Both are timed in one process and the table reports medians and their ratio. A third
   variant is a control: the plain-BN teacher whose BatchNorms also keep ``MomentumBatchNorm``'s two
   integer counters (``step`` and ``skipped``) but none of its arithmetic, with the step advanced by a
   constant ``+ 1``. On a 2-core CPU that constant, data-independent update alone makes XLA:CPU's
   concurrent runtime usually run the step 5–13% slower (it then executes the teacher's and the student's
   first convolutions one after the other), which is why ``MomentumBatchNorm`` computes its step
   from the commit (``committed + skipped``) instead.
2. **How to compile the NNX step** (on a small model, where per-call overhead shows): ``nnx.jit``,
   ``nnx.cached_partial`` over ``nnx.jit``, ``nnx.jit_partial(graph=False)`` (what
   ``make_train_step`` uses), and ``nnx.split``/``nnx.merge`` around ``jax.jit`` with the state
   carried by the caller.

Run ``python benchmarks/bench_flax.py`` (``--quick`` for a smoke run; ``--cnn 16x32x64`` adds a CNN of
width 16 on 32×32 images, 2 views × 64, to the first table); it prints markdown tables.
Each time is the median of ``--repeat`` calls, the candidates alternating call by call (so a change
in machine load hits them alike); compilation is excluded (two warm-up calls). The first table also
gives XLA's cost analysis of the two compiled steps (flops and bytes accessed), which does not
depend on load at all.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from m2t_flax.nnx import M2Teacher, MomentumBatchNorm, make_train_step, train_step, train_step_body


class ConvBackbone(nnx.Module):
    """Two 3×3 conv blocks (conv → BatchNorm → ReLU), global average pooling."""

    def __init__(self, width: int, rngs: nnx.Rngs) -> None:
        """Build the blocks; the second halves the resolution and doubles the width."""
        self.conv1 = nnx.Conv(3, width, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(width, use_fast_variance=False, rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, (3, 3), strides=(2, 2), rngs=rngs)
        self.bn2 = nnx.BatchNorm(2 * width, use_fast_variance=False, rngs=rngs)
        self.feature_dim = 2 * width

    def __call__(self, x: jax.Array) -> jax.Array:
        """Features ``[B, 2·width]`` of images ``[B, H, W, 3]``."""
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.bn2(self.conv2(x)))
        return x.mean(axis=(1, 2))


class MLPBackbone(nnx.Module):
    """Two Linear → BatchNorm → ReLU blocks."""

    def __init__(self, din: int, width: int, rngs: nnx.Rngs) -> None:
        """Build the two blocks."""
        self.l1 = nnx.Linear(din, width, rngs=rngs)
        self.bn1 = nnx.BatchNorm(width, use_fast_variance=False, rngs=rngs)
        self.l2 = nnx.Linear(width, width, rngs=rngs)
        self.bn2 = nnx.BatchNorm(width, use_fast_variance=False, rngs=rngs)
        self.feature_dim = width

    def __call__(self, x: jax.Array) -> jax.Array:
        """Features ``[B, width]`` of inputs ``[B, din]``."""
        return nnx.relu(self.bn2(self.l2(nnx.relu(self.bn1(self.l1(x))))))


class CountingBatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` plus ``step`` and ``skipped`` counters, the step advanced by a constant ``+ 1``.

    A control: ``MomentumBatchNorm`` keeps the same counters but advances its step by
    ``committed + skipped``, a value that depends on the commit.
    """

    def __init__(self, num_features: int, **kwargs: object) -> None:
        """Build the BatchNorm and its two int32 counters."""
        super().__init__(num_features, **kwargs)
        self.step = nnx.BatchStat(jnp.zeros((), jnp.int32))
        self.skipped = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array, **kwargs: object) -> jax.Array:
        """Plain BatchNorm; in training mode also count the call and any non-finite statistics."""
        y = super().__call__(x, **kwargs)
        if not self.use_running_average:
            finite = jnp.isfinite(self.mean[...]).all() & jnp.isfinite(self.var[...]).all()
            self.step[...] += 1
            self.skipped[...] += jnp.logical_not(finite).astype(jnp.int32)
        return y


def plain_bn_teacher(model: M2Teacher, *, counters: bool = False) -> M2Teacher:
    """Swap every teacher MomentumBatchNorm back for nnx.BatchNorm (same parameters), in place.

    With ``counters``, the replacement is a :class:`CountingBatchNorm`.
    """
    found = [(p, n) for p, n in nnx.iter_graph(model.teacher) if isinstance(n, MomentumBatchNorm)]
    cls = CountingBatchNorm if counters else nnx.BatchNorm
    for path, layer in found:
        bn = cls(layer.num_features, axis=layer.axis, use_fast_variance=False, rngs=nnx.Rngs(0))
        bn.scale[...] = layer.scale[...]
        bn.bias[...] = layer.bias[...]
        parent = model.teacher
        for key in path[:-1]:
            parent = getattr(parent, key)
        setattr(parent, path[-1], bn)
    return model


def build(kind: str, size: dict) -> tuple[M2Teacher, nnx.Optimizer]:
    rngs = nnx.Rngs(0)
    if kind == "conv":
        backbone: nnx.Module = ConvBackbone(size["width"], rngs)
    else:
        backbone = MLPBackbone(size["din"], size["width"], rngs)
    model = M2Teacher(
        backbone,
        hidden_dim=size["hidden"],
        projection_dim=size["proj"],
        total_steps=10_000,
        rngs=rngs,
    )
    return model, nnx.Optimizer(model.student, optax.adamw(1e-3), wrt=nnx.Param)


def views(kind: str, size: dict) -> tuple[jax.Array, jax.Array]:
    key = jax.random.key(0)
    shape = (size["batch"], size["side"], size["side"], 3) if kind == "conv" else (size["batch"], size["din"])
    x = jax.random.normal(key, shape)
    return x, x * 0.9 + 0.1


def interleaved(candidates: dict[str, Callable[[], jax.Array]], repeat: int) -> dict[str, np.ndarray]:
    """Seconds of ``repeat`` calls of each candidate, alternating call by call (load hits all alike)."""
    for fn in candidates.values():
        jax.block_until_ready(fn())  # compile outside the timing
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeat):
        for name, fn in candidates.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: np.asarray(t) for name, t in times.items()}


def compiled_cost(
    model: M2Teacher, optimizer: nnx.Optimizer, v1: jax.Array, v2: jax.Array
) -> tuple[float, float]:
    """XLA's own estimate of the step's flops and bytes accessed: a load-independent comparison."""
    graphdef, state = nnx.split((model, optimizer))

    def pure_step(state: nnx.State, a: jax.Array, b: jax.Array) -> tuple[jax.Array, nnx.State]:
        m, o = nnx.merge(graphdef, state)
        return train_step_body(m, o, a, b), nnx.state((m, o))

    cost = jax.jit(pure_step).lower(state, v1, v2).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", np.nan)), float(cost.get("bytes accessed", np.nan))


def bench_overhead(kind: str, size: dict, repeat: int) -> dict[str, float]:
    m2t_model, m2t_opt = build(kind, size)
    plain_model, plain_opt = build(kind, size)
    plain_bn_teacher(plain_model)
    counting_model, counting_opt = build(kind, size)
    plain_bn_teacher(counting_model, counters=True)
    v1, v2 = views(kind, size)
    m2t_flops, m2t_bytes = compiled_cost(m2t_model, m2t_opt, v1, v2)
    plain_flops, plain_bytes = compiled_cost(plain_model, plain_opt, v1, v2)
    m2t_step = make_train_step(m2t_model, m2t_opt)
    plain_step = make_train_step(plain_model, plain_opt)
    counting_step = make_train_step(counting_model, counting_opt)
    calls = {
        "m2t": lambda: m2t_step(v1, v2),
        "plain": lambda: plain_step(v1, v2),
        "counting": lambda: counting_step(v1, v2),
    }
    t = interleaved(calls, repeat)
    return {
        "m2t": float(np.median(t["m2t"])),
        "plain": float(np.median(t["plain"])),
        "counting": float(np.median(t["counting"])),
        "min_ratio": float(np.min(t["m2t"]) / np.min(t["plain"])),
        "flops": m2t_flops / plain_flops,
        "bytes": m2t_bytes / plain_bytes,
    }


def bench_compile_modes(size: dict, repeat: int) -> dict[str, float]:
    v1, v2 = views("mlp", size)
    candidates: dict[str, Callable[[], jax.Array]] = {}

    model, opt = build("mlp", size)
    candidates["nnx.jit (train_step)"] = lambda: train_step(model, opt, v1, v2)

    model2, opt2 = build("mlp", size)
    cached = nnx.cached_partial(train_step, model2, opt2)
    candidates["nnx.cached_partial(nnx.jit)"] = lambda: cached(v1, v2)

    model3, opt3 = build("mlp", size)
    fast = make_train_step(model3, opt3)
    candidates["nnx.jit_partial(graph=False) (make_train_step)"] = lambda: fast(v1, v2)

    model4, opt4 = build("mlp", size)
    graphdef, state = nnx.split((model4, opt4))

    @jax.jit
    def pure_step(state: nnx.State, a: jax.Array, b: jax.Array) -> tuple[jax.Array, nnx.State]:
        m, o = nnx.merge(graphdef, state)
        loss = train_step_body(m, o, a, b)
        return loss, nnx.state((m, o))

    holder = {"state": state}

    def split_merge() -> jax.Array:
        loss, holder["state"] = pure_step(holder["state"], v1, v2)
        return loss

    candidates["nnx.split/merge + jax.jit (state outside)"] = split_merge
    return {name: float(np.median(t)) for name, t in interleaved(candidates, repeat).items()}


def cnn_shape(text: str) -> dict[str, int]:
    """``"16x32x64"`` → ``{"width": 16, "side": 32, "batch": 64}`` (for ``--cnn``)."""
    try:
        width, side, batch = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxSIDExBATCH, e.g. 16x32x64, got {text!r}") from None
    if min(width, side, batch) < 1:
        raise argparse.ArgumentTypeError(f"width, side and batch must be positive, got {text!r}")
    return {"width": width, "side": side, "batch": batch}


SIZES = {
    "full": {
        "mlp": {"din": 256, "width": 512, "hidden": 1024, "proj": 128, "batch": 128},
        "conv": {"width": 32, "side": 32, "hidden": 512, "proj": 128, "batch": 32},
        "small": {"din": 32, "width": 64, "hidden": 64, "proj": 32, "batch": 16},
    },
    "quick": {
        "mlp": {"din": 32, "width": 64, "hidden": 64, "proj": 32, "batch": 32},
        "conv": {"width": 8, "side": 8, "hidden": 32, "proj": 16, "batch": 8},
        "small": {"din": 16, "width": 16, "hidden": 16, "proj": 8, "batch": 8},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (a smoke run)")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls per candidate")
    parser.add_argument(
        "--cnn",
        action="append",
        default=[],
        type=cnn_shape,
        metavar="WIDTHxSIDExBATCH",
        help="also time this CNN (e.g. 16x32x64: width 16, 32×32 images, 2 views × 64); repeatable",
    )
    args = parser.parse_args()
    sizes = SIZES["quick" if args.quick else "full"]
    repeat = args.repeat or (5 if args.quick else 100)

    print(
        f"jax {jax.__version__}, {jax.devices()[0].platform} ({jax.device_count()} device(s)), "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; median of {repeat} "
        "calls per candidate, candidates alternating call by call"
    )
    print()
    print(
        "| model | M2T step | plain-BN teacher | ratio of medians | ratio of minima "
        "| XLA flops ratio | XLA bytes ratio | control: plain BN + `step += 1` counters (ratio to plain) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    models = [("mlp", sizes["mlp"]), ("conv", sizes["conv"])]
    models += [("conv", {**sizes["conv"], **extra}) for extra in args.cnn]
    for kind, size in models:
        r = bench_overhead(kind, size, repeat)
        heads = f"heads {size['hidden']}→{size['proj']}, 2 views × {size['batch']}"
        if kind == "mlp":
            label = f"MLP {size['din']}→{size['width']}→{size['width']}, {heads}"
        else:
            label = f"CNN {size['side']}×{size['side']}×3, width {size['width']}, {heads}"
        print(
            f"| {label} | {r['m2t'] * 1e3:.2f} ms | {r['plain'] * 1e3:.2f} ms | {r['m2t'] / r['plain']:.3f}× "
            f"| {r['min_ratio']:.3f}× | {r['flops']:.4f}× | {r['bytes']:.4f}× "
            f"| {r['counting'] * 1e3:.2f} ms ({r['counting'] / r['plain']:.3f}×) |"
        )
    print()
    small = sizes["small"]
    modes = bench_compile_modes(small, 5 * repeat)
    fastest = min(modes.values())
    print(
        f"Compiling the NNX step, small MLP (in {small['din']}, width {small['width']}, "
        f"2 views × {small['batch']}): time per step, and relative to the fastest"
    )
    print()
    print("| how the step is compiled | time per step | relative |")
    print("|---|---|---|")
    for name, t in modes.items():
        print(f"| {name} | {t * 1e6:.0f} µs | {t / fastest:.2f}× |")


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before printing its description
    main()
