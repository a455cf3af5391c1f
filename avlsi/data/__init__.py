"""Datasets: every loader returns a `Dataset` of float32 images in [0, 1] and int labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avlsi.errors import UserError

# The validation split is drawn with this fixed seed: runs with other `seed`s vary the
# initialisation and the order of training, never which images are held out.
SPLIT_SEED = 20171127


@dataclass
class Dataset:
    """Train, validation and test arrays: x is (N, H, W, C) float32 in [0, 1], y is (N,) int64.

    A loader may leave the validation set empty (None): `hold_out_validation` then takes it
    from the training set.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def split_sizes(self) -> dict[str, int]:
        val = 0 if self.y_val is None else len(self.y_val)
        return {"train": len(self.y_train), "validation": val, "test": len(self.y_test)}


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


def hold_out_validation(data: Dataset, fraction: float) -> Dataset:
    """Move `fraction` of the training set (at least one example) to the validation set.

    The split depends only on the training set's size (SPLIT_SEED), not on the run's seed.
    A dataset that already has a validation set, or fraction 0, is returned unchanged.
    """
    if data.y_val is not None or fraction <= 0:
        return data
    n = len(data.y_train)
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise UserError(
            f"dataset.val_fraction={fraction} of {n} training examples leaves none to train on; "
            "use more data (dataset.limit) or a smaller dataset.val_fraction"
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    data.x_val, data.y_val = data.x_train[val], data.y_train[val]
    data.x_train, data.y_train = data.x_train[train], data.y_train[train]
    return data
