"""The NumPy reference model (m2t_core.reference_net): names, initial weights, convolution, forward."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2t_core import init_stats, momentum_batch_norm
from m2t_core.reference_net import (
    ReferenceConfig,
    backbone_convs,
    canonical_spec,
    conv2d,
    init_checkpoint,
    step_loss,
    student_forward,
    teacher_forward,
)

CONFIG = ReferenceConfig(in_channels=3, width=4, hidden_dim=12, projection_dim=6)


def naive_conv(x, kernel, stride, padding):
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    kh, kw, _, cout = kernel.shape
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, cout))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j, :] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(1, 7),
    kernel=st.sampled_from([1, 3]),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    seed=st.integers(0, 2**16),
)
def test_conv2d_matches_the_definition(size, kernel, stride, padding, seed):
    rng = np.random.default_rng(seed)
    if size + 2 * padding < kernel:
        return
    x = rng.standard_normal((2, size, size + 1, 3))
    k = rng.standard_normal((kernel, kernel, 3, 2))
    np.testing.assert_allclose(
        conv2d(x, k, stride, padding), naive_conv(x, k, stride, padding), rtol=1e-12, atol=1e-12
    )


def test_conv2d_rejects_mismatched_channels():
    with pytest.raises(ValueError, match="has 3 channels"):
        conv2d(np.zeros((1, 4, 4, 3)), np.zeros((3, 3, 2, 1)))


def test_initial_checkpoint_fits_the_spec_and_the_teacher_copies_the_student():
    arrays = init_checkpoint(CONFIG, seed=5, dtype=np.float64)
    spec = canonical_spec(CONFIG, np.float64)
    assert list(arrays) == list(spec)
    for name, (shape, dtype) in spec.items():
        assert arrays[name].shape == shape, name
        assert arrays[name].dtype == dtype, name
    for name, value in arrays.items():
        if name.startswith("teacher.") and name.rsplit(".", 1)[-1] in ("kernel", "bias", "scale"):
            np.testing.assert_array_equal(value, arrays["student." + name[len("teacher.") :]])
    # Scales and biases are not the usual ones and zeros, so mixing them up cannot go unnoticed.
    assert not np.allclose(arrays["student.backbone.stem.bn.scale"], 1.0)
    assert not np.allclose(arrays["student.backbone.stem.bn.bias"], 0.0)
    np.testing.assert_array_equal(init_checkpoint(CONFIG, seed=5, dtype=np.float64)["step"], arrays["step"])
    assert not np.array_equal(
        init_checkpoint(CONFIG, seed=6)["student.backbone.stem.conv.kernel"],
        arrays["student.backbone.stem.conv.kernel"].astype(np.float32),
    )


def test_backbone_layout_has_the_fixed_paths():
    paths = [(c.conv, c.bn, c.stride, c.padding) for c in backbone_convs(CONFIG)]
    assert paths == [
        ("stem.conv", "stem.bn", 1, 1),
        ("stage1.conv1", "stage1.bn1", 1, 1),
        ("stage1.conv2", "stage1.bn2", 1, 1),
        ("stage2.conv1", "stage2.bn1", 2, 1),
        ("stage2.conv2", "stage2.bn2", 1, 1),
        ("stage2.shortcut.conv", "stage2.shortcut.bn", 2, 0),
    ]


def test_teacher_forward_commits_and_evaluation_changes_nothing():
    arrays = init_checkpoint(CONFIG, seed=0, dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((8, 6, 6, 3))
    z, committed = teacher_forward(arrays, x, CONFIG, alpha=0.25)
    assert z.shape == (8, CONFIG.projection_dim)
    assert committed["teacher.backbone.stem.bn.step"] == 1
    assert committed["teacher.projector.bn.skipped"] == 0
    assert not np.allclose(committed["teacher.backbone.stem.bn.mean"], 0.0)
    # The stem's commit is the convex mix of the view moments with the stored (0, 1).
    h = conv2d(x, arrays["teacher.backbone.stem.conv.kernel"], 1, 1)
    _, expected = momentum_batch_norm(h, init_stats(4, np.float64), alpha=0.25)
    np.testing.assert_allclose(committed["teacher.backbone.stem.bn.mean"], expected.mean, rtol=1e-12)
    z_eval, unchanged = teacher_forward(arrays, x[:3], CONFIG, alpha=0.25, training=False)
    assert z_eval.shape == (3, CONFIG.projection_dim)
    np.testing.assert_array_equal(
        unchanged["teacher.backbone.stem.bn.var"], arrays["teacher.backbone.stem.bn.var"]
    )


def test_student_and_loss():
    arrays = init_checkpoint(CONFIG, seed=0, dtype=np.float64)
    rng = np.random.default_rng(2)
    v1, v2 = rng.standard_normal((2, 4, 6, 6, 3))
    p = student_forward(arrays, v1, CONFIG)
    assert p.shape == (4, CONFIG.projection_dim)
    loss, z = step_loss(arrays, v1, v2, CONFIG, alpha=0.0)
    assert 0.0 <= float(loss) <= 8.0
    assert z.shape == (8, CONFIG.projection_dim)
    # The symmetrised loss does not depend on the order of the views.
    swapped, _ = step_loss(arrays, v2, v1, CONFIG, alpha=0.0)
    np.testing.assert_allclose(float(swapped), float(loss), rtol=1e-12)
    # It is the mean of 2 - 2 cos over both pairs, computed here from the parts.
    b = v1.shape[0]
    p1, p2 = student_forward(arrays, v1, CONFIG), student_forward(arrays, v2, CONFIG)

    def cos(a, c):
        return np.sum(a * c, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(c, axis=1)

    by_hand = np.mean(2 - 2 * cos(p1, z[b:]) + 2 - 2 * cos(p2, z[:b]))
    np.testing.assert_allclose(float(loss), by_hand, rtol=1e-12)
    with pytest.raises(ValueError, match="NHWC images with 3 channels"):
        student_forward(arrays, np.zeros((2, 3, 6, 6)), CONFIG)


def test_config_validation():
    with pytest.raises(ValueError, match="width must be a positive int"):
        ReferenceConfig(width=0)
    with pytest.raises(ValueError, match="not the reference backbone"):
        ReferenceConfig.from_model_config({"backbone": {"architecture": "ResNet50"}})
    with pytest.raises(ValueError, match="lacks 'hidden_dim'"):
        ReferenceConfig.from_model_config({"backbone": CONFIG.backbone_dict()})
    assert CONFIG.feature_dim == 8
