"""The view augmentations: each operation's semantics, the recipe, and vectorised == per-image reference."""

import colorsys
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2t_core import augment as aug
from m2t_core.augment import AugmentConfig, ViewParams
from m2t_core.testing import assert_close

CHANNELS = [1, 3]
VIEWS = [0, 1]
LUMA = (0.299, 0.587, 0.114)


def images_of(seed, n, h, w, c, dtype=np.float32):
    return np.random.default_rng(seed).random((n, h, w, c)).astype(dtype)


shapes = st.tuples(st.integers(1, 4), st.integers(2, 9), st.integers(2, 9))
seeds = st.integers(0, 2**32 - 1)


# --------------------------------------------------------------------------------------------------
# an independent per-image reference, written with scalar loops and colorsys


def ref_crop(img, box, flip):
    h, w, _ = img.shape
    top, left, bh, bw = (float(v) for v in box)
    out = np.zeros_like(img, dtype=np.float64)
    for i in range(h):
        sy = min(max(top + (i + 0.5) * bh / h - 0.5, 0.0), h - 1.0)
        for j in range(w):
            jj = w - 1 - j if flip else j
            sx = min(max(left + (jj + 0.5) * bw / w - 0.5, 0.0), w - 1.0)
            y0, x0 = math.floor(sy), math.floor(sx)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = sy - y0, sx - x0
            out[i, j] = (
                img[y0, x0] * (1 - fy) * (1 - fx)
                + img[y0, x1] * (1 - fy) * fx
                + img[y1, x0] * fy * (1 - fx)
                + img[y1, x1] * fy * fx
            )
    return out


def ref_luma(img):
    if img.shape[-1] == 1:
        return img[..., 0]
    return LUMA[0] * img[..., 0] + LUMA[1] * img[..., 1] + LUMA[2] * img[..., 2]


def ref_hue(img, shift):
    out = np.empty_like(img)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            hh, ss, vv = colorsys.rgb_to_hsv(*img[i, j])
            out[i, j] = colorsys.hsv_to_rgb((hh + shift) % 1.0, ss, vv)
    return out


def ref_jitter(img, factors, order, config):
    rgb = img.shape[-1] == 3
    for op in order:
        f = float(factors[op])
        if op == 0 and config.brightness > 0:
            img = np.clip(img * f, 0, 1)
        elif op == 1 and config.contrast > 0:
            img = np.clip(f * img + (1 - f) * ref_luma(img).mean(), 0, 1)
        elif op == 2 and config.saturation > 0 and rgb:
            img = np.clip(f * img + (1 - f) * ref_luma(img)[..., None], 0, 1)
        elif op == 3 and config.hue > 0 and rgb:
            img = np.clip(ref_hue(img, f), 0, 1)
    return img


