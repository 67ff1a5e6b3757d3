r"""The two asymmetric view augmentations of the original release (the BYOL recipe), in NumPy.

Each view is, in this order (``p`` = probability per image)::

    random resized crop   area scale U(0.08, 1), aspect ratio log-U(3/4, 4/3), bilinear back to H×W
    horizontal flip       p = 0.5
    colour jitter         p = 0.8: brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, random order
    grayscale             p = 0.2
    Gaussian blur         view 1: p = 1.0, view 2: p = 0.1; σ ~ U(0.1, 2.0) px at 224 px, kernel ≈ side/10
    solarize              view 1: p = 0.0, view 2: p = 0.2 (x ≥ 0.5 → 1 − x)
    normalise             (x − mean) / std per channel

The views differ only in the blur and solarize probabilities (:class:`AugmentConfig` holds them as
``(view 1, view 2)`` pairs). Everything runs vectorised over the batch: the random parameters of all
images are drawn at once (:func:`sample_view_params`) and applied with array operations
(:func:`apply_view`); the only Python loops run over the 4 jitter operations' positions and the
blur kernel's taps. A ``numpy.random.Generator`` drives every draw, so a seed fixes the views.

Semantics follow torchvision's tensor transforms, on float images in [0, 1]:

* crop boxes are continuous (sub-pixel) rather than rounded to whole pixels — on 8×8 images
  rounding would leave only a handful of distinct boxes; resampling uses pixel centres
  (``align_corners=False``), so the full box is exactly the identity;
* brightness ``clip(b·x)``; contrast ``clip(c·x + (1−c)·mean(gray(x)))``; saturation
  ``clip(s·x + (1−s)·gray(x))``; hue: rotate the HSV hue by ``h``; factors ``b, c, s ~ U(1−k, 1+k)``
  (floored at 0) and ``h ~ U(−k, k)``; each image applies the four in its own random order;
* ``gray = 0.299·R + 0.587·G + 0.114·B`` (ITU-R BT.601), replicated to 3 channels;
* the blur is separable with reflect padding, so a constant image stays constant.

Colour operations — saturation, hue, grayscale — act only on 3-channel (RGB) images; on other
images they are the identity, as in torchvision. Brightness and contrast act on any image.

Scaling to small images (:meth:`AugmentConfig.for_image_size`): the release's numbers are for
224-pixel ImageNet crops. For a side ``s`` the blur σ range is multiplied by ``s / 224`` and the
kernel is the odd size nearest ``s / 10`` (at least 3), so the blur removes the same *fraction* of
detail; the smallest crop scale is raised to ``(4 / s)²`` where that exceeds 0.08, so a crop keeps at
least about 4×4 source pixels (8×8 digits: scale (0.25, 1)). :meth:`AugmentConfig.for_dataset` also
takes the normalisation from the training images and turns flips off for ``digits`` (a mirrored
digit is often another glyph, or none).

References:
    Grill et al. *Bootstrap Your Own Latent.* NeurIPS 2020, appendix B (the augmentation table).
    Li, Liu, Sun. *Momentum² Teacher.* arXiv:2101.07525, 2021 (uses the BYOL augmentations).
    Szegedy et al. *Going Deeper with Convolutions.* CVPR 2015 (the random-resized-crop sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentConfig",
    "ViewParams",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_view",
    "augment_view",
    "eval_view",
    "gaussian_blur",
    "horizontal_flip",
    "normalize_images",
    "resized_crop",
    "sample_crop_boxes",
    "sample_view_params",
    "solarize",
    "to_grayscale",
    "two_views",
]

#: Per-channel mean and std of ImageNet (RGB), the release's normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as torchvision and PIL
_REFERENCE_SIDE = 224  # the image side the release's blur numbers are written for
_CROP_ATTEMPTS = 10  # tries before the fallback box, as torchvision's RandomResizedCrop


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a pair of numbers, got {value!r}") from err
    return lo, hi


def _check_prob(value: float, name: str) -> None:
    if not 0.0 <= float(value) <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the two views; the defaults are the release's (BYOL) values for 224-px images.

    Fields given as pairs ``(view 1, view 2)`` differ between the views; every other field is shared.
    Build variants with ``dataclasses.replace(config, flip_prob=0.0)``.

    Attributes:
        crop_scale: Range of the crop's area as a fraction of the image, ``0 < lo <= hi <= 1``.
        crop_ratio: Range of the crop's width / height (sampled log-uniformly), ``0 < lo <= hi``.
        flip_prob: Probability of a horizontal flip.
        jitter_prob: Probability of the colour jitter.
        brightness: Brightness strength ``k``: factor ``U(max(0, 1−k), 1+k)``; 0 disables it.
        contrast: Contrast strength, likewise.
        saturation: Saturation strength, likewise (RGB only).
        hue: Hue strength in [0, 0.5]: shift ``U(−k, k)`` of a full turn (RGB only).
        grayscale_prob: Probability of converting to grayscale (RGB only).
        blur_prob: Probability of the Gaussian blur, per view.
        blur_sigma: Range of the blur's σ in pixels, ``0 < lo <= hi``.
        blur_kernel_size: Odd number of kernel taps per axis.
        solarize_prob: Probability of solarising, per view.
        solarize_threshold: Values ``>= threshold`` become ``1 − x``.
        mean: Per-channel mean subtracted at the end, or ``None`` for no normalisation.
        std: Per-channel std divided at the end (``None`` together with ``mean``).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: tuple[float, float] = (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_size: int = 23
    solarize_prob: tuple[float, float] = (0.0, 0.2)
    solarize_threshold: float = 0.5
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD

    def __post_init__(self) -> None:
        """Check every field when the config is built, naming the offending value."""
        set_ = object.__setattr__  # frozen: normalise the pairs to tuples of floats once
        for name in ("crop_scale", "crop_ratio", "blur_prob", "blur_sigma", "solarize_prob"):
            set_(self, name, _pair(getattr(self, name), name))
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi < math.inf:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
        lo, hi = self.blur_sigma
        if not 0.0 < lo <= hi < math.inf:
            raise ValueError(f"blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")
        for name in ("flip_prob", "jitter_prob", "grayscale_prob"):
            _check_prob(getattr(self, name), name)
        for name in ("blur_prob", "solarize_prob"):
            for v, p in enumerate(getattr(self, name)):
                _check_prob(p, f"{name}[{v}]")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= float(getattr(self, name)) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= float(self.hue) <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue!r}")
        k = self.blur_kernel_size
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or k % 2 == 0:
            raise ValueError(f"blur_kernel_size must be an odd positive int, got {k!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError(
                f"mean and std must both be given or both be None, got {self.mean} and {self.std}"
            )
        if self.mean is not None:
            mean = tuple(float(m) for m in np.ravel(self.mean))
            std = tuple(float(s) for s in np.ravel(self.std))
            if len(mean) != len(std) or not all(s > 0 and math.isfinite(s) for s in std):
                raise ValueError(f"mean and std must have equal lengths and std > 0, got {mean} and {std}")
            set_(self, "mean", mean)
            set_(self, "std", std)

    @classmethod
    def for_image_size(
        cls, height: int, width: int | None = None, *, channels: int = 3, min_crop_side: float = 4.0
    ) -> AugmentConfig:
        """The release's recipe scaled to ``height × width`` images with ``channels`` channels.

        With ``s = min(height, width)``: ``blur_sigma = (0.1, 2.0) · s / 224``,
        ``blur_kernel_size`` = the odd size nearest ``s / 10`` (at least 3), and
        ``crop_scale = (max(0.08, (min_crop_side / s)²), 1)``. Normalisation: ImageNet statistics for
        3 channels, otherwise mean 0.5 and std 0.5 per channel (values in [−1, 1]).

        Args:
            height: Image height in pixels.
            width: Image width (default: ``height``).
            channels: Image channels.
            min_crop_side: Side in source pixels below which crops are not drawn (on average).

        Returns:
            An :class:`AugmentConfig`.

        Raises:
            ValueError: a size or the channel count is below 1.
        """
        width = height if width is None else width
        side = min(int(height), int(width))
        if side < 1 or channels < 1:
            raise ValueError(f"image size must be positive, got {height}x{width} with {channels} channels")
        f = side / _REFERENCE_SIDE
        kernel = max(3, 2 * round(side / 20) + 1)
        scale_lo = min(1.0, max(0.08, (float(min_crop_side) / side) ** 2))
        if channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean, std = (0.5,) * channels, (0.5,) * channels
        return cls(
            crop_scale=(scale_lo, 1.0),
            blur_sigma=(0.1 * f, 2.0 * f),
            blur_kernel_size=kernel,
            mean=mean,
            std=std,
        )

    @classmethod
    def for_dataset(cls, dataset: Any) -> AugmentConfig:
        """The recipe for a :class:`~m2t_core.datasets.Dataset`: sized to it, normalised with its stats.

        :meth:`for_image_size` for the data set's images, with ``mean``/``std`` from
        ``dataset.channel_stats()`` (its training images) and ``flip_prob=0`` for ``digits``.

        Args:
            dataset: A :class:`~m2t_core.datasets.Dataset` (anything with ``image_shape``, ``name``
                and ``channel_stats()``).

        Returns:
            An :class:`AugmentConfig`.
        """
        h, w, c = dataset.image_shape
        mean, std = dataset.channel_stats()
        config = cls.for_image_size(h, w, channels=c)
        return replace(
            config,
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            flip_prob=0.0 if dataset.name == "digits" else config.flip_prob,
        )


class ViewParams(NamedTuple):
    """Per-image random parameters of one view; every field has the batch size as its first axis.

    Attributes:
        crop: ``[N, 4]`` float64 boxes ``(top, left, height, width)`` in source pixels.
        flip: ``[N]`` bool.
        jitter: ``[N]`` bool, whether the colour jitter applies.
        jitter_factors: ``[N, 4]`` float64: brightness, contrast, saturation factors and hue shift.
        jitter_order: ``[N, 4]`` int64, a permutation of ``0..3`` (the order in ``jitter_factors``).
        grayscale: ``[N]`` bool.
        blur: ``[N]`` bool.
        blur_sigma: ``[N]`` float64 σ in pixels.
        solarize: ``[N]`` bool.
    """

    crop: np.ndarray
    flip: np.ndarray
    jitter: np.ndarray
    jitter_factors: np.ndarray
    jitter_order: np.ndarray
    grayscale: np.ndarray
    blur: np.ndarray
    blur_sigma: np.ndarray
    solarize: np.ndarray

    def select(self, index: Any) -> ViewParams:
        """The parameters of the images ``index`` selects (an int keeps a batch axis of 1)."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1)
        return ViewParams(*(np.asarray(a)[index] for a in self))


