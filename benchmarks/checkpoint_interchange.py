"""Time export and import of the canonical checkpoint in every adapter, side by side in one process.

    python benchmarks/checkpoint_interchange.py [--width 64] [--hidden-dim 4096] [--repeats 5]

Builds the reference M2T model (ReferenceNet backbone, BYOL-sized heads by default) in PyTorch,
Keras (its configured backend, TensorFlow by default), Flax NNX and Flax Linen, and prints the median
wall time of ``to_canonical`` (model → NumPy arrays), ``from_canonical`` (arrays → model, checks
included), ``export_checkpoint`` and ``import_checkpoint`` (safetensors file on local disk), with the
ratio to PyTorch. CPU only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

from m2t_core.reference_net import ReferenceConfig, init_checkpoint


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm up (first-call compilation, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def adapters(config: ReferenceConfig) -> dict[str, tuple[object, object]]:
    """``{name: (module with the four interchange functions, model or Linen state)}``."""
    import jax
    import optax
    from flax import nnx

    import m2t_flax
    import m2t_torch
    from m2t_flax.linen_teacher import M2Teacher as LinenM2Teacher
    from m2t_keras import M2Teacher as KerasM2Teacher
    from m2t_keras import interchange as keras_interchange
    from m2t_keras.models import ReferenceNet as KerasReferenceNet

    heads = {"hidden_dim": config.hidden_dim, "projection_dim": config.projection_dim, "total_steps": 1000}
    torch_model = m2t_torch.M2Teacher(m2t_torch.ReferenceNet(config.in_channels, config.width), **heads)
    keras_model = KerasM2Teacher(KerasReferenceNet((32, 32, config.in_channels), config.width), **heads)
    rngs = nnx.Rngs(0)
    nnx_model = m2t_flax.nnx.M2Teacher(
        m2t_flax.nnx.ReferenceNet(config.in_channels, config.width, rngs=rngs), rngs=rngs, **heads
    )
    linen = LinenM2Teacher.reference(width=config.width, **heads)
    sample = np.zeros((2, 32, 32, config.in_channels), np.float32)
    linen_state = linen.init_state(jax.random.key(0), sample, optax.sgd(0.1))
    return {
        "torch": (m2t_torch, torch_model),
        f"keras-{os.environ['KERAS_BACKEND']}": (keras_interchange, keras_model),
        "flax-nnx": (m2t_flax, nnx_model),
        "flax-linen": (m2t_flax, linen_state),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--hidden-dim", type=int, default=4096)
    parser.add_argument("--projection-dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = ReferenceConfig(3, args.width, args.hidden_dim, args.projection_dim)
    arrays = init_checkpoint(config, seed=0)
    megabytes = sum(a.nbytes for a in arrays.values()) / 2**20
    print(
        f"reference model: width {args.width}, heads {args.hidden_dim}->{args.projection_dim}, "
        f"{len(arrays)} arrays, {megabytes:.1f} MiB; median of {args.repeats} runs, ms"
    )
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (module, model) in adapters(config).items():
            path = Path(tmp) / f"{name}.safetensors"
            module.export_checkpoint(model, path)
            rows[name] = {
                "to_canonical": median_ms(lambda m=module, x=model: m.to_canonical(x), args.repeats),
                "from_canonical": median_ms(
                    lambda m=module, x=model: m.from_canonical(x, arrays), args.repeats
                ),
                "export_checkpoint": median_ms(
                    lambda m=module, x=model, p=path: m.export_checkpoint(x, p), args.repeats
                ),
                "import_checkpoint": median_ms(
                    lambda m=module, x=model, p=path: m.import_checkpoint(x, p), args.repeats
                ),
            }
    columns = list(next(iter(rows.values())))
    print("| adapter | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    base = rows["torch"]
    for name, row in rows.items():
        cells = [f"{row[c]:.1f} ({row[c] / base[c]:.2f}x)" for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
