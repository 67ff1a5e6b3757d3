r"""The reference architecture of the project, in NumPy: its canonical names, initial weights, forward.

Every adapter defines the same small ResNet-style backbone (``m2t_torch.ReferenceNet``,
``m2t_keras.ReferenceNet``, ``m2t_flax.nnx.ReferenceNet``, ``m2t_flax.linen.ReferenceNet``), with
the same module paths, so its checkpoints move between frameworks (:mod:`m2t_core.checkpoint`)::

    stem     conv 3×3, stride 1, padding 1, no bias (in → w)   → BN → ReLU
    stage1   basic block at width w:   conv1 3×3 → bn1 → ReLU → conv2 3×3 → bn2, + x → ReLU
    stage2   basic block at width 2w, stride 2: conv1 3×3/2 → bn1 → ReLU → conv2 3×3 → bn2,
             + shortcut (conv 1×1/2 → bn) → ReLU
    global average pooling → [N, 2w]

Padding is symmetric and explicit (one pixel on every side of a 3×3 conv, none for the 1×1 one), so
stride-2 convolutions sample the same pixels in every framework; BN epsilon is 1e-5 everywhere.
Canonical backbone paths: ``stem.conv``, ``stem.bn``, ``stage1.conv1``, ``stage1.bn1``,
``stage1.conv2``, ``stage1.bn2``, the same four in ``stage2`` plus ``stage2.shortcut.conv`` and
``stage2.shortcut.bn``. Heads (every adapter's ``M2Teacher``): ``linear1``, ``bn``, ``linear2``.

This module builds the canonical arrays of a whole M2T model with this backbone
(:func:`canonical_spec`, :func:`init_checkpoint`) and runs its teacher and student in NumPy, at any
precision (:func:`teacher_forward`, :func:`student_forward`, :func:`step_loss`) — the float64
yardstick of the cross-framework equivalence check. Images are NHWC.

References:
    He, Zhang, Ren, Sun. *Deep Residual Learning for Image Recognition.* CVPR 2016 (basic block).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from m2t_core.losses import symmetric_loss
from m2t_core.stats import MomentumStats, momentum_batch_norm

__all__ = [
    "ARCHITECTURE",
    "BN_EPSILON",
    "ArraySpec",
    "ConvLayer",
    "ReferenceConfig",
    "backbone_convs",
    "backbone_description",
    "canonical_spec",
    "conv2d",
    "init_checkpoint",
    "step_loss",
    "student_forward",
    "teacher_forward",
]

#: Name of the architecture in a checkpoint's config.
ARCHITECTURE = "m2t-reference"
#: BatchNorm epsilon of every normalisation of the reference model (PyTorch's default).
BN_EPSILON = 1e-5
HEAD_LAYERS = ("linear1", "bn", "linear2")
BN_LEAVES = ("scale", "bias", "mean", "var")


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ReferenceConfig:
    """Sizes of an M2T model with the reference backbone.

    Attributes:
        in_channels: Channels of the input images.
        width: ``w``, the width of the stem and stage 1 (stage 2 has ``2w``).
        hidden_dim: Hidden width of projector and predictor.
        projection_dim: Output width of projector and predictor.

    Raises:
        ValueError: a size that is not a positive int.
    """

    in_channels: int = 3
    width: int = 16
    hidden_dim: int = 4096
    projection_dim: int = 256

    def __post_init__(self) -> None:
        """Validate the sizes."""
        for name, value in asdict(self).items():
            _positive(name, value)

    @property
    def feature_dim(self) -> int:
        """Width of the backbone's features, ``2w``."""
        return 2 * self.width

    def backbone_dict(self) -> dict[str, Any]:
        """The backbone's description in a checkpoint config (:func:`m2t_core.checkpoint.model_config`)."""
        return backbone_description(self.in_channels, self.width)

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any]) -> ReferenceConfig:
        """The sizes recorded in a checkpoint's config (what every ``export_checkpoint`` writes).

        Args:
            config: A :func:`m2t_core.checkpoint.model_config` dict.

        Returns:
            The config.

        Raises:
            ValueError: the config does not describe a model with the reference backbone.
        """
        backbone = config.get("backbone")
        if not isinstance(backbone, Mapping) or backbone.get("architecture") != ARCHITECTURE:
            found = backbone.get("architecture") if isinstance(backbone, Mapping) else backbone
            raise ValueError(
                f"the config's backbone is {found!r}, not the reference backbone {ARCHITECTURE!r}"
            )
        try:
            return cls(
                int(backbone["in_channels"]),
                int(backbone["width"]),
                int(config["hidden_dim"]),
                int(config["projection_dim"]),
            )
        except KeyError as err:
            raise ValueError(f"the reference-model config lacks {err.args[0]!r}") from None