# --------------------------------------------------------------------------------------------------
# input checks


def _check_images(images: Any, name: str = "images") -> np.ndarray:
    """``[N, H, W, C]`` float32 in [0, 1]; uint8 input is divided by 255."""
    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"{name} must be [N, H, W, C] (channels last), got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must be float in [0, 1] or uint8, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if x.size and not (x.min() >= 0.0 and x.max() <= 1.0):  # NaN fails both comparisons
        bad = x.size - np.count_nonzero(np.isfinite(x))
        if bad:
            raise ValueError(f"{name} must lie in [0, 1], got {bad} non-finite values")
        raise ValueError(f"{name} must lie in [0, 1], got values in [{x.min()}, {x.max()}]")
    return x


def _per_image(value: Any, n: int, name: str) -> np.ndarray:
    v = np.asarray(value, np.float64)
    if v.ndim == 0:
        return np.full(n, float(v))
    if v.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},) for {n} images, got {v.shape}")
    return v


def _check_rgb(x: np.ndarray, op: str) -> None:
    if x.shape[-1] != 3:
        raise ValueError(f"{op} needs RGB images (3 channels), got shape {x.shape}")


# --------------------------------------------------------------------------------------------------
# operations (each vectorised over the batch; per-image parameters are arrays of length N)


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> np.ndarray:
    """Random-resized-crop boxes, as torchvision samples them but continuous (sub-pixel).

    Up to 10 tries per image draw an area ``U(scale)·H·W`` and an aspect ratio ``exp(U(log ratio))``;
    the first box that fits is placed uniformly inside the image. Images where none fits get the
    largest centred box whose ratio is the image's clamped to ``ratio``.

    Args:
        n: Number of boxes.
        height: Image height.
        width: Image width.
        rng: Source of randomness (always consumes the same number of draws for given ``n``).
        scale: Range of the area fraction.
        ratio: Range of width / height.

    Returns:
        ``[n, 4]`` float64 boxes ``(top, left, box_height, box_width)``.
    """
    area = float(height * width)
    s = rng.uniform(scale[0], scale[1], (n, _CROP_ATTEMPTS)) * area
    r = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, _CROP_ATTEMPTS)))
    pos = rng.random((n, 2))
    w, h = np.sqrt(s * r), np.sqrt(s / r)
    # A box of the full side computed through sqrt/exp can exceed it by an ulp: accept and clamp it.
    fits = (w <= width * (1 + 1e-9)) & (h <= height * (1 + 1e-9))
    w, h = np.minimum(w, width), np.minimum(h, height)
    first = np.argmax(fits, axis=1)  # first fitting try (0 when none fits; masked below)
    rows = np.arange(n)
    bw, bh = w[rows, first], h[rows, first]
    # Fallback: the whole image, narrowed to the nearest allowed aspect ratio, centred.
    img_ratio = width / height
    if img_ratio < ratio[0]:
        fw, fh = float(width), width / ratio[0]
    elif img_ratio > ratio[1]:
        fw, fh = height * ratio[1], float(height)
    else:
        fw, fh = float(width), float(height)
    ok = fits.any(axis=1)
    bw, bh = np.where(ok, bw, fw), np.where(ok, bh, fh)
    top = np.where(ok, pos[:, 0] * (height - bh), (height - bh) / 2.0)
    left = np.where(ok, pos[:, 1] * (width - bw), (width - bw) / 2.0)
    return np.stack([top, left, bh, bw], axis=1)


