"""The framework-neutral checkpoint format (m2t_core.checkpoint): round trip, metadata, and every error."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from m2t_core import checkpoint as ck
from m2t_core.reference_net import ReferenceConfig, canonical_spec, init_checkpoint

CONFIG = ReferenceConfig(in_channels=2, width=3, hidden_dim=5, projection_dim=4)


@pytest.fixture
def arrays():
    return init_checkpoint(CONFIG, seed=1)


def test_save_and_load_are_bit_exact_and_keep_the_config(tmp_path, arrays):
    arrays = dict(arrays, **{"student.backbone.extra.kernel": np.arange(6, dtype=np.float64).reshape(2, 3)})
    config = {"architecture": "x", "nested": {"k": [1, 2]}}
    path = ck.save_checkpoint(tmp_path / "m.safetensors", arrays, config=config)
    loaded = ck.load_checkpoint(path)
    assert loaded.config == config
    assert ck.read_config(path) == config
    assert set(loaded.arrays) == set(arrays)
    for name, value in arrays.items():
        assert loaded.arrays[name].dtype == value.dtype, name
        assert loaded.arrays[name].shape == value.shape, name  # 0-d counters stay 0-d
        np.testing.assert_array_equal(loaded.arrays[name], value)


def test_transposed_views_are_written_by_value(tmp_path):
    kernel = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = ck.save_checkpoint(
        tmp_path / "t.safetensors", {"student.projector.linear1.kernel": kernel.T, "step": np.asarray(0)}
    )
    np.testing.assert_array_equal(
        ck.load_checkpoint(path).arrays["student.projector.linear1.kernel"], kernel.T
    )


def test_files_that_are_not_m2t_checkpoints_are_rejected(tmp_path, arrays):
    plain = tmp_path / "plain.safetensors"
    save_file({"a": np.zeros(2, np.float32)}, str(plain))
    with pytest.raises(ValueError, match=r"not an m2t checkpoint.*format=None"):
        ck.load_checkpoint(plain)
    newer = tmp_path / "v2.safetensors"
    save_file({"step": np.zeros((), np.int64)}, str(newer), metadata={"format": "m2t", "version": "2"})
    with pytest.raises(ValueError, match=r"version '2'.*reads version '1'"):
        ck.load_checkpoint(newer)
    with pytest.raises(ValueError, match="version '2'"):
        ck.read_config(newer)
    broken = tmp_path / "broken.safetensors"
    save_file(
        {"step": np.zeros((), np.int64)},
        str(broken),
        metadata={"format": "m2t", "version": "1", "config": "{"},
    )
    with pytest.raises(ValueError, match="not valid JSON"):
        ck.load_checkpoint(broken)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        ck.load_checkpoint(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("teacher.predictor.linear1.kernel", np.zeros(2, np.float32), "the teacher has the parts"),
        ("pupil.backbone.conv.kernel", np.zeros(2, np.float32), "expected 'student' or 'teacher'"),
        ("student.backbone", np.zeros(2, np.float32), "is not"),
        ("student.backbone.bad-name.kernel", np.zeros(2, np.float32), "invalid path segments"),
        ("student.backbone..kernel", np.zeros(2, np.float32), "invalid path segments"),
        ("teacher.backbone.stem.bn.step", np.zeros((), np.int32), "int64 scalar"),
        ("step", np.zeros(1, np.int64), "int64 scalar"),
        ("student.backbone.stem.conv.kernel", np.zeros(2, np.int64), "must be floating"),
    ],
)
def test_invalid_arrays_are_rejected_when_saving(tmp_path, arrays, name, value, message):
    bad = dict(arrays, **{name: value})
    with pytest.raises(ValueError, match=message):
        ck.save_checkpoint(tmp_path / "bad.safetensors", bad)
    assert not (tmp_path / "bad.safetensors").exists()


def test_non_arrays_and_bad_configs_are_rejected(tmp_path, arrays):
    with pytest.raises(TypeError, match="NumPy arrays"):
        ck.check_canonical(dict(arrays, step=0))
    with pytest.raises(TypeError, match="mapping"):
        ck.check_canonical([("step", np.zeros((), np.int64))])
    with pytest.raises(ValueError, match="JSON-serialisable"):
        ck.save_checkpoint(tmp_path / "c.safetensors", arrays, config={"f": object()})


def test_check_matches_names_every_problem(arrays):
    expected = canonical_spec(CONFIG)
    ck.check_matches(arrays, expected)  # the seeded arrays fit the spec exactly
    bad = dict(arrays)
    del bad["student.backbone.stem.conv.kernel"]
    bad["student.backbone.stem.conv.bias"] = np.zeros(3, np.float32)
    bad["teacher.projector.linear2.bias"] = np.zeros(7, np.float32)
    bad["student.predictor.bn.scale"] = bad["student.predictor.bn.scale"].astype(np.float64)
    with pytest.raises(ValueError, match="does not match the test model") as info:
        ck.check_matches(bad, expected, target="the test model")
    message = str(info.value)
    assert "does not match the test model" in message
    assert "missing names: student.backbone.stem.conv.kernel" in message
    assert "names the test model does not have: student.backbone.stem.conv.bias" in message
    assert "teacher.projector.linear2.bias has shape (7,), the test model expects (4,)" in message
    assert "student.predictor.bn.scale has dtype float64, the test model expects float32" in message


def test_long_lists_are_shortened(arrays):
    with pytest.raises(ValueError, match=r"\.\.\. \(\d+ more\)"):
        ck.check_matches({"step": arrays["step"]}, canonical_spec(CONFIG))


def test_model_config_is_json_ready():
    config = ck.model_config(
        framework="numpy",
        backbone=CONFIG.backbone_dict(),
        feature_dim=6,
        hidden_dim=5,
        projection_dim=4,
        total_steps=None,
        base_momentum=0.99,
        final_momentum=1,
        alpha_start=0,
        alpha_end=1,
        correction="biased",
    )
    assert json.loads(json.dumps(config)) == config
    assert ReferenceConfig.from_model_config(config) == CONFIG
    assert config["total_steps"] is None
    assert isinstance(config["final_momentum"], float)
