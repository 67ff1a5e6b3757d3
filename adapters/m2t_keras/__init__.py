"""m2t_keras — Momentum² Teacher for Keras 3, on every backend (TensorFlow, JAX, PyTorch).

* :class:`MomentumBatchNormalization` — the teacher's BatchNorm with momentum statistics and
  per-view moments, written with ``keras.ops`` only;
* :func:`convert_momentum_bn` — clone a Functional/Sequential model with every BatchNormalization
  replaced (weights and moving statistics copied);
* :class:`M2Teacher` — a ``keras.Model`` trained by ``compile(optimizer=...)`` + ``fit`` on view
  pairs, with the teacher EMA, momentum statistics and the symmetric BYOL loss inside;
* :mod:`m2t_keras.ops` — the functional API of :mod:`m2t_core` on backend tensors;
* :class:`SymmetricRegressionLoss`, :class:`CurrentValue`, :func:`projection_head` — building blocks;
* :func:`ReferenceNet` — the project's reference backbone, identical in every framework;
* :func:`export_checkpoint` / :func:`import_checkpoint` (in memory :func:`to_canonical` /
  :func:`from_canonical`) — the framework-neutral checkpoint format shared with PyTorch and Flax;
* :class:`CoupledSGD` — SGD with PyTorch's (coupled) weight decay.

Conventions (shared with every package of the project): ``alpha`` is the weight on the stored
statistics (Keras BatchNormalization's ``momentum``), scheduled by a cosine from ``alpha_start`` to
``alpha_end``; the teacher momentum ``m`` is the weight on the old teacher (BYOL's τ).

This package imports ``keras`` only, never a backend framework directly.
"""

from m2t_keras import ops
from m2t_keras.convert import convert_momentum_bn, parameter_pairs
from m2t_keras.interchange import (
    checkpoint_config,
    export_checkpoint,
    from_canonical,
    import_checkpoint,
    to_canonical,
)
from m2t_keras.layers import MomentumBatchNormalization
from m2t_keras.losses import SymmetricRegressionLoss
from m2t_keras.metrics import CurrentValue
from m2t_keras.models import ReferenceNet
from m2t_keras.optimizers import CoupledSGD
from m2t_keras.teacher import M2Teacher, projection_head

__version__ = "0.1.0"

__all__ = [
    "CoupledSGD",
    "CurrentValue",
    "M2Teacher",
    "MomentumBatchNormalization",
    "ReferenceNet",
    "SymmetricRegressionLoss",
    "checkpoint_config",
    "convert_momentum_bn",
    "export_checkpoint",
    "from_canonical",
    "import_checkpoint",
    "ops",
    "parameter_pairs",
    "projection_head",
    "to_canonical",
]