def ref_blur(img, sigma, kernel_size):
    h, w, _ = img.shape
    ry, rx = min(kernel_size // 2, h - 1), min(kernel_size // 2, w - 1)

    def kernel(r):
        k = np.array([math.exp(-0.5 * (t / sigma) ** 2) for t in range(-r, r + 1)])
        return k / k.sum()

    ky, kx = kernel(ry), kernel(rx)

    def reflect(i, n):  # mirror without repeating the edge pixel
        while i < 0 or i >= n:
            i = -i if i < 0 else 2 * (n - 1) - i
        return i

    out = np.zeros_like(img)
    for i in range(h):
        for j in range(w):
            for a in range(-ry, ry + 1):
                for b in range(-rx, rx + 1):
                    out[i, j] += ky[a + ry] * kx[b + rx] * img[reflect(i + a, h), reflect(j + b, w)]
    return out


def ref_view(img, p, config):
    """One image through the recipe; returns (pre-solarize image, solarize flag) in float64."""
    x = ref_crop(img.astype(np.float64), p.crop[0], bool(p.flip[0]))
    if p.jitter[0]:
        x = ref_jitter(x, p.jitter_factors[0], p.jitter_order[0], config)
    if p.grayscale[0] and x.shape[-1] == 3:
        x = np.repeat(ref_luma(x)[..., None], 3, axis=-1)
    if p.blur[0]:
        x = ref_blur(x, float(p.blur_sigma[0]), config.blur_kernel_size)
    return x, bool(p.solarize[0])


def check_against_reference(actual, img, p, config):
    pre, sol = ref_view(img, p, config)
    t = config.solarize_threshold
    mean = np.zeros(img.shape[-1]) if config.mean is None else np.asarray(config.mean)
    std = np.ones(img.shape[-1]) if config.std is None else np.asarray(config.std)
    expected = ((np.where(pre >= t, 1 - pre, pre) if sol else pre) - mean) / std
    # Solarize is a step: a value within rounding of the threshold may land on either side.
    near = sol & (np.abs(pre - t) < 1e-4)
    alternative = (np.where(pre >= t, pre, 1 - pre) - mean) / std
    ok = np.isclose(actual, expected, rtol=1e-4, atol=2e-4) | (
        near & np.isclose(actual, alternative, rtol=1e-4, atol=2e-4)
    )
    assert ok.all(), f"max error {np.max(np.abs(actual - expected)[~ok])} at {np.argwhere(~ok)[:3]}"


@st.composite
def configs(draw, channels):
    """Recipes with every branch likely, including zero strengths and extreme boxes."""
    strength = st.one_of(st.just(0.0), st.floats(0.0, 0.9))
    normalise = draw(st.booleans())
    return AugmentConfig(
        crop_scale=draw(st.sampled_from([(0.08, 1.0), (0.5, 1.0), (1.0, 1.0), (0.01, 0.05)])),
        crop_ratio=draw(st.sampled_from([(3 / 4, 4 / 3), (1.0, 1.0), (0.2, 5.0)])),
        flip_prob=draw(st.sampled_from([0.0, 0.5, 1.0])),
        jitter_prob=draw(st.sampled_from([0.0, 0.8, 1.0])),
        brightness=draw(strength),
        contrast=draw(strength),
        saturation=draw(strength),
        hue=draw(st.one_of(st.just(0.0), st.floats(0.0, 0.5))),
        grayscale_prob=draw(st.sampled_from([0.0, 0.5])),
        blur_prob=(draw(st.sampled_from([0.0, 1.0])), draw(st.sampled_from([0.0, 0.5]))),
        blur_sigma=draw(st.sampled_from([(0.1, 2.0), (0.5, 0.5), (0.01, 0.3)])),
        blur_kernel_size=draw(st.sampled_from([1, 3, 5, 23])),
        solarize_prob=(draw(st.sampled_from([0.0, 0.5])), draw(st.sampled_from([0.2, 1.0]))),
        mean=(0.4,) * channels if normalise else None,
        std=(0.25,) * channels if normalise else None,
    )


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("channels", CHANNELS)
@given(data=st.data(), shape=shapes, seed=seeds)
def test_vectorised_matches_per_image_reference(view, channels, data, shape, seed):
    n, h, w = shape
    config = data.draw(configs(channels))
    x = images_of(seed, n, h, w, channels)
    params = aug.sample_view_params(n, h, w, np.random.default_rng(seed), config, view=view)
    out = aug.apply_view(x, params, config)
    assert out.shape == x.shape
    assert out.dtype == np.float32
    for i in range(n):
        check_against_reference(out[i].astype(np.float64), x[i], params.select(i), config)
        # No image's output depends on another image of the batch.
        single = aug.apply_view(x[i : i + 1], params.select(i), config)
        assert_close(single[0], out[i])


# --------------------------------------------------------------------------------------------------
# the operations


@pytest.mark.parametrize("channels", CHANNELS)
@given(shape=shapes, seed=seeds, factor=st.floats(0.0, 3.0))
def test_intensity_ops_keep_shape_dtype_and_range(channels, shape, seed, factor):
    x = images_of(seed, *shape, channels)
    ops = [aug.adjust_brightness, aug.adjust_contrast]
    if channels == 3:
        ops += [aug.adjust_saturation, lambda im, f: aug.adjust_hue(im, (f / 3.0) - 0.5)]
    for op in ops:
        y = op(x, factor)
        assert y.shape == x.shape
        assert y.dtype == np.float32
        assert y.min() >= 0.0
        assert y.max() <= 1.0


@pytest.mark.parametrize("channels", CHANNELS)
@given(shape=shapes, seed=seeds)
def test_neutral_parameters_are_the_identity(channels, shape, seed):
    n, h, w = shape
    x = images_of(seed, n, h, w, channels)
    np.testing.assert_array_equal(aug.adjust_brightness(x, 1.0), x)
    np.testing.assert_array_equal(aug.adjust_contrast(x, 1.0), x)
    np.testing.assert_array_equal(aug.solarize(x, 1.01), x)
    np.testing.assert_array_equal(aug.resized_crop(x, np.tile([0.0, 0.0, h, w], (n, 1))), x)
    np.testing.assert_array_equal(aug.normalize_images(x, [0.0] * channels, [1.0] * channels), x)
    assert_close(aug.gaussian_blur(x, 1e-3, kernel_size=5), x)
    if channels == 3:
        np.testing.assert_array_equal(aug.adjust_saturation(x, 1.0), x)
        assert_close(aug.adjust_hue(x, 0.0), x, atol=2e-6)


@pytest.mark.parametrize("channels", CHANNELS)
@given(n=st.integers(1, 4), side=st.integers(2, 9), seed=seeds, view=st.sampled_from(VIEWS))
def test_recipe_at_zero_strength_is_the_identity(channels, n, side, seed, view):
    x = images_of(seed, n, side, side, channels)
    off = AugmentConfig(
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        flip_prob=0.0,
        jitter_prob=1.0,
        brightness=0.0,
        contrast=0.0,
        saturation=0.0,
        hue=0.0,
        grayscale_prob=0.0,
        blur_prob=(0.0, 0.0),
        solarize_prob=(0.0, 0.0),
        mean=None,
        std=None,
    )
    np.testing.assert_array_equal(aug.augment_view(x, np.random.default_rng(seed), off, view=view), x)


@given(shape=shapes, seed=seeds, flip_seed=seeds)
def test_flip_is_a_flip(shape, seed, flip_seed):
    n, h, w = shape
    x = images_of(seed, n, h, w, 3)
    np.testing.assert_array_equal(aug.horizontal_flip(x), x[:, :, ::-1])
    np.testing.assert_array_equal(aug.horizontal_flip(aug.horizontal_flip(x)), x)
    mask = np.random.default_rng(flip_seed).random(n) < 0.5
    y = aug.horizontal_flip(x, mask)
    np.testing.assert_array_equal(y[mask], x[mask][:, :, ::-1])
    np.testing.assert_array_equal(y[~mask], x[~mask])
    # The crop's fused flip is the same mirror.
    full = np.tile([0.0, 0.0, h, w], (n, 1))
    np.testing.assert_array_equal(aug.resized_crop(x, full, flip=mask), y)


def test_solarize_semantics():
    x = np.array([0.0, 0.2, 0.4999, 0.5, 0.7, 1.0], np.float32).reshape(1, 1, 6, 1)
    np.testing.assert_allclose(aug.solarize(x).ravel(), [0.0, 0.2, 0.4999, 0.5, 0.3, 0.0], atol=1e-7)
    np.testing.assert_allclose(aug.solarize(x, 0.0).ravel(), 1.0 - x.ravel())
    assert aug.solarize(x).dtype == np.float32


@given(
    shape=shapes,
    value=st.floats(0.0, 1.0),
    sigma=st.floats(0.05, 5.0),
    kernel=st.sampled_from([1, 3, 5, 9, 23]),
)
def test_blur_keeps_a_constant_image(shape, value, sigma, kernel):
    x = np.full((*shape, 3), value, np.float32)
    y = aug.gaussian_blur(x, sigma, kernel_size=kernel)
    assert_close(y, x)
    assert_close(y.mean(), x.mean())


@given(seed=seeds, sigma=st.floats(0.3, 3.0))
def test_blur_spreads_an_impulse_into_a_normalised_symmetric_kernel(seed, sigma):
    x = np.zeros((1, 15, 15, 1), np.float32)
    x[0, 7, 7, 0] = 1.0
    y = aug.gaussian_blur(x, sigma, kernel_size=5)[0, :, :, 0]
    assert_close(y.sum(), np.float32(1.0))  # mass stays inside: the kernel fits within the image
    assert_close(y, y[::-1, :])
    assert_close(y, y.T)
    assert y[7, 7] == y.max()
    assert y[7, 7] < 1.0
    assert np.count_nonzero(y) == 25  # 5 x 5 taps


def test_blur_strength_grows_with_sigma():
    x = images_of(0, 2, 16, 16, 1)
    v = [aug.gaussian_blur(x, s, kernel_size=9).var() for s in (0.3, 1.0, 3.0)]
    assert v[0] > v[1] > v[2]


@given(shape=shapes, seed=seeds)
def test_grayscale_and_saturation(shape, seed):
    x = images_of(seed, *shape, 3)
    g = aug.to_grayscale(x)
    expected = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    for ch in range(3):
        assert_close(g[..., ch], expected)
    assert_close(aug.adjust_saturation(x, 0.0), g)
    np.testing.assert_array_equal(aug.adjust_brightness(x, 0.0), np.zeros_like(x))


@given(shape=shapes, seed=seeds, factor=st.floats(0.0, 1.0))
def test_contrast_keeps_the_mean_luma(shape, seed, factor):
    # With factor <= 1 the blend is a convex combination, so nothing clips and the mean luma is fixed.
    x = images_of(seed, *shape, 3)
    y = aug.adjust_contrast(x, factor)

    def luma(im):
        return (0.299 * im[..., 0] + 0.587 * im[..., 1] + 0.114 * im[..., 2]).mean(axis=(1, 2))

    assert_close(luma(y), luma(x), atol=1e-5)
    assert_close(aug.adjust_contrast(x, 0.0)[..., 0].std(axis=(1, 2)), np.zeros(shape[0], np.float32))


@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)), seed=seeds)
def test_hue_matches_colorsys(shape, seed):
    x = images_of(seed, *shape, 3)
    # Exact greys and saturated colours exercise the sector boundaries.
    x[..., 0, 0, :] = 0.5
    x[0, 0, -1] = [1.0, 0.0, 0.0]
    shifts = np.random.default_rng(seed).uniform(-0.5, 0.5, shape[0])
    y = aug.adjust_hue(x, shifts)
    for i in range(shape[0]):
        assert_close(y[i], ref_hue(x[i].astype(np.float64), shifts[i]).astype(np.float32), atol=2e-6)