def backbone_description(in_channels: int, width: int) -> dict[str, Any]:
    """``{"architecture": "m2t-reference", "in_channels": ..., "width": ...}`` for checkpoint configs.

    Args:
        in_channels: Channels of the input images.
        width: ``w``.

    Returns:
        The JSON-ready description every adapter's ``ReferenceNet`` reports.
    """
    return {"architecture": ARCHITECTURE, "in_channels": int(in_channels), "width": int(width)}


class ConvLayer(NamedTuple):
    """One convolution of the reference backbone and the BatchNorm that follows it.

    Attributes:
        conv: Module path of the convolution (its kernel is ``<conv>.kernel``, HWIO, no bias).
        bn: Module path of its BatchNorm.
        in_channels: Input channels.
        out_channels: Output channels.
        size: Kernel size (square).
        stride: Stride (both axes).
        padding: Zero padding on every side.
    """

    conv: str
    bn: str
    in_channels: int
    out_channels: int
    size: int
    stride: int
    padding: int


class ArraySpec(NamedTuple):
    """Shape and dtype of one canonical array (what :func:`m2t_core.checkpoint.check_matches` reads)."""

    shape: tuple[int, ...]
    dtype: np.dtype


def backbone_convs(config: ReferenceConfig) -> list[ConvLayer]:
    """The convolutions of the reference backbone, in forward order.

    Args:
        config: The model sizes.

    Returns:
        One :class:`ConvLayer` per convolution.
    """
    c, w = config.in_channels, config.width
    return [
        ConvLayer("stem.conv", "stem.bn", c, w, 3, 1, 1),
        ConvLayer("stage1.conv1", "stage1.bn1", w, w, 3, 1, 1),
        ConvLayer("stage1.conv2", "stage1.bn2", w, w, 3, 1, 1),
        ConvLayer("stage2.conv1", "stage2.bn1", w, 2 * w, 3, 2, 1),
        ConvLayer("stage2.conv2", "stage2.bn2", 2 * w, 2 * w, 3, 1, 1),
        ConvLayer("stage2.shortcut.conv", "stage2.shortcut.bn", w, 2 * w, 1, 2, 0),
    ]


def _head_dims(config: ReferenceConfig, part: str) -> tuple[int, int, int]:
    first = config.feature_dim if part == "projector" else config.projection_dim
    return first, config.hidden_dim, config.projection_dim


