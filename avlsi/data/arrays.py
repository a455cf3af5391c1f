"""Image arrays in keras layout (x_train, y_train, x_test, y_test, optional x_val, y_val),
checked and turned into a `Dataset`; shared by the npz and keras loaders.

Checks run in two rounds, each error one line naming the array: `check_layout` needs only
dtypes and shapes (an npz file's headers: nothing is read yet), `to_dataset` the values.
- x: uint8 (scaled to [0, 1]) or float (kept, as float32), no nan / inf; (N, H, W, C)
  images, (N, H, W) images (a channel axis is added; `dataset.add_channel=false` keeps
  (N, T, C) sequences for Conv1D), or (N, D) vectors (dense models);
  train, validation and test of the same example shape.
- y: integer class indices 0..K-1, (N,) or (N, 1); floats that are whole numbers pass;
  one-hot rows (N, K) (exactly one 1 per row) are turned into indices, K classes.
  K is the largest label + 1 (or the one-hot width), at least 2.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from avlsi.data import Dataset, apply_limits
from avlsi.errors import UserError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("x_val", "y_val")
SPLITS = ("train", "val", "test")


class Spec(Protocol):
    """What the layout check needs of an array: a numpy array or an npz member's header."""

    shape: tuple[int, ...]
    dtype: np.dtype


def _label_shape_ok(shape: tuple[int, ...]) -> bool:
    return len(shape) == 1 or (len(shape) == 2 and shape[1] >= 1)


def check_layout(specs: dict[str, Spec], source: str) -> list[str]:
    """The splits present (train, test, and val if both its arrays are); a UserError naming
    the array for anything missing or of the wrong dtype or shape."""
    missing = [key for key in REQUIRED if key not in specs]
    if missing:
        raise UserError(
            f"{source} lacks {', '.join(missing)}: it needs the arrays {', '.join(REQUIRED)} "
            "(optionally x_val, y_val)"
        )
    val = [key for key in OPTIONAL if key in specs]
    if len(val) == 1:
        other = "y_val" if val[0] == "x_val" else "x_val"
        raise UserError(f"{source} has {val[0]} but no {other}: give both or neither")
    splits = [s for s in SPLITS if f"x_{s}" in specs]
    for split in splits:
        x, y = specs[f"x_{split}"], specs[f"y_{split}"]
        for key, spec in ((f"x_{split}", x), (f"y_{split}", y)):
            if spec.dtype.hasobject or spec.dtype.fields is not None:
                raise UserError(
                    f"{source}: {key} holds Python objects ({spec.dtype}), which AVLSI does not "
                    "unpickle; save plain numeric arrays (np.savez(..., x_train=np.asarray(x, "
                    "'uint8'), ...))"
                )
        if x.dtype != np.uint8 and x.dtype.kind != "f":
            raise UserError(
                f"{source}: x_{split} is {x.dtype}; pass uint8 images (0..255, scaled to [0, 1]) "
                "or floats"
            )
        if len(x.shape) < 2:
            raise UserError(
                f"{source}: x_{split} has shape {tuple(x.shape)}; pass (N, H, W, C) images, "
                "(N, H, W) grey images or (N, D) vectors"
            )
        if not _label_shape_ok(tuple(y.shape)) or y.dtype.kind not in "uif":
            raise UserError(
                f"{source}: y_{split} is {y.dtype} {tuple(y.shape)}; pass integer class indices "
                "(N,) or one-hot rows (N, K)"
            )
        if y.shape[0] != x.shape[0]:
            raise UserError(
                f"{source}: x_{split} has {x.shape[0]} examples but y_{split} has {y.shape[0]} "
                "labels; they must match"
            )
    first = tuple(specs["x_train"].shape[1:])
    for split in splits[1:]:
        shape = tuple(specs[f"x_{split}"].shape[1:])
        if shape != first:
            raise UserError(
                f"{source}: x_{split} holds examples of shape {shape} but x_train {first}; "
                "every split needs the same example shape"
            )
    widths = {tuple(specs[f"y_{s}"].shape[1:]) for s in splits} - {(), (1,)}
    if len(widths) > 1:
        raise UserError(f"{source}: the one-hot labels' widths differ between splits ({widths})")
    return splits


def float32_bytes(specs: dict[str, Spec], rows: dict[str, int]) -> int:
    """Memory of the float32 images of `rows[split]` examples per split."""
    return sum(
        4 * rows[s] * math.prod(specs[f"x_{s}"].shape[1:]) for s in rows if f"x_{s}" in specs
    )