def _sample_grid(start: np.ndarray, length: np.ndarray, out: int, size: int):
    """Bilinear sample positions along one axis: left indices, right indices, right weights."""
    # Pixel centres: output pixel i samples the box at start + (i + 0.5)·length/out, in source
    # coordinates whose pixel j has its centre at j. The full box maps every i exactly onto i, with
    # weight 0 on the right neighbour, so it is the identity bit for bit.
    c = start[:, None] + (np.arange(out) + 0.5)[None, :] * (length / out)[:, None] - 0.5
    c = np.clip(c, 0.0, size - 1.0)
    i0 = np.floor(c).astype(np.int64)
    frac = (c - i0).astype(np.float32)
    i1 = np.minimum(i0 + 1, size - 1)
    return i0, i1, frac


def resized_crop(
    images: np.ndarray,
    boxes: np.ndarray,
    *,
    size: tuple[int, int] | None = None,
    flip: np.ndarray | None = None,
) -> np.ndarray:
    """Crop each image to its box and resize bilinearly to ``size`` (default: the image size).

    Args:
        images: ``[N, H, W, C]`` float images.
        boxes: ``[N, 4]`` boxes ``(top, left, height, width)`` in source pixels (may be fractional).
        size: Output ``(height, width)``.
        flip: Optional ``[N]`` bool: mirror those outputs horizontally (done by reversing the sample
            positions, so it costs nothing extra).

    Returns:
        ``[N, out_h, out_w, C]`` float32.

    Raises:
        ValueError: ``boxes`` is not ``[N, 4]``.
    """
    x = np.asarray(images, np.float32)
    n, h, w, c = x.shape
    boxes = np.asarray(boxes, np.float64)
    if boxes.shape != (n, 4):
        raise ValueError(f"boxes must have shape ({n}, 4) for {n} images, got {boxes.shape}")
    oh, ow = (h, w) if size is None else (int(size[0]), int(size[1]))
    y0, y1, fy = _sample_grid(boxes[:, 0], boxes[:, 2], oh, h)
    x0, x1, fx = _sample_grid(boxes[:, 1], boxes[:, 3], ow, w)
    if flip is not None:
        flip = np.asarray(flip, bool)
        x0[flip], x1[flip], fx[flip] = x0[flip, ::-1], x1[flip, ::-1], fx[flip, ::-1]
    # Separable: gather whole rows (contiguous copies, much faster than per-pixel fancy indexing),
    # blend, then the same along the columns of the transposed result.
    first = np.arange(n)[:, None]
    rows = x.reshape(n * h, w * c)
    top = np.take(rows, first * h + y0, axis=0).reshape(n, oh, w, c)
    bottom = np.take(rows, first * h + y1, axis=0).reshape(n, oh, w, c)
    t = (top + (bottom - top) * fy[:, :, None, None]).transpose(0, 2, 1, 3).reshape(n * w, oh * c)
    left = np.take(t, first * w + x0, axis=0).reshape(n, ow, oh, c)
    right = np.take(t, first * w + x1, axis=0).reshape(n, ow, oh, c)
    out = left + (right - left) * fx[:, :, None, None]
    return np.ascontiguousarray(out.transpose(0, 2, 1, 3))


