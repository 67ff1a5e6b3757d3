"""Image data sets and deterministic batches for every framework's examples, in plain NumPy.

Every loader returns a :class:`Dataset`: channels-last ``[N, H, W, C]`` float32 images in [0, 1]
(``C`` is 1 or 3) with int64 labels, split into a training and a test part. Adapters transpose to
channels-first themselves (``images.transpose(0, 3, 1, 2)`` for torch).

Sources, picked from one string by :func:`load_data` (the examples' ``--data`` flag):

* ``"digits"`` — scikit-learn's bundled copy of the UCI handwritten digits (1,797 images of
  8×8 pixels, 10 classes; no download), split with a seeded, stratified split (:func:`load_digits`);
* a CIFAR-10 folder in the python-pickle layout (``data_batch_1`` … ``data_batch_5``,
  ``test_batch``, optionally ``batches.meta``) (:func:`load_cifar10`);
* an ImageFolder tree: one sub-folder of images per class, or ``train/`` and ``test/`` (or
  ``val/``) folders that each hold such class folders, read with Pillow (:func:`load_image_folder`);
* a ``.npz`` file with the arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` and optionally
  ``class_names`` (:func:`load_npz`).

A missing path raises ``FileNotFoundError`` and malformed content :class:`DatasetError` (a
``ValueError``); either message is one line that names the path and the layout that was expected.

:class:`BatchIterator` shuffles with a seed and the epoch number only, so every framework's example
sees identical batches for a given seed, and a run resumed at any epoch or batch sees what an
uninterrupted run would have seen. Each :class:`Batch` carries its own ``numpy.random.Generator`` for
the view augmentations (:func:`m2t_core.augment.two_views`), derived the same way.

scikit-learn and Pillow are imported only inside the loaders that need them; importing this module
imports NumPy alone.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "CIFAR10_CLASSES",
    "IMAGE_EXTENSIONS",
    "Batch",
    "BatchIterator",
    "Dataset",
    "DatasetError",
    "load_cifar10",
    "load_data",
    "load_digits",
    "load_image_folder",
    "load_npz",
    "stratified_split",
]

#: Class names of CIFAR-10 in label order, used when a folder has no ``batches.meta``.
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

#: File name endings (lower case) that :func:`load_image_folder` reads as images.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_FILES = (*_CIFAR_TRAIN, "test_batch")
_CIFAR_LAYOUT = "a CIFAR-10 python folder holding data_batch_1..data_batch_5 and test_batch"
_FOLDER_LAYOUT = (
    "an ImageFolder tree (one sub-folder of images per class, or train/ and test/ (or val/) "
    "folders each holding such class folders)"
)
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_NPZ_LAYOUT = (
    "a .npz file with arrays x_train [N,H,W,C] or [N,H,W] (uint8 0-255 or float in [0, 1]), "
    "y_train [N] (integers), x_test, y_test and optionally class_names"
)
_SPEC_LAYOUT = f"'digits', a .npz file, {_CIFAR_LAYOUT}, or {_FOLDER_LAYOUT}"


class DatasetError(ValueError):
    """A data path exists but does not hold what its loader expects (the message is one line)."""


def _one_line(text: str) -> str:
    # Messages embed file names and library errors; keep them on one line so a CLI prints one line.
    return " ".join(str(text).split())


def _missing(path: Path, layout: str) -> FileNotFoundError:
    return FileNotFoundError(_one_line(f"data path {str(path)!r} does not exist; expected {layout}"))


def _malformed(path: Path, problem: str, layout: str) -> DatasetError:
    return DatasetError(_one_line(f"{str(path)!r}: {problem}; expected {layout}"))


@dataclass(frozen=True)
class Dataset:
    """Training and test images with labels, channels-last float32 in [0, 1].

    Attributes:
        train_images: ``[N, H, W, C]`` float32 in [0, 1], ``C`` in {1, 3}.
        train_labels: ``[N]`` int64 in ``[0, num_classes)``.
        test_images: ``[M, H, W, C]`` float32 in [0, 1] (same ``H, W, C``).
        test_labels: ``[M]`` int64.
        class_names: Name of each class, indexed by label.
        name: Which loader made it: ``"digits"``, ``"cifar10"``, ``"image_folder"`` or ``"npz"``.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        """Check shapes, dtypes and label range, so a hand-built Dataset is as safe as a loaded one."""
        for part in ("train", "test"):
            x = getattr(self, f"{part}_images")
            y = getattr(self, f"{part}_labels")
            if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 4):
                raise TypeError(
                    f"{part}_images must be a float32 [N, H, W, C] array, got "
                    f"{getattr(x, 'dtype', type(x).__name__)} of shape {np.shape(x)}"
                )
            if x.shape[-1] not in (1, 3):
                raise ValueError(f"{part}_images must have 1 or 3 channels (NHWC), got shape {x.shape}")
            if not (isinstance(y, np.ndarray) and y.dtype == np.int64 and y.shape == (x.shape[0],)):
                raise TypeError(
                    f"{part}_labels must be an int64 [N] array matching {part}_images' {x.shape[0]} rows, "
                    f"got {getattr(y, 'dtype', type(y).__name__)} of shape {np.shape(y)}"
                )
            if y.size and (y.min() < 0 or y.max() >= len(self.class_names)):
                raise ValueError(
                    f"{part}_labels must lie in [0, {len(self.class_names)}) for "
                    f"{len(self.class_names)} class names, got min {y.min()} and max {y.max()}"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"train and test images differ in shape: {self.train_images.shape[1:]} vs "
                f"{self.test_images.shape[1:]}"
            )

    def __repr__(self) -> str:
        """A summary (name, sizes, image shape, classes) instead of thousands of pixel values."""
        return (
            f"Dataset(name={self.name!r}, train={len(self.train_labels)}, test={len(self.test_labels)}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes})"
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        h, w, c = self.train_images.shape[1:]
        return int(h), int(w), int(c)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and standard deviation of the training images (float32 ``[C]`` each).

        Use them as the augmentation's normalisation
        (:meth:`m2t_core.augment.AugmentConfig.for_dataset` does).

        Returns:
            ``(mean, std)``; a constant channel gets std 1 so normalising never divides by zero.
        """
        x = self.train_images.reshape(-1, self.train_images.shape[-1]).astype(np.float64)
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std[std <= 1e-6] = 1.0
        return mean.astype(np.float32), std.astype(np.float32)


def stratified_split(
    labels: np.ndarray, test_fraction: float, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of sample indices into train and test, keeping each class's share.

    Each class with ``n`` samples sends ``round(test_fraction * n)`` of them (at least one, and at
    least one left for training, when ``n >= 2``) to the test part.

    Args:
        labels: ``[N]`` integer labels.
        test_fraction: Share of each class held out, in (0, 1).
        seed: Seed of the shuffle within each class.

    Returns:
        ``(train_indices, test_indices)``, each sorted ascending (int64).

    Raises:
        ValueError: ``test_fraction`` outside (0, 1) or labels not 1-D.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    test_parts = []
    for cls in np.unique(labels):  # a loop over classes, not samples
        idx = np.flatnonzero(labels == cls)
        n_test = round(test_fraction * idx.size)
        if idx.size >= 2:
            n_test = min(max(n_test, 1), idx.size - 1)
        test_parts.append(rng.permutation(idx)[:n_test])
    test = np.sort(np.concatenate(test_parts)).astype(np.int64) if test_parts else np.zeros(0, np.int64)
    mask = np.ones(labels.size, bool)
    mask[test] = False
    return np.flatnonzero(mask).astype(np.int64), test


# --------------------------------------------------------------------------------------------------
# loaders


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled handwritten digits as ``[N, 8, 8, 1]`` float32 images in [0, 1].

    The 1,797 images (values 0–16) are divided by 16 and split with :func:`stratified_split`; no
    file is downloaded.

    Args:
        test_fraction: Share of each class held out for testing (default 0.2: 1,438 train, 359 test).
        seed: Seed of the split.

    Returns:
        A :class:`Dataset` named ``"digits"`` with class names ``"0"`` … ``"9"``.

    Raises:
        ImportError: scikit-learn is not installed.

    References:
        Alpaydin, Kaynak. *Optical Recognition of Handwritten Digits.* UCI Machine Learning
        Repository, 1998.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:
        raise ImportError("load_digits needs scikit-learn: pip install scikit-learn") from err
    bunch = sklearn_digits()
    images = (np.asarray(bunch.images, np.float32) / np.float32(16.0))[..., None]
    labels = np.asarray(bunch.target, np.int64)
    train, test = stratified_split(labels, test_fraction, seed=seed)
    return Dataset(
        images[train], labels[train], images[test], labels[test], tuple(str(i) for i in range(10)), "digits"
    )


# The only globals a CIFAR batch needs: NumPy's array reconstruction (under its NumPy 1 and 2 module
# names) and the codec Python 3 uses for bytes in protocol-2 pickles.
_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, bytes, numbers and NumPy arrays, and nothing else.

    A pickle can name any callable to run while loading; refusing every global outside
    ``_PICKLE_GLOBALS`` means a crafted file in a data folder cannot run code.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            # The files were written by Python 2: read its str as bytes (keys become bytes).
            obj = _ArrayUnpickler(fh, encoding="bytes").load()
    except Exception as err:
        raise _malformed(path, f"cannot be unpickled ({type(err).__name__}: {err})", _CIFAR_LAYOUT) from err
    if not isinstance(obj, dict):
        raise _malformed(path, f"holds a {type(obj).__name__}, not a dict", _CIFAR_LAYOUT)
    # Keys are bytes in the original files; accept str keys from copies re-saved by Python 3.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if "data" not in d or "labels" not in d:
        raise _malformed(path, f"has keys {sorted(d)} without 'data' and 'labels'", _CIFAR_LAYOUT)
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"], np.int64).reshape(-1)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.size:
        raise _malformed(
            path,
            f"data of shape {data.shape} with {labels.size} labels is not [N, 3072] uint8 rows",
            _CIFAR_LAYOUT,
        )
    # Each row is 1024 red, then 1024 green, then 1024 blue values of a 32x32 image, row-major.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / np.float32(255.0)
    return images, labels


def load_cifar10(path: str | os.PathLike) -> Dataset:
    """CIFAR-10 from a local folder in the python-pickle layout (no download).

    ``path`` holds ``data_batch_1`` … ``data_batch_5`` (50,000 training images) and ``test_batch``
    (10,000), as unpacked from ``cifar-10-python.tar.gz``; the folder that contains
    ``cifar-10-batches-py`` works too. Class names come from ``batches.meta`` when present, else
    :data:`CIFAR10_CLASSES`. The files are pickles; they are read with an unpickler that builds only
    dicts, lists, bytes, numbers and NumPy arrays, so a crafted file cannot run code.

    Args:
        path: The folder.

    Returns:
        A :class:`Dataset` named ``"cifar10"`` of ``[N, 32, 32, 3]`` float32 images.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DatasetError: a batch file is missing or malformed.

    References:
        Krizhevsky. *Learning Multiple Layers of Features from Tiny Images.* Tech. report, 2009.
    """
    root = Path(path)
    if not root.exists():
        raise _missing(root, _CIFAR_LAYOUT)
    if not (root / "data_batch_1").exists() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    missing = [f for f in _CIFAR_FILES if not (root / f).is_file()]
    if missing:
        raise _malformed(root, f"lacks {', '.join(missing)}", _CIFAR_LAYOUT)
    parts = [_cifar_batch(root / f) for f in _CIFAR_TRAIN]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _cifar_batch(root / "test_batch")
    names: tuple[str, ...] = CIFAR10_CLASSES
    if (root / "batches.meta").is_file():
        meta = _unpickle(root / "batches.meta")
        raw = meta.get("label_names")
        if raw is not None:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw)
    labels = np.concatenate([train_y, test_y])
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise _malformed(
            root, f"labels span [{labels.min()}, {labels.max()}] for {len(names)} classes", _CIFAR_LAYOUT
        )
    return Dataset(train_x, train_y, test_x, test_y, names, "cifar10")


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=str)


def _image_files(folder: Path) -> list[Path]:
    # Walk sub-folders too (torchvision's ImageFolder does), in a sorted, reproducible order.
    return sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS), key=str
    )


def _read_image(path: Path, image_size: int, mode: str) -> np.ndarray:
    from PIL import Image  # imported by the caller first, with a clear ImportError

    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            w, h = img.size
            # Shorter side to image_size, then a centre crop: keeps the aspect ratio (the usual
            # evaluation transform) instead of squashing non-square images.
            s = image_size / min(w, h)
            nw, nh = max(image_size, round(w * s)), max(image_size, round(h * s))
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - image_size) // 2, (nh - image_size) // 2
            img = img.crop((left, top, left + image_size, top + image_size))
            arr = np.asarray(img, np.float32) / np.float32(255.0)
    except Exception as err:
        raise _malformed(
            path, f"is not a readable image ({type(err).__name__}: {err})", _FOLDER_LAYOUT
        ) from err
    return arr[..., None] if arr.ndim == 2 else arr


def _read_split(folder: Path, classes: Sequence[str], image_size: int, mode: str):
    images, labels = [], []
    for label, cls in enumerate(classes):  # a loop over files is unavoidable: each is decoded alone
        cdir = folder / cls
        files = _image_files(cdir) if cdir.is_dir() else []
        images.extend(_read_image(f, image_size, mode) for f in files)
        labels.extend([label] * len(files))
    if not images:
        raise _malformed(folder, "holds no image files", _FOLDER_LAYOUT)
    return np.stack(images).astype(np.float32), np.asarray(labels, np.int64)


def load_image_folder(
    path: str | os.PathLike,
    *,
    image_size: int = 32,
    channels: int = 3,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Any ImageFolder tree, read with Pillow and resized to ``image_size × image_size``.

    Two layouts are accepted:

    * ``path/<class>/<image>`` — one folder per class (names sorted give the labels); the images are
      split with :func:`stratified_split` (``test_fraction``, ``seed``);
    * ``path/train/<class>/<image>`` and ``path/test/<class>/<image>`` (or ``val/``) — the given split;
      the classes are the union of both sides' folders.

    Each image is converted to RGB (``channels=3``) or grayscale (``channels=1``), its shorter side
    resized to ``image_size`` (bilinear) and centre-cropped to a square. Files ending in one of
    :data:`IMAGE_EXTENSIONS` are read, in sorted order, from each class folder and its sub-folders.

    Args:
        path: Root of the tree.
        image_size: Side of the square output images.
        channels: 3 for RGB, 1 for grayscale.
        test_fraction: Share of each class held out when the tree has no train/test split.
        seed: Seed of that split.

    Returns:
        A :class:`Dataset` named ``"image_folder"``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DatasetError: no class folders, no images, or an unreadable image (named in the message).
        ValueError: ``image_size < 1`` or ``channels`` not 1 or 3.
        ImportError: Pillow is not installed.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    try:
        import PIL.Image  # noqa: F401  (checked here so the error names what to install)
    except ImportError as err:
        raise ImportError("load_image_folder needs Pillow: pip install pillow") from err
    root = Path(path)
    if not root.exists():
        raise _missing(root, _FOLDER_LAYOUT)
    if not root.is_dir():
        raise _malformed(root, "is not a folder", _FOLDER_LAYOUT)
    mode = "RGB" if channels == 3 else "L"
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes = sorted({p.name for d in (root / "train", test_dir) for p in _class_dirs(d)})
        if not classes:
            raise _malformed(root, "train/ and test/ hold no class folders", _FOLDER_LAYOUT)
        train_x, train_y = _read_split(root / "train", classes, image_size, mode)
        test_x, test_y = _read_split(test_dir, classes, image_size, mode)
    else:
        classes = [p.name for p in _class_dirs(root)]
        if not classes:
            raise _malformed(root, "holds no class folders", _FOLDER_LAYOUT)
        x, y = _read_split(root, classes, image_size, mode)
        train, test = stratified_split(y, test_fraction, seed=seed)
        train_x, train_y, test_x, test_y = x[train], y[train], x[test], y[test]
    return Dataset(train_x, train_y, test_x, test_y, tuple(classes), "image_folder")


def _npz_images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        hint = " (transpose NCHW arrays with x.transpose(0, 2, 3, 1))" if x.ndim == 4 else ""
        raise _malformed(path, f"{key} has shape {x.shape}, not [N, H, W, 1 or 3]{hint}", _NPZ_LAYOUT)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype.kind != "f":
        raise _malformed(path, f"{key} has dtype {x.dtype}, not uint8 or float", _NPZ_LAYOUT)
    x = x.astype(np.float32)
    if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise _malformed(
            path, f"float {key} spans [{np.nanmin(x):g}, {np.nanmax(x):g}], not [0, 1]", _NPZ_LAYOUT
        )
    return x


def _npz_labels(path: Path, key: str, y: np.ndarray, rows: int) -> np.ndarray:
    # Keras' data sets store labels as [N, 1]; accept that as well as [N].
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != rows or y.dtype.kind not in "iu":
        raise _malformed(
            path, f"{key} has shape {y.shape} and dtype {y.dtype}, not [{rows}] integers", _NPZ_LAYOUT
        )
    if y.size and y.min() < 0:
        raise _malformed(path, f"{key} has negative labels (min {y.min()})", _NPZ_LAYOUT)
    return y.astype(np.int64)


def load_npz(path: str | os.PathLike) -> Dataset:
    """Images and labels from a ``.npz`` file (``numpy.savez``) with the keys below.

    * ``x_train``, ``x_test``: ``[N, H, W, C]`` (``C`` 1 or 3) or ``[N, H, W]``; uint8 in 0–255
      (divided by 255) or floating in [0, 1];
    * ``y_train``, ``y_test``: ``[N]`` (or ``[N, 1]``) non-negative integers;
    * ``class_names`` (optional): one string per class; otherwise ``"0"``, ``"1"``, … up to the
      largest label.

    The file is read with ``allow_pickle=False``.

    Args:
        path: The ``.npz`` file.

    Returns:
        A :class:`Dataset` named ``"npz"``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DatasetError: a key is missing or an array has the wrong shape, dtype or range.
    """
    p = Path(path)
    if not p.exists():
        raise _missing(p, _NPZ_LAYOUT)
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as err:
        raise _malformed(p, f"cannot be read as .npz ({type(err).__name__}: {err})", _NPZ_LAYOUT) from err
    missing = [k for k in _NPZ_KEYS if k not in arrays]
    if missing:
        raise _malformed(p, f"has keys {sorted(arrays)} but lacks {', '.join(missing)}", _NPZ_LAYOUT)
    train_x = _npz_images(p, "x_train", arrays["x_train"])
    test_x = _npz_images(p, "x_test", arrays["x_test"])
    train_y = _npz_labels(p, "y_train", arrays["y_train"], train_x.shape[0])
    test_y = _npz_labels(p, "y_test", arrays["y_test"], test_x.shape[0])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise _malformed(
            p, f"x_train images {train_x.shape[1:]} and x_test images {test_x.shape[1:]} differ", _NPZ_LAYOUT
        )
    top = int(max(train_y.max(initial=-1), test_y.max(initial=-1)))
    if "class_names" in arrays:
        names = tuple(str(n) for n in np.asarray(arrays["class_names"]).reshape(-1))
        if top >= len(names):
            raise _malformed(p, f"labels reach {top} but class_names has {len(names)} entries", _NPZ_LAYOUT)
    else:
        names = tuple(str(i) for i in range(top + 1))
    return Dataset(train_x, train_y, test_x, test_y, names, "npz")


def load_data(
    spec: str | os.PathLike,
    *,
    image_size: int = 32,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Pick the loader from a ``--data`` string and load.

    * ``"digits"`` → :func:`load_digits`;
    * a path ending in ``.npz`` → :func:`load_npz`;
    * a folder holding ``data_batch_1`` (or ``cifar-10-batches-py/``) → :func:`load_cifar10`;
    * any other folder → :func:`load_image_folder`.

    Args:
        spec: ``"digits"`` or a path.
        image_size: Output side for ImageFolder trees (other sources keep their own size).
        test_fraction: Held-out share for sources without a test split (digits, flat ImageFolder).
        seed: Seed of that split.

    Returns:
        The :class:`Dataset`.

    Raises:
        FileNotFoundError: the path does not exist (the message lists the accepted layouts).
        DatasetError: the path exists but is malformed.
    """
    text = os.fspath(spec)
    if text == "digits":
        return load_digits(test_fraction=test_fraction, seed=seed)
    p = Path(text).expanduser()
    if text.lower().endswith(".npz"):
        return load_npz(p)
    if not p.exists():
        raise _missing(p, _SPEC_LAYOUT)
    if not p.is_dir():
        raise _malformed(p, "is neither a folder nor a .npz file", _SPEC_LAYOUT)
    if (p / "data_batch_1").exists() or (p / "cifar-10-batches-py").is_dir():
        return load_cifar10(p)
    return load_image_folder(p, image_size=image_size, test_fraction=test_fraction, seed=seed)


# --------------------------------------------------------------------------------------------------
# batches


class Batch(NamedTuple):
    """One batch from :meth:`BatchIterator.epoch`.

    Attributes:
        images: ``images[indices]``.
        labels: ``labels[indices]``, or ``None`` when the iterator has no labels.
        indices: Row indices into the full arrays (int64).
        epoch: Epoch number.
        step: Index of the batch within its epoch.
        rng: A ``numpy.random.Generator`` seeded by ``(seed, epoch, step)`` — the same for every
            framework and after a resume — for this batch's augmentations.
    """

    images: np.ndarray
    labels: np.ndarray | None
    indices: np.ndarray
    epoch: int
    step: int
    rng: np.random.Generator


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class BatchIterator:
    """Deterministic, seedable, epoch-aware shuffling batches of NumPy arrays.

    The order of epoch ``e`` is ``numpy.random.default_rng((seed, e)).permutation(N)`` — it depends on
    nothing else, so epochs can be visited in any order and a resumed run sees the same batches as an
    uninterrupted one. Each batch's ``rng`` is ``default_rng((seed, e, step, 1))``, a stream
    independent of the shuffle.

    Example::

        loader = BatchIterator(data.train_images, data.train_labels, batch_size=256, seed=0)
        for epoch in range(start_epoch, epochs):
            for batch in loader.epoch(epoch):
                v1, v2 = two_views(batch.images, batch.rng, config)

    Args:
        images: ``[N, ...]`` array (any dtype).
        labels: ``[N]`` array or ``None``.
        batch_size: Rows per batch.
        shuffle: Shuffle each epoch (``False``: rows in order, e.g. for feature extraction).
        drop_last: Drop the final short batch (training); keep it for evaluation.
        seed: Seed of the shuffles and the per-batch generators.

    Raises:
        ValueError: ``batch_size < 1``, ``labels`` of another length than ``images``, or
            ``drop_last=True`` with fewer rows than one batch (an epoch would be empty).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
    ) -> None:
        """Store the arrays and check the arguments (see the class docstring)."""
        self.images = np.asarray(images)
        self.labels = None if labels is None else np.asarray(labels)
        if self.images.ndim < 1:
            raise ValueError("images must have a leading batch axis, got a scalar")
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.seed = _check_int(seed, "seed", 0)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        n = self.images.shape[0]
        if self.labels is not None and self.labels.shape[:1] != (n,):
            raise ValueError(f"labels have {self.labels.shape[:1]} rows but images have {n}")
        if self.drop_last and n < self.batch_size:
            raise ValueError(
                f"drop_last=True with batch_size={self.batch_size} > {n} rows leaves no batch; "
                "use a smaller batch or drop_last=False"
            )

    @property
    def num_examples(self) -> int:
        """Rows in the data."""
        return int(self.images.shape[0])

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def order(self, epoch: int) -> np.ndarray:
        """Row order of ``epoch`` (int64 ``[N]``): a seeded permutation, or ``arange`` without shuffle."""
        epoch = _check_int(epoch, "epoch", 0)
        if not self.shuffle:
            return np.arange(self.num_examples, dtype=np.int64)
        return np.random.default_rng((self.seed, epoch)).permutation(self.num_examples).astype(np.int64)

    def epoch(self, epoch: int, *, start_step: int = 0) -> Iterator[Batch]:
        """Yield the batches of ``epoch``, from batch ``start_step`` on (to resume mid-epoch).

        Args:
            epoch: Epoch number (>= 0).
            start_step: First batch to yield (0 … ``len(self)``).

        Yields:
            :class:`Batch` tuples.
        """
        order = self.order(epoch)
        start_step = _check_int(start_step, "start_step", 0)
        for step in range(start_step, len(self)):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            yield Batch(
                images=self.images[idx],
                labels=None if self.labels is None else self.labels[idx],
                indices=idx,
                epoch=epoch,
                step=step,
                rng=np.random.default_rng((self.seed, epoch, step, 1)),
            )