def canonical_spec(config: ReferenceConfig, dtype: Any = np.float32) -> dict[str, ArraySpec]:
    """Every canonical name of an M2T model with the reference backbone, with its shape and dtype.

    Args:
        config: The model sizes.
        dtype: Floating dtype of the parameters and statistics (counters are int64).

    Returns:
        ``{name: ArraySpec}`` for the student, the teacher (momentum BN: also ``step``/``skipped``)
        and the model's ``step``.
    """
    dt = np.dtype(dtype)
    i64 = np.dtype(np.int64)
    spec: dict[str, ArraySpec] = {"step": ArraySpec((), i64)}
    for network, parts in (
        ("student", ("backbone", "projector", "predictor")),
        ("teacher", ("backbone", "projector")),
    ):
        leaves = BN_LEAVES + (("step", "skipped") if network == "teacher" else ())

        def bn(path: str, channels: int, leaves: tuple[str, ...] = leaves) -> None:
            for leaf in leaves:
                spec[f"{path}.{leaf}"] = (
                    ArraySpec((), i64) if leaf in ("step", "skipped") else ArraySpec((channels,), dt)
                )

        for part in parts:
            prefix = f"{network}.{part}"
            if part == "backbone":
                for layer in backbone_convs(config):
                    kernel = (layer.size, layer.size, layer.in_channels, layer.out_channels)
                    spec[f"{prefix}.{layer.conv}.kernel"] = ArraySpec(kernel, dt)
                    bn(f"{prefix}.{layer.bn}", layer.out_channels)
            else:
                d_in, d_hidden, d_out = _head_dims(config, part)
                spec[f"{prefix}.linear1.kernel"] = ArraySpec((d_in, d_hidden), dt)
                spec[f"{prefix}.linear1.bias"] = ArraySpec((d_hidden,), dt)
                bn(f"{prefix}.bn", d_hidden)
                spec[f"{prefix}.linear2.kernel"] = ArraySpec((d_hidden, d_out), dt)
                spec[f"{prefix}.linear2.bias"] = ArraySpec((d_out,), dt)
    return dict(sorted(spec.items()))


