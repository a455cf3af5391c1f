"""Datasets: every loader returns a `Dataset` of float32 images in [0, 1] and int labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avlsi.errors import UserError


@dataclass
class Dataset:
    """Train and test arrays: x is (N, H, W, C) float32 in [0, 1], y is (N,) int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def apply_limits(data: Dataset, limit: int | None, test_limit: int | None) -> Dataset:
    """Keep at most `limit` training and `test_limit` test examples (the first ones);
    an empty training or test set is refused here, before any training."""
    if limit is not None:
        data.x_train, data.y_train = data.x_train[:limit], data.y_train[:limit]
    if test_limit is not None:
        data.x_test, data.y_test = data.x_test[:test_limit], data.y_test[:test_limit]
    for split, labels, knob in (
        ("training", data.y_train, limit),
        ("test", data.y_test, test_limit),
    ):
        if len(labels) == 0:
            cause = f" (with its limit of {knob})" if knob is not None else ""
            raise UserError(
                f"dataset={data.name} has an empty {split} set{cause}: pass a data file "
                "with examples in both sets"
            )
    return data