def test_colour_ops_need_rgb():
    x = images_of(0, 2, 4, 4, 1)
    for op in (aug.adjust_saturation, aug.adjust_hue):
        with pytest.raises(ValueError, match=r"RGB.*\(2, 4, 4, 1\)"):
            op(x, 0.5)
    with pytest.raises(ValueError, match="RGB"):
        aug.to_grayscale(x)


@given(
    shape=st.tuples(st.integers(1, 64), st.integers(2, 40), st.integers(2, 40)),
    seed=seeds,
    scale=st.sampled_from([(0.08, 1.0), (0.25, 1.0), (0.5, 0.5)]),
    ratio=st.sampled_from([(3 / 4, 4 / 3), (0.5, 2.0)]),
)
def test_crop_boxes_lie_inside_and_respect_scale_and_ratio(shape, seed, scale, ratio):
    n, h, w = shape
    boxes = aug.sample_crop_boxes(n, h, w, np.random.default_rng(seed), scale=scale, ratio=ratio)
    top, left, bh, bw = boxes.T
    eps = 1e-9
    assert (top >= -eps).all()
    assert (left >= -eps).all()
    assert (top + bh <= h + eps).all()
    assert (left + bw <= w + eps).all()
    area = bh * bw / (h * w)
    r = bw / bh
    sampled = (
        (area >= scale[0] - eps) & (area <= scale[1] + eps) & (r >= ratio[0] - eps) & (r <= ratio[1] + eps)
    )
    # Boxes not drawn from the ranges are the centred fallback: the whole image clamped in ratio.
    fallback = ~sampled
    if fallback.any():
        assert np.allclose(top[fallback], (h - bh[fallback]) / 2)
        assert np.allclose(left[fallback], (w - bw[fallback]) / 2)
        assert np.allclose(np.maximum(bh[fallback] / h, bw[fallback] / w), 1.0)