def check_memory(specs: dict[str, Spec], rows: dict[str, int], source: str) -> None:
    """Refuse, before reading, images that cannot fit in memory as float32."""
    from avlsi.memory import available_bytes, describe_bytes

    needed = float32_bytes(specs, rows)
    available = available_bytes()
    if available is not None and needed > available:
        raise UserError(
            f"{source}: its images take {describe_bytes(needed)} as float32, more than the "
            f"{describe_bytes(available)} of memory available; use dataset.limit / "
            "dataset.test_limit, or dataset=image_folder, which streams images from files"
        )


def labels(y: np.ndarray, key: str, source: str) -> np.ndarray:
    """(N,) int64 class indices from integer, whole-float or one-hot labels."""
    if y.ndim == 2 and y.shape[1] > 1:
        ones = y == 1
        if not (((y == 0) | ones).all() and (ones.sum(axis=1) == 1).all()):
            raise UserError(
                f"{source}: {key} is 2-D {y.shape} but not one-hot (each row exactly one 1, the "
                "rest 0); pass class indices (N,) or one-hot rows"
            )
        return ones.argmax(axis=1).astype(np.int64)
    y = y.reshape(len(y))
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise UserError(
                f"{source}: {key} has non-integer labels (e.g. {y[bad][0].item():g} at index "
                f"{int(np.flatnonzero(bad)[0])}); labels are class indices 0..K-1"
            )
    if len(y) and y.min() < 0:
        index = int(np.argmin(y))
        raise UserError(
            f"{source}: {key} has negative labels (e.g. {y[index].item()} at index {index}); "
            "labels are class indices 0..K-1"
        )
    return y.astype(np.int64)


def images(x: np.ndarray, key: str, source: str, add_channel: bool = True) -> np.ndarray:
    """float32 images in [0, 1] (uint8 scaled, floats kept) with a channel axis for 3-D
    (unless not `add_channel`: (N, T, C) sequences)."""
    if x.dtype == np.uint8:
        out = x.astype(np.float32) / np.float32(255.0)
    else:
        out = x.astype(np.float32, copy=False)
        finite = np.isfinite(out)
        if not finite.all():
            index = np.unravel_index(int(np.argmin(finite)), out.shape)
            value = out[index]
            raise UserError(
                f"{source}: {key} holds {value} at {tuple(int(i) for i in index)}; "
                "remove or replace the nan / inf values"
            )
    return out[..., np.newaxis] if out.ndim == 3 and add_channel else out


def count_classes(arrays: dict[str, np.ndarray], source: str) -> int:
    """K: the one-hot width, or the largest label + 1 over every split; at least 2."""
    y_train = arrays["y_train"]
    if y_train.ndim == 2 and y_train.shape[1] > 1:
        count = int(y_train.shape[1])
    else:
        found = [
            labels(arrays[k], k, source) for k in ("y_train", "y_test", "y_val") if k in arrays
        ]
        count = 1 + max((int(y.max()) for y in found if len(y)), default=0)
    if count < 2:
        raise UserError(f"{source}: the labels name {count} class; a classifier needs at least 2")
    return count


def to_dataset(
    arrays: dict[str, np.ndarray], name: str, source: str, cfg: Any, num_classes: int | None = None
) -> Dataset:
    """A Dataset from keras-layout arrays: checked, limited (before any conversion), scaled.

    The number of classes comes from all the labels given (before `dataset.limit` /
    `dataset.test_limit`: a limit never changes the model's outputs), unless `num_classes`
    is known (keras' datasets)."""
    splits = check_layout(arrays, source)
    ys = {s: labels(arrays[f"y_{s}"], f"y_{s}", source) for s in splits}
    if num_classes is None:
        num_classes = count_classes(arrays, source)
    limit, test_limit = getattr(cfg, "limit", None), getattr(cfg, "test_limit", None)
    for split, keep in (("train", limit), ("test", test_limit)):
        if keep is not None:
            arrays[f"x_{split}"], ys[split] = arrays[f"x_{split}"][:keep], ys[split][:keep]
    add_channel = bool(getattr(cfg, "add_channel", True))
    xs = {s: images(arrays[f"x_{s}"], f"x_{s}", source, add_channel) for s in splits}
    data = Dataset(
        name=name,
        x_train=xs["train"],
        y_train=ys["train"],
        x_test=xs["test"],
        y_test=ys["test"],
        num_classes=num_classes,
        x_val=xs.get("val"),
        y_val=ys.get("val"),
    )
    return apply_limits(data, limit, test_limit)
