"""m2t_torch — Momentum² Teacher for PyTorch.

* :class:`MomentumBatchNorm` (+ :class:`MomentumBatchNorm1d`, :class:`MomentumBatchNorm2d`): momentum
  statistics with per-view moments and a lazy commit, in-place buffers, compile- and AMP-friendly;
* :func:`convert_momentum_bn`: swap a model's BatchNorms for momentum BN;
* :func:`ema_update_`: the fused in-place teacher EMA;
* :class:`M2Teacher`: the whole method around your backbone — ``loss = model(view1, view2)``;
* :func:`sync_momentum_stats`: keep statistics identical across processes (one collective);
* :class:`ReferenceNet`: the project's reference backbone, identical in every framework;
* :func:`export_checkpoint` / :func:`import_checkpoint` (and in memory :func:`to_canonical` /
  :func:`from_canonical`): the framework-neutral checkpoint format shared with Keras and Flax;
* :mod:`m2t_torch.functional`: the core's functional API (:mod:`m2t_core`) on tensors.

Conventions: ``alpha`` weights the **stored** statistics (torch's BN ``momentum`` weights the current
batch: ``alpha = 1 − momentum``); the teacher momentum weights the **old teacher**.

References:
    Li, Liu, Sun. *Momentum² Teacher: Momentum Teacher with Momentum Statistics for Self-Supervised
    Learning.* arXiv:2101.07525, 2021.
"""

from m2t_core.stats import MomentumStats
from m2t_torch import functional
from m2t_torch.batchnorm import MomentumBatchNorm, MomentumBatchNorm1d, MomentumBatchNorm2d
from m2t_torch.convert import convert_momentum_bn
from m2t_torch.distributed import resolve_sync_stats, sync_momentum_stats
from m2t_torch.ema import ema_update_
from m2t_torch.interchange import (
    checkpoint_config,
    export_checkpoint,
    from_canonical,
    import_checkpoint,
    to_canonical,
)
from m2t_torch.models import ReferenceNet
from m2t_torch.networks import MLPHead, StudentNetwork, TeacherNetwork
from m2t_torch.schedules import TorchCosineSchedule
from m2t_torch.teacher import M2Teacher

__version__ = "0.1.0"

__all__ = [
    "M2Teacher",
    "MLPHead",
    "MomentumBatchNorm",
    "MomentumBatchNorm1d",
    "MomentumBatchNorm2d",
    "MomentumStats",
    "ReferenceNet",
    "StudentNetwork",
    "TeacherNetwork",
    "TorchCosineSchedule",
    "checkpoint_config",
    "convert_momentum_bn",
    "ema_update_",
    "export_checkpoint",
    "from_canonical",
    "functional",
    "import_checkpoint",
    "resolve_sync_stats",
    "sync_momentum_stats",
    "to_canonical",
]