def horizontal_flip(images: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Mirror images left–right: all of them, or those where ``mask`` is true.

    Args:
        images: ``[N, H, W, C]``.
        mask: Optional ``[N]`` bool.

    Returns:
        Array of the input's shape and dtype.
    """
    x = np.asarray(images)
    flipped = x[:, :, ::-1]
    if mask is None:
        return flipped.copy()
    mask = np.asarray(mask, bool)
    if mask.shape != (x.shape[0],):
        raise ValueError(f"mask must have shape ({x.shape[0]},), got {mask.shape}")
    return np.where(mask[:, None, None, None], flipped, x)


def _gray(x: np.ndarray) -> np.ndarray:
    """Luma ``[N, H, W, 1]`` of RGB images; single-channel images are their own luma."""
    if x.shape[-1] == 3:
        return np.tensordot(x, _LUMA, axes=([-1], [0]))[..., None].astype(np.float32)
    return x


def to_grayscale(images: np.ndarray) -> np.ndarray:
    """RGB → luma ``0.299·R + 0.587·G + 0.114·B``, replicated to 3 channels.

    Args:
        images: ``[N, H, W, 3]`` float images.

    Returns:
        ``[N, H, W, 3]`` float32 with equal channels.

    Raises:
        ValueError: the images do not have 3 channels.
    """
    x = np.asarray(images, np.float32)
    _check_rgb(x, "to_grayscale")
    return np.repeat(_gray(x), 3, axis=-1)


def _blend(a: np.ndarray, b: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``clip(f·a + (1−f)·b, 0, 1)`` with one factor per image (torchvision's ``_blend``)."""
    f = factor.astype(np.float32)[:, None, None, None]
    return np.clip(f * a + (1.0 - f) * b, 0.0, 1.0)


def adjust_brightness(images: np.ndarray, factor: Any) -> np.ndarray:
    """``clip(factor · x, 0, 1)``; factor 1 is the identity.

    Args:
        images: ``[N, H, W, C]`` float images in [0, 1].
        factor: Scalar or ``[N]`` non-negative factors.

    Returns:
        float32 images.
    """
    x = np.asarray(images, np.float32)
    return _blend(x, np.zeros((), np.float32), _per_image(factor, x.shape[0], "factor"))


def adjust_contrast(images: np.ndarray, factor: Any) -> np.ndarray:
    """Blend each image with the mean of its luma: ``clip(c·x + (1−c)·mean(gray(x)), 0, 1)``.

    Args:
        images: ``[N, H, W, C]`` float images (``C`` = 1 uses the image itself as its luma).
        factor: Scalar or ``[N]``; 1 is the identity, 0 a flat grey image.

    Returns:
        float32 images.
    """
    x = np.asarray(images, np.float32)
    mean = _gray(x).mean(axis=(1, 2, 3), keepdims=True)
    return _blend(x, mean, _per_image(factor, x.shape[0], "factor"))


def adjust_saturation(images: np.ndarray, factor: Any) -> np.ndarray:
    """Blend each RGB image with its luma: ``clip(s·x + (1−s)·gray(x), 0, 1)``.

    Args:
        images: ``[N, H, W, 3]`` float images.
        factor: Scalar or ``[N]``; 1 is the identity, 0 grayscale.

    Returns:
        float32 images.

    Raises:
        ValueError: the images do not have 3 channels.
    """
    x = np.asarray(images, np.float32)
    _check_rgb(x, "adjust_saturation")
    return _blend(x, _gray(x), _per_image(factor, x.shape[0], "factor"))


def _rgb_to_hsv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, g, b = np.moveaxis(x, -1, 0).copy()  # contiguous planes: strided channel views are slow
    v = np.maximum(np.maximum(r, g), b)
    chroma = v - np.minimum(np.minimum(r, g), b)
    coloured = chroma > 0
    inv = 1.0 / np.where(coloured, chroma, 1.0)
    s = chroma / np.where(v > 0, v, 1.0)
    # The channel holding the maximum picks the hue's sector; ties prefer red, then green (colorsys).
    h = np.where(v == r, (g - b) * inv, np.where(v == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    h *= 1.0 / 6.0
    h -= np.floor(h)  # wrap the red sector's negative values into [0, 1)
    h[~coloured] = 0.0
    return h, s, v


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Closed form: channel n (R: 5, G: 3, B: 1) is v − v·s·clip(min(k, 4 − k), 0, 1) with
    # k = (n + 6h) mod 6 — no branch per sector, so it vectorises.
    h6 = h * 6.0
    vs = v * s
    out = np.empty((*h.shape, 3), np.float32)
    for i, n in enumerate((5.0, 3.0, 1.0)):
        k = h6 + n
        k[k >= 6.0] -= 6.0  # h6 + n < 12, so one subtraction is the modulo
        out[..., i] = v - vs * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return out


def adjust_hue(images: np.ndarray, shift: Any) -> np.ndarray:
    """Rotate the hue of RGB images by ``shift`` turns (HSV space); shift 0 is the identity.

    Args:
        images: ``[N, H, W, 3]`` float images in [0, 1].
        shift: Scalar or ``[N]`` shifts in [−0.5, 0.5].

    Returns:
        float32 images.

    Raises:
        ValueError: the images do not have 3 channels.
    """
    x = np.asarray(images, np.float32)
    _check_rgb(x, "adjust_hue")
    d = _per_image(shift, x.shape[0], "shift").astype(np.float32)[:, None, None]
    h, s, v = _rgb_to_hsv(x)
    h += d
    h -= np.floor(h)  # wrap to [0, 1): shifts lie in [-0.5, 0.5]
    return np.clip(_hsv_to_rgb(h, s, v), 0.0, 1.0)


def gaussian_blur(images: np.ndarray, sigma: Any, *, kernel_size: int) -> np.ndarray:
    """Separable Gaussian blur with one σ per image and reflect padding.

    The kernel has ``kernel_size`` taps per axis (fewer along an axis shorter than its radius: reflect
    padding needs the radius below the side) and is normalised to sum 1, so a constant image is
    unchanged.

    Args:
        images: ``[N, H, W, C]`` float images.
        sigma: Scalar or ``[N]`` positive σ in pixels.
        kernel_size: Odd number of taps.

    Returns:
        float32 images.
    """
    x = np.asarray(images, np.float32)
    n, h, w, _ = x.shape
    sig = _per_image(sigma, n, "sigma")
    if not np.all(sig > 0):
        raise ValueError(f"sigma must be > 0, got min {sig.min() if sig.size else None}")
    for axis, side in ((1, h), (2, w)):
        radius = min(int(kernel_size) // 2, side - 1)
        if radius == 0:
            continue
        taps = np.arange(-radius, radius + 1, dtype=np.float64)
        weights = np.exp(-0.5 * (taps[None, :] / sig[:, None]) ** 2)
        weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="reflect")
        acc = np.zeros_like(x)
        for t in range(2 * radius + 1):  # a loop over kernel taps, each a whole-batch operation
            window = padded[:, t : t + h] if axis == 1 else padded[:, :, t : t + w]
            acc += weights[:, t, None, None, None] * window
        x = acc
    return x


def solarize(images: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Invert the values at or above ``threshold``: ``x >= t → 1 − x`` (others unchanged).

    Args:
        images: Float images in [0, 1].
        threshold: The threshold ``t``; above 1 nothing changes.

    Returns:
        float32 images.
    """
    x = np.asarray(images, np.float32)
    return np.where(x >= threshold, 1.0 - x, x).astype(np.float32)


def normalize_images(images: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """Per-channel ``(x − mean) / std`` on channels-last images; ``mean=None`` returns the input.

    Args:
        images: ``[..., C]`` images.
        mean: ``C`` means (or ``None``).
        std: ``C`` standard deviations.

    Returns:
        float32 array.

    Raises:
        ValueError: ``mean``/``std`` do not have ``C`` entries.
    """
    x = np.asarray(images, np.float32)
    if mean is None:
        return x
    m, s = np.asarray(mean, np.float32).ravel(), np.asarray(std, np.float32).ravel()
    if m.shape != (x.shape[-1],) or s.shape != (x.shape[-1],):
        raise ValueError(
            f"mean {tuple(m.tolist())} and std {tuple(s.tolist())} must have one entry per channel "
            f"of images of shape {x.shape}; set AugmentConfig(mean=..., std=...) or use "
            "AugmentConfig.for_dataset"
        )
    return (x - m) / s


# --------------------------------------------------------------------------------------------------
# the views


def _check_view(view: int) -> int:
    if isinstance(view, bool) or view not in (0, 1):
        raise ValueError(f"view must be 0 (view 1) or 1 (view 2), got {view!r}")
    return int(view)


def _factor_range(k: float) -> tuple[float, float]:
    return max(0.0, 1.0 - k), 1.0 + k


def sample_view_params(
    n: int, height: int, width: int, rng: np.random.Generator, config: AugmentConfig, *, view: int
) -> ViewParams:
    """Draw every random parameter of one view for ``n`` images, all at once.

    The draws happen in a fixed order and number for a given ``n`` (whatever the probabilities), so a
    seed fixes the views.

    Args:
        n: Batch size.
        height: Image height.
        width: Image width.
        rng: Source of randomness.
        config: The recipe.
        view: 0 for view 1 (always blurred), 1 for view 2 (rarely blurred, sometimes solarised).

    Returns:
        A :class:`ViewParams`.
    """
    view = _check_view(view)
    crop = sample_crop_boxes(n, height, width, rng, scale=config.crop_scale, ratio=config.crop_ratio)
    flip = rng.random(n) < config.flip_prob
    jitter = rng.random(n) < config.jitter_prob
    factors = np.stack(
        [
            rng.uniform(*_factor_range(config.brightness), n),
            rng.uniform(*_factor_range(config.contrast), n),
            rng.uniform(*_factor_range(config.saturation), n),
            rng.uniform(-config.hue, config.hue, n),
        ],
        axis=1,
    )
    order = np.argsort(rng.random((n, 4)), axis=1).astype(np.int64)
    grayscale = rng.random(n) < config.grayscale_prob
    blur = rng.random(n) < config.blur_prob[view]
    sigma = rng.uniform(config.blur_sigma[0], config.blur_sigma[1], n)
    sol = rng.random(n) < config.solarize_prob[view]
    return ViewParams(crop, flip, jitter, factors, order, grayscale, blur, sigma, sol)


def _jitter(x: np.ndarray, factors: np.ndarray, order: np.ndarray, config: AugmentConfig) -> np.ndarray:
    rgb = x.shape[-1] == 3
    # An op of zero strength, or a colour op on a non-RGB image, is skipped: exact identity, no cost.
    active = (
        config.brightness > 0,
        config.contrast > 0,
        config.saturation > 0 and rgb,
        config.hue > 0 and rgb,
    )
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    for position in range(4):  # each image applies its own permutation of the four ops
        for op in range(4):
            if not active[op]:
                continue
            sel = np.flatnonzero(order[:, position] == op)
            if sel.size:
                x[sel] = ops[op](x[sel], factors[sel, op])
    return x


def apply_view(images: np.ndarray, params: ViewParams, config: AugmentConfig) -> np.ndarray:
    """Apply drawn parameters: crop+flip, jitter, grayscale, blur, solarize, normalise.

    Args:
        images: ``[N, H, W, C]`` float in [0, 1] (or uint8).
        params: From :func:`sample_view_params` for ``N`` images of this size.
        config: The recipe (strengths, kernel size, threshold, normalisation).

    Returns:
        ``[N, H, W, C]`` float32, normalised with ``config.mean``/``config.std``.

    Raises:
        ValueError: images out of range or of the wrong rank, or ``params`` for another batch size.
    """
    x = _check_images(images)
    n = x.shape[0]
    if params.crop.shape != (n, 4):
        raise ValueError(f"params are for {params.crop.shape[0]} images but images has {n} (shape {x.shape})")
    x = resized_crop(x, params.crop, flip=params.flip)
    idx = np.flatnonzero(params.jitter)
    if idx.size:
        x[idx] = _jitter(x[idx], params.jitter_factors[idx], params.jitter_order[idx], config)
    if x.shape[-1] == 3:
        idx = np.flatnonzero(params.grayscale)
        if idx.size:
            x[idx] = to_grayscale(x[idx])
    idx = np.flatnonzero(params.blur)
    if idx.size:
        x[idx] = gaussian_blur(x[idx], params.blur_sigma[idx], kernel_size=config.blur_kernel_size)
    idx = np.flatnonzero(params.solarize)
    if idx.size:
        x[idx] = solarize(x[idx], config.solarize_threshold)
    return normalize_images(x, config.mean, config.std)


def augment_view(
    images: np.ndarray, rng: np.random.Generator, config: AugmentConfig, *, view: int
) -> np.ndarray:
    """One augmented view of a batch: :func:`sample_view_params` then :func:`apply_view`.

    Args:
        images: ``[N, H, W, C]`` float in [0, 1] (or uint8).
        rng: Source of randomness.
        config: The recipe.
        view: 0 or 1.

    Returns:
        ``[N, H, W, C]`` float32.
    """
    x = _check_images(images)
    n, h, w, _ = x.shape
    return apply_view(x, sample_view_params(n, h, w, rng, config, view=view), config)


def two_views(
    images: np.ndarray, rng: np.random.Generator, config: AugmentConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The two asymmetric views of a batch (view 1 always blurred; view 2 sometimes solarised).

    Args:
        images: ``[N, H, W, C]`` float in [0, 1] (or uint8), channels last.
        rng: A ``numpy.random.Generator`` (e.g. :attr:`m2t_core.datasets.Batch.rng`); view 1's
            parameters are drawn first, then view 2's.
        config: The recipe; default :meth:`AugmentConfig.for_image_size` for these images.

    Returns:
        ``(v1, v2)``, each ``[N, H, W, C]`` float32, normalised.

    Raises:
        ValueError: images not ``[N, H, W, C]`` in [0, 1], or a normalisation of another channel count.
        TypeError: ``rng`` is not a ``numpy.random.Generator``.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    x = _check_images(images)
    n, h, w, c = x.shape
    if config is None:
        config = AugmentConfig.for_image_size(h, w, channels=c)
    p1 = sample_view_params(n, h, w, rng, config, view=0)
    p2 = sample_view_params(n, h, w, rng, config, view=1)
    return apply_view(x, p1, config), apply_view(x, p2, config)


def eval_view(images: np.ndarray, config: AugmentConfig) -> np.ndarray:
    """The un-augmented input for evaluation: the views' normalisation only.

    Feed this (not the raw images) to the teacher when extracting features for kNN or the linear
    probe, so evaluation sees the same input scale as training.

    Args:
        images: ``[N, H, W, C]`` float in [0, 1] (or uint8).
        config: The recipe whose ``mean``/``std`` to use.

    Returns:
        float32 images.
    """
    return normalize_images(_check_images(images), config.mean, config.std)
