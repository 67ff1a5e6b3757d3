"""fit under data parallelism on 2 logical CPU devices: every replica ends with the same teacher.

Each backend's distribution API is backend-specific by nature, so each test is collected only in its
own environment and runs in a subprocess (device counts must be set before the framework starts).
"""

import json
import os
import subprocess
import sys

import keras

BACKEND = keras.backend.backend()

COMMON = """
import json
import numpy as np
import keras
import m2t_keras

def build():
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(6, name="d1"), keras.layers.BatchNormalization(name="bn"),
        keras.layers.ReLU(), keras.layers.Dense(5, name="d2")])
    model = m2t_keras.M2Teacher(backbone, hidden_dim=8, projection_dim=4, total_steps=12)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model

rng = np.random.default_rng(0)
points = rng.normal(size=(32, 4)) * 2.0
v1 = (points + 0.1 * rng.normal(size=points.shape)).astype("float32")
v2 = (points + 0.1 * rng.normal(size=points.shape)).astype("float32")
def teacher_state(model):
    mbn = model.teacher_backbone.get_layer("bn")
    return (model.teacher_backbone.weights + model.teacher_projector.weights
            + [model.step, mbn.step, mbn.skipped])
"""

JAX_SCRIPT = (
    """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
"""
    + COMMON
    + """
devices = keras.distribution.list_devices("cpu")
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
model = build()
history = model.fit((v1, v2), batch_size=8, epochs=2, shuffle=False, verbose=0).history
identical, shards = {}, {}
for v in teacher_state(model):
    parts = [np.asarray(s.data) for s in v.value.addressable_shards]
    shards[v.path] = len({str(s.device) for s in v.value.addressable_shards})
    identical[v.path] = all(np.array_equal(parts[0], p) for p in parts[1:])
distributed = [keras.ops.convert_to_numpy(v) for v in teacher_state(model)]

# The same training on one device: DataParallel computes the teacher's moments over the global batch.
keras.distribution.set_distribution(None)
single = build()
single.fit((v1, v2), batch_size=8, epochs=2, shuffle=False, verbose=0)
max_diff = max(float(np.max(np.abs(a - keras.ops.convert_to_numpy(b)))) for a, b in zip(distributed, teacher_state(single)))
mean = keras.ops.convert_to_numpy(model.teacher_backbone.get_layer("bn").moving_mean)
print(json.dumps({"devices": len(devices), "identical": identical, "shards": shards, "max_diff": max_diff,
                  "moved": bool(np.any(mean != 0)), "step": int(keras.ops.convert_to_numpy(model.step)),
                  "loss": history["loss"]}))
"""
)

TF_SCRIPT = (
    """
import os
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""
    + COMMON
    + """
strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
with strategy.scope():
    model = build()
data = (tf.data.Dataset.from_tensor_slices((v1, v2)).batch(8, drop_remainder=True)
        .map(lambda a, b: ((a, b),)))
history = model.fit(data, epochs=2, verbose=0).history

def replicas(v):
    return [r.numpy() for r in v.value.values]

identical = {v.path: all(np.array_equal(replicas(v)[0], r) for r in replicas(v)[1:]) for v in teacher_state(model)}
shards = {v.path: len(replicas(v)) for v in teacher_state(model)}
# Keras's own BatchNormalization in the student keeps per-replica statistics: the replicas did see
# different halves of each batch, so identical teacher statistics are the aggregation's doing.
student_bn = model.student_backbone.get_layer("bn").moving_mean
mean = model.teacher_backbone.get_layer("bn").moving_mean
print(json.dumps({"devices": strategy.num_replicas_in_sync, "identical": identical, "shards": shards,
                  "student_bn_differs": not np.array_equal(*replicas(student_bn)),
                  "moved": bool(np.any(replicas(mean)[0] != 0)), "step": int(model.step.numpy()),
                  "loss": history["loss"]}))
"""
)


def run(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_replicas(result):
    assert result["devices"] == 2
    assert set(result["shards"].values()) == {2}, result["shards"]
    assert all(result["identical"].values()), result["identical"]
    assert result["moved"]
    assert result["step"] == 8
    assert all(0.0 <= loss <= 8.0 for loss in result["loss"])


if BACKEND == "jax":

    def test_data_parallel_replicas_hold_identical_teachers(tmp_path):
        result = run(JAX_SCRIPT, tmp_path)
        check_replicas(result)
        assert result["max_diff"] < 1e-5


if BACKEND == "tensorflow":

    def test_mirrored_strategy_replicas_hold_identical_teachers(tmp_path):
        result = run(TF_SCRIPT, tmp_path)
        check_replicas(result)
        assert result["student_bn_differs"]
