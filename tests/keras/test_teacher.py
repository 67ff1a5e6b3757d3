"""M2Teacher: the normative training step under Keras's own fit, on every backend."""

import keras
import ml_dtypes
import numpy as np
import pytest

import m2t_core
from m2t_core.testing import assert_close
from m2t_keras import M2Teacher, MomentumBatchNormalization

BACKEND = keras.backend.backend()
to_np = keras.ops.convert_to_numpy
TOTAL_STEPS = 12


def backbone(in_dim=4, width=6, out_dim=5):
    return keras.Sequential(
        [
            keras.Input((in_dim,)),
            keras.layers.Dense(width, name="d1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(),
            keras.layers.Dense(out_dim, name="d2"),
        ],
        name="backbone",
    )


def make_model(seed=0, optimizer=None, **compile_kwargs):
    keras.utils.set_random_seed(seed)
    model = M2Teacher(backbone(), hidden_dim=8, projection_dim=4, total_steps=TOTAL_STEPS)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1, momentum=0.9), **compile_kwargs)
    return model


def view_pairs(n=32, dim=4, seed=0):
    """Two noisy views of the same points drawn around four centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(4, dim))
    points = centres[rng.integers(0, 4, n)] + rng.normal(scale=0.3, size=(n, dim))
    v1 = points + rng.normal(scale=0.1, size=points.shape)
    v2 = points + rng.normal(scale=0.1, size=points.shape)
    return v1.astype(np.float32), v2.astype(np.float32)


def values(variables):
    return [to_np(v).copy() for v in variables]


def test_fit_lowers_the_loss():
    model = make_model()
    history = model.fit(view_pairs(64), batch_size=16, epochs=3, shuffle=False, verbose=0).history
    assert set(history) == {"loss", "teacher_momentum", "stats_momentum"}
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    # The momenta logged are those of the latest step (k = 11 of 12).
    assert_close(
        history["teacher_momentum"][-1], np.float32(m2t_core.teacher_momentum_schedule(TOTAL_STEPS)(11))
    )
    assert_close(history["stats_momentum"][-1], np.float32(m2t_core.stats_momentum_schedule(TOTAL_STEPS)(11)))


def test_training_step_follows_the_normative_order():
    """EMA with m_k first, then one teacher forward on both views with α_k, then the commit."""
    model = make_model()
    v1, v2 = view_pairs(8)
    teacher_bn = model.teacher_backbone.get_layer("bn")
    pairs = model.ema_pairs()
    initial = values(t for t, _ in pairs)
    model.train_on_batch((v1, v2))
    # Step 0: the teacher is an exact copy of the student, so the EMA leaves it (to rounding) as is.
    assert_close([to_np(t) for t, _ in pairs], initial)
    for k in (1, 2):
        teacher = {str(i): to_np(t) for i, (t, _) in enumerate(pairs)}
        student = {str(i): to_np(s) for i, (_, s) in enumerate(pairs)}
        stats = m2t_core.MomentumStats(*[to_np(a) for a in teacher_bn.stats])
        m_k = np.float32(m2t_core.teacher_momentum_schedule(TOTAL_STEPS)(k))
        alpha_k = np.float32(m2t_core.stats_momentum_schedule(TOTAL_STEPS)(k))
        logs = model.train_on_batch((v1, v2), return_dict=True)

        expected = m2t_core.ema_update(teacher, student, float(m_k))
        assert_close({str(i): to_np(t) for i, (t, _) in enumerate(pairs)}, expected, rtol=1e-5, atol=1e-6)
        # The teacher's BN input is its first Dense layer, with the *updated* weights, applied to
        # both views concatenated; its statistics commit once with α_k over two views.
        index = {t.path.split("/", 1)[1]: str(i) for i, (t, _) in enumerate(pairs)}
        kernel, bias = expected[index["d1/kernel"]], expected[index["d1/bias"]]
        hidden = np.concatenate([v1, v2]) @ kernel + bias
        _, stats_ref = m2t_core.momentum_batch_norm(
            hidden, stats, alpha=float(alpha_k), num_views=2, eps=1e-3
        )
        assert_close(tuple(teacher_bn.stats), tuple(stats_ref), rtol=1e-4, atol=1e-5)
        assert int(to_np(model.step)) == k + 1
        assert_close(logs["teacher_momentum"], m_k)
        assert_close(logs["stats_momentum"], alpha_k)


def test_only_the_student_is_trainable():
    model = make_model()
    student = [model.student_backbone, model.student_projector, model.predictor]
    expected = {id(v) for part in student for v in part.trainable_weights}
    assert {id(v) for v in model.trainable_weights} == expected
    teacher_vars = model.teacher_backbone.weights + model.teacher_projector.weights
    assert not any(v.trainable for v in teacher_vars)
    assert sum(isinstance(layer, MomentumBatchNormalization) for layer in model.teacher_backbone.layers) == 1
    # Every teacher parameter has a student partner; statistics and counters do not.
    assert len(model.ema_pairs()) == len(model.student_backbone.trainable_weights) + len(
        model.student_projector.trainable_weights
    )


def test_evaluation_changes_no_state():
    model = make_model()
    pairs = view_pairs(16)
    model.fit(pairs, batch_size=8, epochs=1, shuffle=False, verbose=0)
    before = values(model.variables)
    model.evaluate(pairs, batch_size=8, verbose=0)
    out = model.predict(pairs, batch_size=8, verbose=0)
    features = model.teacher_backbone(pairs[0], training=False)
    assert all(np.array_equal(b, to_np(v)) for b, v in zip(before, model.variables, strict=True))
    assert set(out) == {"p1", "p2", "z1", "z2"}
    assert out["z1"].shape == (16, 4)
    assert tuple(features.shape) == (16, 5)


# Compiled configurations each backend offers. The PyTorch backend runs one step per call; its
# jit_compile=True (torch.compile) has its own, shorter test below: compiling takes ~40 s on a CPU.
COMPILED = {
    "tensorflow": [
        {"jit_compile": True},
        {"steps_per_execution": 2},
        {"jit_compile": True, "steps_per_execution": 2},
    ],
    "jax": [{"jit_compile": True, "steps_per_execution": 2}],
    "torch": [],
}[BACKEND]

if COMPILED:

    @pytest.mark.parametrize("compile_kwargs", COMPILED, ids=str)
    def test_compiled_training_matches_default(compile_kwargs):
        pairs = view_pairs(32)
        reference = make_model()  # Keras's default: XLA off on a TensorFlow CPU, jitted on JAX
        reference.fit(pairs, batch_size=8, epochs=2, shuffle=False, verbose=0)
        compiled = make_model(**compile_kwargs)
        history = compiled.fit(pairs, batch_size=8, epochs=2, shuffle=False, verbose=0).history
        assert int(to_np(compiled.step)) == 8
        assert_close(values(compiled.variables), values(reference.variables), rtol=1e-4, atol=1e-5)
        assert_close(
            history["stats_momentum"][-1], np.float32(m2t_core.stats_momentum_schedule(TOTAL_STEPS)(7))
        )


if BACKEND == "torch":

    def test_torch_compile_matches_eager():
        """jit_compile=True is torch.compile (inductor): three steps equal the eager ones."""
        v1, v2 = view_pairs(24)
        batches = [(v1[i : i + 8], v2[i : i + 8]) for i in (0, 8, 16)]
        runs = {}
        for jit_compile in (False, True):
            model = make_model(jit_compile=jit_compile)
            logs = [model.train_on_batch(batch, return_dict=True) for batch in batches]
            runs[jit_compile] = (model, logs)
        (eager, eager_logs), (compiled, compiled_logs) = runs[False], runs[True]
        assert compiled.jit_compile is True
        assert int(to_np(compiled.step)) == 3
        for got, want in zip(compiled_logs, eager_logs, strict=True):
            assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert_close(values(compiled.variables), values(eager.variables), rtol=1e-4, atol=1e-5)
        assert_close(
            values(compiled.optimizer.variables), values(eager.optimizer.variables), rtol=1e-4, atol=1e-5
        )


def test_a_zero_prediction_leaves_the_weights_finite():
    """A zero prediction vector (e.g. all hidden ReLUs off, zero bias) has a finite gradient.

    ``normalize`` divides by ``max(‖p‖, eps)``; differentiating ``sqrt`` at 0 gave ``inf · 0 = NaN``
    and turned every predictor weight NaN after one step. The gradient is now the PyTorch
    reference's (``vector_norm``'s subgradient 0 at 0).
    """
    model = make_model()
    model.predictor.get_layer("dense_out").kernel.assign(np.zeros((8, 4), np.float32))
    logs = model.train_on_batch(view_pairs(8), return_dict=True)
    assert_close(logs["loss"], np.float32(4.0))  # cos(0, z) = 0 for both terms
    assert all(np.isfinite(to_np(v)).all() for v in model.variables)


def test_save_load_and_resume_is_bit_identical(tmp_path):
    pairs = view_pairs(32)
    fit = {"batch_size": 8, "shuffle": False, "verbose": 0}
    uninterrupted = make_model(optimizer=keras.optimizers.Adam(1e-2))
    uninterrupted.fit(pairs, epochs=4, **fit)

    first = make_model(optimizer=keras.optimizers.Adam(1e-2))
    first.fit(pairs, epochs=2, **fit)
    path = tmp_path / "m2t.keras"
    first.save(path)
    resumed = keras.models.load_model(path)
    assert isinstance(resumed, M2Teacher)
    assert resumed.compiled
    assert int(to_np(resumed.optimizer.iterations)) == 8
    resumed.fit(pairs, epochs=2, **fit)

    for a, b in zip(uninterrupted.variables, resumed.variables, strict=True):
        assert (a.name, tuple(a.shape)) == (b.name, tuple(b.shape))
        np.testing.assert_array_equal(to_np(a), to_np(b), err_msg=a.path)
    for a, b in zip(uninterrupted.optimizer.variables, resumed.optimizer.variables, strict=True):
        np.testing.assert_array_equal(to_np(a), to_np(b), err_msg=a.path)


def test_mixed_bfloat16_keeps_ema_and_statistics_float32(float32_policy):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = make_model()
    v1, v2 = view_pairs(8)
    model.train_on_batch((v1, v2))
    pairs = model.ema_pairs()
    teacher, student = values(t for t, _ in pairs), values(s for _, s in pairs)
    m_1 = np.float32(m2t_core.teacher_momentum_schedule(TOTAL_STEPS)(1))
    model.train_on_batch((v1, v2))
    out = model((v1, v2))
    assert kops_dtype(out["p1"]) == "bfloat16"
    for (t, _), t0, s0 in zip(pairs, teacher, student, strict=True):
        assert kops_dtype(t.value) == "float32"
        # A bfloat16 EMA would be off by ~1e-3 relative; the float32 one agrees to rounding.
        np.testing.assert_allclose(to_np(t), m_1 * t0 + (np.float32(1) - m_1) * s0, rtol=1e-6, atol=1e-7)
    mean = to_np(model.teacher_backbone.get_layer("bn").moving_mean)
    assert mean.dtype == np.float32
    assert not np.array_equal(mean, mean.astype(ml_dtypes.bfloat16).astype(np.float32))


def kops_dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


class PairBatches(keras.utils.PyDataset):
    """Batches in one of the element forms M2Teacher accepts."""

    def __init__(self, v1, v2, batch, form):
        super().__init__()
        self.v1, self.v2, self.batch, self.form = v1, v2, batch, form

    def __len__(self):
        return len(self.v1) // self.batch

    def __getitem__(self, i):
        a, b = (v[i * self.batch : (i + 1) * self.batch] for v in (self.v1, self.v2))
        return ((a, b),) if self.form == "tuple" else {"view1": a, "view2": b}


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_dataset_element_forms(form):
    model = make_model()
    model.fit(PairBatches(*view_pairs(16), batch=8, form=form), epochs=1, verbose=0)
    assert int(to_np(model.step)) == 2


def test_inputs_that_are_not_a_pair_are_rejected():
    model = make_model()
    v1, v2 = view_pairs(8)
    with pytest.raises(TypeError, match="lambda v1, v2"):
        model(v1)
    with pytest.raises(ValueError, match="same shape"):
        model((v1, v2[:4]))
    # A fresh model per failing fit: the JAX trainer leaves a model whose fit raised unusable.
    with pytest.raises(TypeError, match=r"read by Keras as \(x, y\)"):
        make_model().fit(v1, v2, epochs=1, verbose=0)  # x=v1, y=v2 to Keras
    with pytest.raises(ValueError, match="unlabelled"):
        make_model().fit((v1, v2), np.zeros(8), epochs=1, verbose=0)


def test_compile_rejects_a_loss():
    model = M2Teacher(backbone(), hidden_dim=8, projection_dim=4, total_steps=TOTAL_STEPS)
    with pytest.raises(ValueError, match="optimizer only"):
        model.compile(optimizer="sgd", loss="mse")


def test_bad_backbones_and_arguments():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="Functional or Sequential"):
        M2Teacher(Sub(), total_steps=10)
    conv = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match="GlobalAveragePooling2D"):
        M2Teacher(conv, total_steps=10)
    with pytest.raises(ValueError, match="feature_dim=7 but the backbone outputs 5"):
        M2Teacher(backbone(), feature_dim=7, total_steps=10)
    with pytest.raises(ValueError, match="total_steps is required"):
        M2Teacher(backbone())
    with pytest.raises(ValueError, match="hidden_dim must be a positive int"):
        M2Teacher(backbone(), hidden_dim=0, total_steps=10)
