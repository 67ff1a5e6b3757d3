"""Keras-adapter test configuration: one intra-op thread, so runs that are compared bit for bit
(save/load/resume) take the same reduction order every time (DESIGN §5).

The backend comes from ``KERAS_BACKEND`` (tox sets it per environment). JAX reads its thread flags
from the environment when it starts, so they are set before anything imports keras.
"""

import os

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")

if BACKEND == "jax":
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1".strip()
        )

import keras  # noqa: E402  (after the JAX flags)
import pytest  # noqa: E402

if BACKEND == "tensorflow":
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
elif BACKEND == "torch":
    import torch

    torch.set_num_threads(1)

assert keras.backend.backend() == BACKEND


@pytest.fixture
def float32_policy():
    """Restore the global dtype policy after a test that changes it."""
    yield
    keras.mixed_precision.set_global_policy("float32")
