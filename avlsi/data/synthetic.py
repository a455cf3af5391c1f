"""Small generated data of any shape: one random prototype per class plus gaussian noise.

Images (3-D shapes) get blocky prototypes, a coarse random grid scaled up, so that the classes
differ over whole regions and survive convolution and pooling; other shapes get independent
random values. Values are 0.1 or 0.9 (uniform when there are too few of them). Everything
comes from one numpy Generator seeded with `seed`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from avlsi.data import Dataset, apply_limits
from avlsi.errors import UserError

COARSE = 7  # cells per side of an image prototype's grid
BINARY_MIN_CELLS = 16  # fewer cells: two-level prototypes of 10 classes could coincide


def _shape(cfg: Any) -> tuple[int, ...]:
    """`dataset.shape` as a tuple of positive ints, or a UserError."""
    raw = getattr(cfg, "shape", None)
    try:
        shape = tuple(int(d) for d in raw)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise UserError(
            f"dataset.shape={raw} must be a list of positive sizes, e.g. [28,28,1] or [16]"
        )
    return shape


def _positive(cfg: Any, key: str, minimum: int) -> int:
    """An integer setting of at least `minimum`, or a UserError."""
    value = getattr(cfg, key, None)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UserError(f"dataset.{key}={value} must be an integer of at least {minimum}")
    return value


def _levels(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random cell values: 0.1 or 0.9 (high contrast) when there are enough cells for the
    classes to differ, else uniform in [0, 1]."""
    cells = int(np.prod(shape[1:]))
    if cells >= BINARY_MIN_CELLS:
        return (0.1 + 0.8 * rng.integers(0, 2, shape)).astype(np.float32)
    return rng.random(shape, dtype=np.float32)


def prototypes(rng: np.random.Generator, num_classes: int, shape: tuple[int, ...]) -> np.ndarray:
    """(num_classes, *shape) float32 patterns in [0, 1]: blocky for (H, W, C)."""
    if len(shape) != 3:
        return _levels(rng, (num_classes, *shape))
    height, width, channels = shape
    gh, gw = min(height, COARSE), min(width, COARSE)
    coarse = _levels(rng, (num_classes, gh, gw, channels))
    rows = np.arange(height) * gh // height
    cols = np.arange(width) * gw // width
    return coarse[:, rows][:, :, cols]


def sample(
    rng: np.random.Generator, protos: np.ndarray, size: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """`size` noisy copies of the prototypes, classes balanced and shuffled."""
    num_classes = len(protos)
    y = rng.permutation(np.arange(size) % num_classes).astype(np.int64)
    x = protos[y] + np.float32(noise) * rng.standard_normal((size, *protos.shape[1:]), np.float32)
    return np.clip(x, 0.0, 1.0).astype(np.float32), y


def check_size(shape: tuple[int, ...], examples: int) -> None:
    """Refuse, before drawing anything, sizes whose arrays cannot fit in memory (drawing one
    set holds about three float32 copies of it: noise, prototypes, clipped result)."""
    from avlsi.memory import available_bytes, describe_bytes

    needed = 3 * 4 * examples * math.prod(shape)
    available = available_bytes()
    if available is not None and needed > available:
        raise UserError(
            f"dataset.shape={list(shape)} with {examples:,} examples needs about "
            f"{describe_bytes(needed)} of memory, more than the {describe_bytes(available)} "
            "available; use a smaller dataset.shape, train_size or test_size"
        )


def load(cfg: Any, seed: int) -> Dataset:
    """Train and test sets drawn around the same class prototypes; deterministic in `seed`."""
    shape = _shape(cfg)
    num_classes = _positive(cfg, "num_classes", 2)
    train_size = _positive(cfg, "train_size", 1)
    test_size = _positive(cfg, "test_size", 1)
    noise = float(getattr(cfg, "noise", 0.0) or 0.0)
    if noise < 0:
        raise UserError(f"dataset.noise={noise} must be at least 0")
    check_size(shape, train_size + test_size)
    rng = np.random.default_rng(seed)
    protos = prototypes(rng, num_classes, shape)
    x_train, y_train = sample(rng, protos, train_size, noise)
    x_test, y_test = sample(rng, protos, test_size, noise)
    data = Dataset(
        name=str(getattr(cfg, "name", "synthetic")),
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
    )
    return apply_limits(data, getattr(cfg, "limit", None), getattr(cfg, "test_limit", None))