def init_checkpoint(config: ReferenceConfig, seed: int = 0, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Seeded initial canonical arrays of an M2T model with the reference backbone.

    Convolutions are He-normal, dense layers uniform in ``±1/sqrt(fan_in)`` (PyTorch's default),
    BatchNorm ``scale`` ``1 + 0.1·N(0, 1)`` and ``bias`` ``0.1·N(0, 1)`` — not the usual ones and
    zeros, so that a framework that mixed them up would be caught. Statistics start at mean 0,
    variance 1, counters 0. The teacher is an exact copy of the student's backbone and projector.

    Args:
        config: The model sizes.
        seed: Seed of NumPy's random generator.
        dtype: Floating dtype of the arrays.

    Returns:
        ``{name: array}`` matching :func:`canonical_spec`.
    """
    rng = np.random.default_rng(seed)
    spec = canonical_spec(config, dtype)
    arrays: dict[str, np.ndarray] = {}
    for name, (shape, dt) in spec.items():
        if not name.startswith("student.") and name != "step":
            continue
        leaf = name.rsplit(".", 1)[-1]
        if name == "step":
            value = np.zeros((), np.int64)
        elif leaf == "kernel" and len(shape) == 4:
            fan_in = shape[0] * shape[1] * shape[2]
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif leaf in ("kernel", "bias") and ".linear" in name:
            fan_in = spec[name.rsplit(".", 1)[0] + ".kernel"].shape[0]
            value = rng.uniform(-1.0, 1.0, shape) / np.sqrt(fan_in)
        elif leaf == "scale":
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif leaf == "bias":
            value = 0.1 * rng.standard_normal(shape)
        elif leaf == "mean":
            value = np.zeros(shape)
        else:  # var
            value = np.ones(shape)
        arrays[name] = np.asarray(value, dtype=dt)
    for name, (shape, dt) in spec.items():
        if not name.startswith("teacher."):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("step", "skipped"):
            arrays[name] = np.zeros((), np.int64)
        elif leaf in ("mean", "var"):
            arrays[name] = np.full(shape, 0.0 if leaf == "mean" else 1.0, dt)
        else:
            arrays[name] = arrays["student." + name[len("teacher.") :]].copy()
    return dict(sorted(arrays.items()))


def conv2d(x: np.ndarray, kernel: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    """2-D convolution (cross-correlation, as every framework computes it) of NHWC images.

    Args:
        x: ``[N, H, W, C_in]``.
        kernel: ``[kh, kw, C_in, C_out]`` (HWIO).
        stride: Stride on both spatial axes.
        padding: Zero padding on every side.

    Returns:
        ``[N, H_out, W_out, C_out]`` with ``H_out = (H + 2·padding − kh) // stride + 1``.

    Raises:
        ValueError: the channel counts of ``x`` and ``kernel`` differ.
    """
    if x.shape[-1] != kernel.shape[2]:
        raise ValueError(
            f"input of shape {x.shape} has {x.shape[-1]} channels, "
            f"kernel {kernel.shape} expects {kernel.shape[2]}"
        )
    kh, kw = kernel.shape[:2]
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    h_out = (xp.shape[1] - kh) // stride + 1
    w_out = (xp.shape[2] - kw) // stride + 1
    # im2col: one strided window per kernel offset, then a single contraction over (kh, kw, C_in).
    patches = np.stack(
        [
            np.stack(
                [
                    xp[:, i : i + stride * h_out : stride, j : j + stride * w_out : stride, :]
                    for j in range(kw)
                ],
                axis=3,
            )
            for i in range(kh)
        ],
        axis=3,
    )  # [N, H_out, W_out, kh, kw, C_in]
    return np.einsum("nhwijc,ijco->nhwo", patches, kernel)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _backbone(
    arrays: Mapping[str, np.ndarray],
    prefix: str,
    x: np.ndarray,
    config: ReferenceConfig,
    norm: Any,
    ct: np.dtype,
) -> np.ndarray:
    """Run the reference backbone stored under ``prefix``; ``norm(path, h)`` applies a BatchNorm."""

    def conv_bn(layer: ConvLayer, h: np.ndarray) -> np.ndarray:
        kernel = np.asarray(arrays[f"{prefix}.{layer.conv}.kernel"]).astype(ct)
        return norm(f"{prefix}.{layer.bn}", conv2d(h, kernel, layer.stride, layer.padding))

    stem, s1c1, s1c2, s2c1, s2c2, short = backbone_convs(config)
    h = _relu(conv_bn(stem, x))
    h = _relu(conv_bn(s1c2, _relu(conv_bn(s1c1, h))) + h)
    h = _relu(conv_bn(s2c2, _relu(conv_bn(s2c1, h))) + conv_bn(short, h))
    return h.mean(axis=(1, 2))


def _head(
    arrays: Mapping[str, np.ndarray], prefix: str, h: np.ndarray, norm: Any, ct: np.dtype
) -> np.ndarray:
    def dense(name: str, v: np.ndarray) -> np.ndarray:
        return v @ np.asarray(arrays[f"{name}.kernel"]).astype(ct) + np.asarray(
            arrays[f"{name}.bias"]
        ).astype(ct)

    return dense(f"{prefix}.linear2", _relu(norm(f"{prefix}.bn", dense(f"{prefix}.linear1", h))))


def _check_images(x: np.ndarray, config: ReferenceConfig) -> None:
    if x.ndim != 4 or x.shape[-1] != config.in_channels:
        raise ValueError(
            f"the reference model takes NHWC images with {config.in_channels} channels, got shape {x.shape}"
        )


def teacher_forward(
    arrays: Mapping[str, np.ndarray],
    x: np.ndarray,
    config: ReferenceConfig,
    *,
    alpha: float,
    num_views: int = 2,
    correction: str = "biased",
    training: bool = True,
    dtype: Any = np.float64,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The teacher's projections of a batch, every BatchNorm a momentum BN (:func:`momentum_batch_norm`).

    Args:
        arrays: Canonical arrays (only the ``teacher.*`` names are read).
        x: ``[V·B, H, W, C]`` images, ``num_views`` views concatenated along axis 0.
        config: The model sizes.
        alpha: History weight ``α`` of every momentum BN at this step.
        num_views: ``V``.
        correction: Variance estimator of the momentum BNs.
        training: Momentum statistics and commit (True) or stored statistics (False).
        dtype: Precision of the computation (float64: the yardstick).

    Returns:
        ``(z, committed)``: projections ``[V·B, projection_dim]`` and the committed teacher
        statistics ``{canonical name: array}`` (``mean``, ``var``, ``step``, ``skipped`` of every
        momentum BN; unchanged in evaluation mode).

    Raises:
        ValueError: ``x`` is not NHWC with ``config.in_channels`` channels.
    """
    ct = np.dtype(dtype)
    x = np.asarray(x)
    _check_images(x, config)
    committed: dict[str, np.ndarray] = {}

    def norm(path: str, h: np.ndarray) -> np.ndarray:
        stats = MomentumStats(
            np.asarray(arrays[f"{path}.mean"]).astype(ct),
            np.asarray(arrays[f"{path}.var"]).astype(ct),
            np.asarray(arrays[f"{path}.step"], np.int64),
            np.asarray(arrays[f"{path}.skipped"], np.int64),
        )
        y, new = momentum_batch_norm(
            h,
            stats,
            alpha=alpha,
            num_views=num_views,
            axis=-1,
            eps=BN_EPSILON,
            scale=np.asarray(arrays[f"{path}.scale"]).astype(ct),
            offset=np.asarray(arrays[f"{path}.bias"]).astype(ct),
            correction=correction,
            training=training,
        )
        for leaf, value in zip(("mean", "var", "step", "skipped"), new, strict=True):
            committed[f"{path}.{leaf}"] = np.asarray(value)
        return y

    h = _backbone(arrays, "teacher.backbone", x.astype(ct), config, norm, ct)
    return _head(arrays, "teacher.projector", h, norm, ct), committed


def student_forward(
    arrays: Mapping[str, np.ndarray], x: np.ndarray, config: ReferenceConfig, *, dtype: Any = np.float64
) -> np.ndarray:
    """The student's predictions of one view in training mode (BatchNorm with the batch's own moments).

    Args:
        arrays: Canonical arrays (only the ``student.*`` names are read).
        x: ``[B, H, W, C]`` images of one view.
        config: The model sizes.
        dtype: Precision of the computation.

    Returns:
        Predictions ``[B, projection_dim]``.

    Raises:
        ValueError: ``x`` is not NHWC with ``config.in_channels`` channels.
    """
    ct = np.dtype(dtype)
    x = np.asarray(x)
    _check_images(x, config)

    def norm(path: str, h: np.ndarray) -> np.ndarray:
        # Training-mode BatchNorm is momentum BN with no history (α = 0) over a single view.
        fresh = MomentumStats(
            np.zeros(h.shape[-1], ct), np.ones(h.shape[-1], ct), np.asarray(0), np.asarray(0)
        )
        scale = np.asarray(arrays[f"{path}.scale"]).astype(ct)
        offset = np.asarray(arrays[f"{path}.bias"]).astype(ct)
        y, _ = momentum_batch_norm(
            h, fresh, alpha=0.0, num_views=1, eps=BN_EPSILON, scale=scale, offset=offset
        )
        return y

    h = _backbone(arrays, "student.backbone", x.astype(ct), config, norm, ct)
    return _head(arrays, "student.predictor", _head(arrays, "student.projector", h, norm, ct), norm, ct)


def step_loss(
    arrays: Mapping[str, np.ndarray],
    view1: np.ndarray,
    view2: np.ndarray,
    config: ReferenceConfig,
    *,
    alpha: float,
    correction: str = "biased",
    dtype: Any = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """The loss of one training step taken from ``arrays`` (before any parameter moves), and the targets.

    The teacher EMA is skipped: it changes nothing when the teacher equals the student, as in an
    initial checkpoint (DESIGN §2, step 2).

    Args:
        arrays: Canonical arrays of the model before the step.
        view1: First view ``[B, H, W, C]``.
        view2: Second view, same shape.
        config: The model sizes.
        alpha: ``α`` of the teacher's momentum BNs at this step.
        correction: Variance estimator of the momentum BNs.
        dtype: Precision of the computation.

    Returns:
        ``(loss, z)``: the symmetric loss (0-d) and the teacher projections of both views
        ``[2B, projection_dim]``.
    """
    z, _ = teacher_forward(
        arrays, np.concatenate([view1, view2]), config, alpha=alpha, correction=correction, dtype=dtype
    )
    b = np.shape(view1)[0]
    p1 = student_forward(arrays, view1, config, dtype=dtype)
    p2 = student_forward(arrays, view2, config, dtype=dtype)
    return np.asarray(symmetric_loss(p1, p2, z[:b], z[b:])), z
