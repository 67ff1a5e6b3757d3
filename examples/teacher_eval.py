"""kNN accuracy and the linear probe of a teacher backbone, for any framework (no framework imports).

Each example passes an ``encode`` function — the **teacher** backbone in evaluation mode, NumPy in,
array out — and the data set; features are taken on the un-augmented, normalised images
(:func:`m2t_core.augment.eval_view`), as DESIGN §2 prescribes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from m2t_core.augment import AugmentConfig, eval_view
from m2t_core.datasets import Dataset
from m2t_core.evaluation import extract_features, knn_accuracy, linear_probe

__all__ = ["TeacherFeatures", "teacher_features"]


class TeacherFeatures:
    """Teacher features of a data set's training and test images, and the two evaluations on them.

    Args:
        train: ``[N, D]`` training features.
        test: ``[M, D]`` test features.
        data: The data set (for labels and the class count).
    """

    def __init__(self, train: np.ndarray, test: np.ndarray, data: Dataset) -> None:
        """Hold the features (arguments documented on the class)."""
        self.train = train
        self.test = test
        self.data = data

    def knn(self, k: int = 20, temperature: float = 0.07) -> float:
        """Weighted kNN top-1 accuracy on the test set, training features as the memory bank.

        Args:
            k: Neighbours (capped at the number of training images).
            temperature: Weight temperature.

        Returns:
            Accuracy in [0, 1]; 0 when the features are not finite (a diverged model).
        """
        if not (np.isfinite(self.train).all() and np.isfinite(self.test).all()):
            return 0.0
        return knn_accuracy(
            self.train,
            self.data.train_labels,
            self.test,
            self.data.test_labels,
            k=min(k, self.train.shape[0]),
            temperature=temperature,
            num_classes=self.data.num_classes,
        )

    def probe(self) -> dict[str, float]:
        """Linear probe (logistic regression on standardised frozen features).

        Returns:
            ``{"accuracy": test accuracy, "train_accuracy": training accuracy}``.
        """
        d = self.data
        result = linear_probe(self.train, d.train_labels, self.test, d.test_labels, num_classes=d.num_classes)
        return {"accuracy": result.accuracy, "train_accuracy": result.train_accuracy}


def teacher_features(
    encode: Callable[[np.ndarray], Any], data: Dataset, config: AugmentConfig, *, batch_size: int = 256
) -> TeacherFeatures:
    """Run ``encode`` over the training and test images (normalised, not augmented).

    Args:
        encode: The teacher backbone in evaluation mode: ``[B, H, W, C]`` float32 NumPy in, ``[B, D]`` out.
        data: The data set.
        config: The augmentation recipe whose normalisation the training views used.
        batch_size: Images per call of ``encode``.

    Returns:
        The :class:`TeacherFeatures`.
    """
    train = extract_features(encode, eval_view(data.train_images, config), batch_size=batch_size)
    test = extract_features(encode, eval_view(data.test_images, config), batch_size=batch_size)
    return TeacherFeatures(train, test, data)
