"""Momentum² Teacher for Flax NNX: the momentum BatchNorm layer, the model and its training step.

* :class:`MomentumBatchNorm` — the teacher's normalisation, a drop-in for ``nnx.BatchNorm``;
* :func:`convert_momentum_bn` — replace every ``nnx.BatchNorm`` of a model with it;
* :class:`ReferenceNet` — the project's reference backbone, identical in every framework;
* :class:`M2Teacher` — student (backbone → projector → predictor) and momentum-BN teacher;
* :func:`train_step` (``nnx.jit``) and :func:`make_train_step` (bound, faster per call) — one
  training step in the normative order; :func:`train_step_body` is the uncompiled step for your own
  transforms; :func:`student_loss` the student's half of it.

Multi-device training is in :mod:`m2t_flax.parallel`, checkpoints in :mod:`m2t_flax.checkpoint`.
"""

from m2t_flax.models import ReferenceNet
from m2t_flax.nnx_layers import MomentumBatchNorm, convert_momentum_bn
from m2t_flax.nnx_teacher import M2Teacher, MLPHead, Student, Teacher
from m2t_flax.nnx_train import make_train_step, student_loss, train_step, train_step_body

__all__ = [
    "M2Teacher",
    "MLPHead",
    "MomentumBatchNorm",
    "ReferenceNet",
    "Student",
    "Teacher",
    "convert_momentum_bn",
    "make_train_step",
    "student_loss",
    "train_step",
    "train_step_body",
]
