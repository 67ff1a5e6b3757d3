r"""The framework-neutral checkpoint format of a whole Momentum² Teacher model.

One checkpoint is a flat mapping ``{canonical name: NumPy array}`` stored in one safetensors file,
with string metadata ``format="m2t"``, ``version="1"`` and ``config`` (a JSON object describing the
architecture and the training hyperparameters). Every adapter writes and reads it
(``m2t_torch``, ``m2t_keras``, ``m2t_flax``: ``to_canonical`` / ``from_canonical`` in memory,
``export_checkpoint`` / ``import_checkpoint`` on disk), so a model trained in one framework continues
in another with bit-identical arrays.

Names
-----
``step`` (int64, 0-d) is the model's training step ``k``. Every other name is
``{student|teacher}.{backbone|projector|predictor}.<module path>.<leaf>`` (the teacher has no
predictor). The heads' module paths are fixed: ``linear1``, ``bn``, ``linear2``. For the reference
backbone (:mod:`m2t_core.reference_net`) the backbone's module paths are fixed and identical in every
framework; for other backbones they follow the framework's own module paths, so a cross-framework
import needs backbones whose modules carry the same names.

Leaves and layouts
------------------
=====================  ===================================  =========================================
layer                  leaves                               layout
=====================  ===================================  =========================================
dense / linear         ``kernel``, ``bias``                 ``kernel`` is ``[in, out]``
convolution            ``kernel``, ``bias``                 ``kernel`` is ``[kh, kw, in, out]`` (HWIO)
BatchNorm              ``scale``, ``bias``, ``mean``,       ``[C]`` each
                       ``var``
momentum BatchNorm     the four above, ``step``,            ``step``/``skipped`` int64 0-d
                       ``skipped``
=====================  ===================================  =========================================

torch stores ``[out, in]`` and ``[out, in, kh, kw]``; its adapter transposes exactly. A plain BN's
``var`` is each framework's own running variance (torch keeps the unbiased estimate, Keras and Flax
the biased one); it plays no part in training, where BatchNorm normalises with the batch's moments.
A momentum BN's ``var`` is the one estimator its ``correction`` names, the same in every framework.
Counters are int64 in the file whatever integer type a framework keeps them in.

References:
    safetensors: https://github.com/huggingface/safetensors (the file container).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from m2t_core._validation import is_floating_dtype

__all__ = [
    "COUNTER_LEAVES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Checkpoint",
    "check_canonical",
    "check_matches",
    "is_counter",
    "load_checkpoint",
    "model_config",
    "read_config",
    "save_checkpoint",
]

#: Value of the ``format`` metadata entry.
FORMAT_NAME = "m2t"
#: Value of the ``version`` metadata entry this module writes and reads.
FORMAT_VERSION = "1"
#: Leaves that hold integer counters (int64, 0-d); ``step`` at the top level is the model's step.
COUNTER_LEAVES = ("step", "skipped")

_PARTS = {"student": ("backbone", "projector", "predictor"), "teacher": ("backbone", "projector")}
_SEGMENT = re.compile(r"^[A-Za-z0-9_]+$")
_MAX_LISTED = 8


class Checkpoint(NamedTuple):
    """A loaded checkpoint.

    Attributes:
        arrays: ``{canonical name: array}``.
        config: The JSON ``config`` metadata as a dict (empty when none was stored).
    """

    arrays: dict[str, np.ndarray]
    config: dict[str, Any]


def model_config(
    *,
    framework: str,
    backbone: Mapping[str, Any],
    feature_dim: int,
    hidden_dim: int,
    projection_dim: int,
    total_steps: int | None,
    base_momentum: float,
    final_momentum: float,
    alpha_start: float,
    alpha_end: float,
    correction: str,
) -> dict[str, Any]:
    """The ``config`` every adapter's ``export_checkpoint`` writes: architecture and M2T hyperparameters.

    Importing does not read it (the target model decides its own schedules); it tells a reader how
    to build a model that fits the arrays.

    Args:
        framework: Which adapter wrote the file (``"torch"``, ``"keras"``, ``"flax-nnx"``, ``"flax-linen"``).
        backbone: The backbone's description: :meth:`m2t_core.reference_net.ReferenceConfig.to_dict`
            for the reference backbone, else ``{"architecture": <class name>}``.
        feature_dim: Width of the backbone's features.
        hidden_dim: Hidden width of projector and predictor.
        projection_dim: Output width of projector and predictor.
        total_steps: ``K`` of the schedules (``None`` for constant schedules).
        base_momentum: Teacher momentum at step 0.
        final_momentum: Teacher momentum at step ``K``.
        alpha_start: Statistics history weight at step 0.
        alpha_end: Statistics history weight at step ``K``.
        correction: Variance estimator of the teacher's momentum BNs.

    Returns:
        A JSON-ready dict.
    """
    return {
        "framework": framework,
        "backbone": dict(backbone),
        "feature_dim": int(feature_dim),
        "hidden_dim": int(hidden_dim),
        "projection_dim": int(projection_dim),
        "total_steps": None if total_steps is None else int(total_steps),
        "base_momentum": float(base_momentum),
        "final_momentum": float(final_momentum),
        "alpha_start": float(alpha_start),
        "alpha_end": float(alpha_end),
        "correction": str(correction),
    }


def _safetensors_numpy() -> Any:
    try:
        from safetensors import numpy as st_numpy
    except ImportError:
        raise ImportError("m2t checkpoints need safetensors: pip install 'safetensors>=0.4'") from None
    return st_numpy


def is_counter(name: str) -> bool:
    """True when ``name`` is an integer counter: the model's ``step``, a momentum BN's ``step``/``skipped``.

    Args:
        name: A canonical name.

    Returns:
        Whether the array must be an int64 scalar.
    """
    return name == "step" or name.rsplit(".", 1)[-1] in COUNTER_LEAVES


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str):
        return f"{name!r} is not a string"
    if name == "step":
        return None
    segments = name.split(".")
    if len(segments) < 3:
        return f"{name!r} is not '{{student|teacher}}.{{part}}.<module path>.<leaf>' (or 'step')"
    network, part = segments[0], segments[1]
    if network not in _PARTS:
        return f"{name!r} starts with {network!r}, expected 'student' or 'teacher'"
    if part not in _PARTS[network]:
        return f"{name!r}: the {network} has the parts {_PARTS[network]}, not {part!r}"
    bad = [s for s in segments[2:] if not _SEGMENT.match(s)]
    if bad:
        return f"{name!r} has empty or invalid path segments {bad} (letters, digits and '_' only)"
    return None


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def check_canonical(arrays: Mapping[str, Any]) -> None:
    """Check that ``arrays`` is a well-formed canonical mapping (names, array types, counters).

    Args:
        arrays: ``{canonical name: array}``.

    Raises:
        TypeError: ``arrays`` is not a mapping, or a value is not a NumPy array.
        ValueError: a name outside the naming scheme, a counter that is not an int64 scalar, or any
            other array that is not floating; every problem is listed.
    """
    if not isinstance(arrays, Mapping):
        raise TypeError(
            f"a canonical checkpoint is a mapping of names to arrays, got {type(arrays).__name__}"
        )
    problems = [p for p in map(_name_problem, arrays) if p is not None]
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{name!r} holds a {type(value).__name__}; canonical values are NumPy arrays")
        if is_counter(name):
            if value.dtype != np.int64 or value.shape != ():
                problems.append(f"counter {name!r} must be an int64 scalar, got {value.dtype} {value.shape}")
        elif not is_floating_dtype(value.dtype):
            problems.append(f"{name!r} must be floating, got {value.dtype}")
    if problems:
        raise ValueError(f"not a valid m2t checkpoint: {'; '.join(problems)}")


def check_matches(
    arrays: Mapping[str, np.ndarray], expected: Mapping[str, Any], *, target: str = "the model"
) -> None:
    """Check that ``arrays`` has exactly the names, shapes and dtypes of ``expected``.

    Adapters call this before importing, with ``expected`` = the target model's own canonical
    arrays, so nothing is written unless everything fits.

    Args:
        arrays: The canonical arrays to import.
        expected: ``{name: array}`` (or anything with ``shape`` and ``dtype``) of the target.
        target: How the error message names the target.

    Raises:
        ValueError: names missing from ``arrays``, names ``target`` does not have, or arrays whose
            shape or dtype differs (each named with both values); all problems in one message.
    """
    check_canonical(arrays)
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing names: {_listing(missing)}")
    if unexpected:
        problems.append(f"names {target} does not have: {_listing(unexpected)}")
    shapes = [
        f"{n} has shape {tuple(arrays[n].shape)}, {target} expects {tuple(expected[n].shape)}"
        for n in sorted(set(arrays) & set(expected))
        if tuple(arrays[n].shape) != tuple(expected[n].shape)
    ]
    dtypes = [
        f"{n} has dtype {arrays[n].dtype}, {target} expects {np.dtype(expected[n].dtype)}"
        for n in sorted(set(arrays) & set(expected))
        if arrays[n].dtype != np.dtype(expected[n].dtype)
    ]
    if shapes:
        problems.append("mis-shaped: " + _listing(shapes))
    if dtypes:
        problems.append(
            "wrong dtype (cast the checkpoint or build the model in that dtype): " + _listing(dtypes)
        )
    if problems:
        raise ValueError(f"the checkpoint does not match {target}: " + "; ".join(problems))


def save_checkpoint(
    path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], *, config: Mapping[str, Any] | None = None
) -> Path:
    """Write canonical arrays (and a JSON ``config``) to one safetensors file.

    Args:
        path: File to write (its parent folder must exist); overwritten if present.
        arrays: ``{canonical name: array}``, checked by :func:`check_canonical`.
        config: JSON-serialisable description of the model (architecture, hyperparameters).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: invalid arrays, or a ``config`` that JSON cannot encode.
        ImportError: safetensors is not installed.
    """
    check_canonical(arrays)
    try:
        config_json = json.dumps(dict(config or {}), sort_keys=True)
    except TypeError as err:
        raise ValueError(f"config must be JSON-serialisable: {err}") from None
    st_numpy = _safetensors_numpy()
    metadata = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": config_json}
    target = Path(path)
    # safetensors writes raw buffers: transposed views must be made contiguous first.
    st_numpy.save_file({k: np.array(v, order="C") for k, v in arrays.items()}, str(target), metadata=metadata)
    return target


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        metadata = handle.metadata() or {}
    found = metadata.get("format")
    if found != FORMAT_NAME:
        raise ValueError(
            f"{str(path)!r} is a safetensors file but not an m2t checkpoint (metadata format={found!r}, "
            f"expected {FORMAT_NAME!r})"
        )
    version = metadata.get("version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} is an m2t checkpoint of version {version!r}; this package reads version "
            f"{FORMAT_VERSION!r}"
        )
    return metadata


def _parse_config(path: Path, metadata: Mapping[str, str]) -> dict[str, Any]:
    try:
        config = json.loads(metadata.get("config", "{}"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r}: the config metadata is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{str(path)!r}: the config metadata must be a JSON object, got {type(config).__name__}"
        )
    return config


def _existing(path: str | os.PathLike[str]) -> Path:
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(source)!r}")
    _safetensors_numpy()
    return source


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config`` of a checkpoint file, without reading its arrays.

    Args:
        path: A file written by :func:`save_checkpoint` (or any adapter's ``export_checkpoint``).

    Returns:
        The config dict.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an m2t checkpoint, or an unsupported version.
        ImportError: safetensors is not installed.
    """
    source = _existing(path)
    return _parse_config(source, _read_metadata(source))


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint file: its canonical arrays and its config.

    Args:
        path: A file written by :func:`save_checkpoint` (or any adapter's ``export_checkpoint``).

    Returns:
        A :class:`Checkpoint` ``(arrays, config)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an m2t checkpoint (wrong ``format``), an unsupported ``version``, or arrays
            that break the naming scheme.
        ImportError: safetensors is not installed.
    """
    source = _existing(path)
    metadata = _read_metadata(source)
    config = _parse_config(source, metadata)
    arrays = dict(_safetensors_numpy().load_file(str(source)))
    check_canonical(arrays)
    return Checkpoint(arrays, config)
