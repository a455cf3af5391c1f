"""Datasets: every loader returns a `Dataset` of float32 images in [0, 1] and int labels.

A `Dataset` holds its images either as arrays (MNIST, FER2013, synthetic, npz, keras) or, for
data read from files as it streams (`image_folder`), as arrays of file paths plus the
`reader` that decodes them. Either way the labels are int64 arrays, so limits, the validation
hold-out and sizes work alike; code that needs images asks the dataset:

- `data.keras_inputs(split, batch_size, shuffle=...)`: keyword arguments for `model.fit` /
  `model.evaluate` (the arrays themselves, exactly as before; or a `tf.data.Dataset` that
  decodes files batch by batch, so data larger than memory trains);
- `data.batches(split, batch_size, shuffle=..., seed=...)`: always a `tf.data.Dataset` of
  (images, labels) batches;
- `data.sample(n, seed)`: `n` training images and labels as arrays, the same for a seed (the
  criteria's samples; a streamed dataset decodes only those files);
- `data.arrays(split)`: (x, y) as held: images, or file paths when `data.streamed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from avlsi.errors import UserError

if TYPE_CHECKING:  # TensorFlow is imported only where a tf.data pipeline is built
    import tensorflow as tf

# The validation split is drawn with this fixed seed: runs with other `seed`s vary the
# initialisation and the order of training, never which images are held out.
SPLIT_SEED = 20171127
SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """Train, validation and test sets: x is (N, ...) float32 in [0, 1] (or, when `reader` is
    set, (N,) file paths that it decodes to such images), y is (N,) int64.

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
    reader: Any = None  # set: x_* are file paths, decoded by reader as they stream
    class_names: list[str] | None = None

    @property
    def streamed(self) -> bool:
        return self.reader is not None

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.streamed:
            return tuple(self.reader.shape)
        return tuple(self.x_train.shape[1:])

    def split_sizes(self) -> dict[str, int]:
        val = 0 if self.y_val is None else len(self.y_val)
        return {"train": len(self.y_train), "validation": val, "test": len(self.y_test)}

    def arrays(self, split: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(x, y) of `split` (train, val, test) as held: images, or file paths if streamed."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        return getattr(self, f"x_{split}"), getattr(self, f"y_{split}")

    def size(self, split: str) -> int:
        y = self.arrays(split)[1]
        return 0 if y is None else len(y)

    def batches(
        self, split: str, batch_size: int, *, shuffle: bool = False, seed: int | None = None
    ) -> tf.data.Dataset:
        """(images, labels) batches of `split` as a tf.data pipeline with a known length.

        Shuffling reshuffles every epoch; `seed=None` takes TensorFlow's global seed
        (`tf.keras.utils.set_random_seed`). A streamed dataset shuffles its file paths
        (cheap, whatever the images' size) and decodes each batch in parallel, in order.
        Arrays are copied into the pipeline: fit / evaluate take them directly instead
        (`keras_inputs`), as fast as before.
        """
        import tensorflow as tf

        x, y = self.arrays(split)
        if y is None:
            raise ValueError(f"dataset {self.name} has no {split} set")
        pairs = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            pairs = pairs.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
        if self.streamed:
            decode = self.reader.decode
            pairs = pairs.map(
                lambda path, label: (decode(path), label),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        return pairs.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def keras_inputs(self, split: str, batch_size: int, *, shuffle: bool = False) -> dict:
        """Keyword arguments for `model.fit` / `model.evaluate` on `split`: the arrays with
        `batch_size` (and `shuffle`) as Keras takes them, or a streamed tf.data.Dataset."""
        if self.streamed:
            return {"x": self.batches(split, batch_size, shuffle=shuffle)}
        x, y = self.arrays(split)
        inputs = {"x": x, "y": y, "batch_size": batch_size}
        return {**inputs, "shuffle": True} if shuffle else inputs

    def sample(self, n: int, seed: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """min(n, size) images and labels of `split`, drawn without replacement with `seed`
        and kept in dataset order: the same for the same seed, however the data is held."""
        x, y = self.arrays(split)
        count = min(n, len(y))
        pick = np.sort(np.random.default_rng(seed).choice(len(y), count, replace=False))
        if self.streamed:
            return self.reader.load(x[pick]), y[pick]
        return x[pick], y[pick]

    def read_error(self, exc: BaseException, split: str) -> BaseException:
        """What to raise for an error met while streaming `split`: a one-line UserError naming
        the first file that does not decode, or `exc` itself if none is found."""
        if not self.streamed:
            return exc
        return self.reader.explain(self.arrays(split)[0]) or exc


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