def test_crop_of_scale_one_ratio_one_is_the_identity():
    rng = np.random.default_rng(0)
    x = images_of(1, 5, 7, 7, 3)
    boxes = aug.sample_crop_boxes(5, 7, 7, rng, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_array_equal(boxes, np.tile([0.0, 0.0, 7.0, 7.0], (5, 1)))
    np.testing.assert_array_equal(aug.resized_crop(x, boxes), x)
    # On a non-square image no square box of full area fits: the centred square fallback is used.
    boxes = aug.sample_crop_boxes(3, 6, 10, rng, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(boxes, np.tile([0.0, 2.0, 6.0, 6.0], (3, 1)))


def test_crop_resamples_bilinearly():
    # A horizontal ramp cropped to its left half and stretched back: the ramp at half the slope.
    x = np.tile(np.arange(8, dtype=np.float32) / 7.0, (1, 8, 1))[..., None]
    y = aug.resized_crop(x, np.array([[0.0, 0.0, 8.0, 4.0]]))
    cols = y[0, 0, :, 0]
    assert_close(np.diff(cols[1:-1]), np.full(5, 0.5 / 7.0, np.float32), atol=1e-6)
    assert_close(y[0, 0], y[0, 5])


def test_uint8_input_equals_float_input():
    x = np.random.default_rng(0).integers(0, 256, (3, 6, 6, 3), dtype=np.uint8)
    c = AugmentConfig.for_image_size(6)
    a = aug.two_views(x, np.random.default_rng(3), c)
    b = aug.two_views(x.astype(np.float32) / np.float32(255.0), np.random.default_rng(3), c)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# --------------------------------------------------------------------------------------------------
# the recipe


@pytest.mark.parametrize("channels", CHANNELS)
@given(shape=shapes, seed=seeds)
def test_two_views_are_deterministic_for_a_seed(channels, shape, seed):
    x = images_of(seed, *shape, channels)
    a1, a2 = aug.two_views(x, np.random.default_rng(seed))
    b1, b2 = aug.two_views(x, np.random.default_rng(seed))
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert a1.shape == x.shape
    assert a1.dtype == np.float32
    assert a2.dtype == np.float32
    # Normalised output of [0, 1] data stays within the normalisation's image of [0, 1].
    config = AugmentConfig.for_image_size(shape[1], shape[2], channels=channels)
    lo = (0.0 - np.asarray(config.mean)) / np.asarray(config.std)
    hi = (1.0 - np.asarray(config.mean)) / np.asarray(config.std)
    for v in (a1, a2):
        assert (v >= lo - 1e-5).all()
        assert (v <= hi + 1e-5).all()


def test_different_seeds_give_different_views():
    x = images_of(0, 8, 16, 16, 3)
    a1, _ = aug.two_views(x, np.random.default_rng(0))
    b1, _ = aug.two_views(x, np.random.default_rng(1))
    assert not np.array_equal(a1, b1)


def test_release_probabilities_per_view():
    n = 40_000
    config = AugmentConfig()
    rng = np.random.default_rng(0)
    p1 = aug.sample_view_params(n, 32, 32, rng, config, view=0)
    p2 = aug.sample_view_params(n, 32, 32, rng, config, view=1)

    def near(mask, p):
        assert abs(mask.mean() - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (mask.mean(), p)

    near(p1.blur, 1.0)
    near(p2.blur, 0.1)
    near(p1.solarize, 0.0)
    near(p2.solarize, 0.2)
    for p in (p1, p2):
        near(p.flip, 0.5)
        near(p.jitter, 0.8)
        near(p.grayscale, 0.2)
        f = p.jitter_factors
        assert f[:, 0].min() >= 0.6
        assert f[:, 0].max() <= 1.4
        assert f[:, 1].min() >= 0.6
        assert f[:, 1].max() <= 1.4
        assert f[:, 2].min() >= 0.8
        assert f[:, 2].max() <= 1.2
        assert f[:, 3].min() >= -0.1
        assert f[:, 3].max() <= 0.1
        assert p.blur_sigma.min() >= 0.1
        assert p.blur_sigma.max() <= 2.0
        np.testing.assert_array_equal(np.sort(p.jitter_order, axis=1), np.tile(np.arange(4), (n, 1)))
        # Every one of the 24 orders of the four jitter operations occurs.
        assert len({tuple(o) for o in p.jitter_order[:2000]}) == 24


def test_view_params_select():
    p = aug.sample_view_params(5, 8, 8, np.random.default_rng(0), AugmentConfig(), view=1)
    one = p.select(2)
    assert isinstance(one, ViewParams)
    assert one.crop.shape == (1, 4)
    np.testing.assert_array_equal(one.crop[0], p.crop[2])
    assert p.select(np.array([0, 4])).flip.shape == (2,)


def test_scaling_for_small_images():
    full = AugmentConfig.for_image_size(224)
    assert full.blur_kernel_size == 23
    assert full.crop_scale == (0.08, 1.0)
    assert_close(np.array(full.blur_sigma), np.array([0.1, 2.0]))
    assert full == AugmentConfig()  # at the release's size the recipe is the release's
    cifar = AugmentConfig.for_image_size(32)
    assert cifar.blur_kernel_size == 5
    assert cifar.crop_scale == (0.08, 1.0)
    assert_close(np.array(cifar.blur_sigma), np.array([0.1, 2.0]) * 32 / 224)
    digits = AugmentConfig.for_image_size(8, channels=1)
    assert digits.blur_kernel_size == 3
    assert digits.crop_scale == (0.25, 1.0)
    assert digits.mean == (0.5,)
    assert digits.std == (0.5,)
    assert AugmentConfig.for_image_size(20, 40).crop_scale[0] == pytest.approx(0.08)


def test_for_dataset_uses_its_stats_and_turns_flips_off_for_digits():
    from m2t_core.datasets import Dataset

    rng = np.random.default_rng(0)
    x = rng.random((20, 8, 8, 1)).astype(np.float32) * 0.5
    y = np.arange(20, dtype=np.int64) % 2
    for name, flip in (("digits", 0.0), ("npz", 0.5)):
        data = Dataset(x, y, x[:4], y[:4], ("a", "b"), name)
        c = AugmentConfig.for_dataset(data)
        assert c.flip_prob == flip
        assert_close(np.array(c.mean), np.array([x.mean()]), rtol=1e-4)
        assert_close(np.array(c.std), np.array([x.std()]), rtol=1e-4)
        v = aug.eval_view(x, c)
        assert_close(np.array([v.mean(), v.std()]), np.array([0.0, 1.0], np.float32), atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": (0.9, 0.5)}, "crop_scale"),
        ({"crop_ratio": (2.0, 1.0)}, "crop_ratio"),
        ({"flip_prob": 1.5}, "flip_prob"),
        ({"blur_prob": (1.0, -0.1)}, r"blur_prob\[1\]"),
        ({"brightness": -0.1}, "brightness"),
        ({"hue": 0.6}, "hue"),
        ({"blur_kernel_size": 4}, "blur_kernel_size"),
        ({"blur_sigma": (0.0, 1.0)}, "blur_sigma"),
        ({"mean": (0.5,), "std": None}, "mean and std"),
        ({"mean": (0.5,), "std": (0.0,)}, "std > 0"),
        ({"mean": (0.5, 0.5), "std": (0.2,)}, "equal lengths"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**kwargs)


def test_config_rejects_a_non_pair():
    with pytest.raises(TypeError, match="crop_scale must be a pair"):
        AugmentConfig(crop_scale=0.5)


def test_bad_images_are_named():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"\[N, H, W, C\].*\(4, 4\)"):
        aug.two_views(np.zeros((4, 4), np.float32), rng)
    with pytest.raises(ValueError, match=r"\[0, 1\].*2\.0"):
        aug.two_views(np.full((1, 4, 4, 3), 2.0, np.float32), rng)
    with pytest.raises(ValueError, match=r"\[0, 1\], got 48 non-finite"):
        aug.two_views(np.full((1, 4, 4, 3), np.nan, np.float32), rng)
    with pytest.raises(TypeError, match="int64"):
        aug.two_views(np.zeros((1, 4, 4, 3), np.int64), rng)
    with pytest.raises(TypeError, match="Generator"):
        aug.two_views(np.zeros((1, 4, 4, 3), np.float32), np.random.RandomState(0))
    with pytest.raises(ValueError, match="one entry per channel"):
        aug.two_views(np.zeros((1, 4, 4, 1), np.float32), rng, AugmentConfig())
    with pytest.raises(ValueError, match="view must be 0"):
        aug.augment_view(np.zeros((1, 4, 4, 3), np.float32), rng, AugmentConfig(), view=2)
    params = aug.sample_view_params(3, 4, 4, rng, AugmentConfig(), view=0)
    with pytest.raises(ValueError, match="params are for 3 images"):
        aug.apply_view(np.zeros((2, 4, 4, 3), np.float32), params, AugmentConfig())
    with pytest.raises(ValueError, match=r"shape \(3,\) for 3 images, got \(2,\)"):
        aug.adjust_brightness(np.zeros((3, 4, 4, 3), np.float32), [1.0, 1.0])
