"""`dataset=image_folder dataset.path=DIR`: images in one sub-folder per class, streamed.

The layout of keras' `image_dataset_from_directory`: `DIR/<class>/**/*.png|jpg|jpeg|bmp|gif`,
class names sorted (label i is the i-th name), sub-folders of a class folder included, hidden
folders skipped. Where the test set comes from, first found wins:
  1. `dataset.test_path=TESTDIR`: another folder of the same classes;
  2. `DIR/train/` and `DIR/test/` (and optionally `DIR/val/`, then used as the validation set):
     each a folder of class folders;
  3. `dataset.test_fraction` of DIR's images, held out with a fixed seed.
Each split's file list is shuffled once with a fixed seed (so `dataset.limit` keeps a sample of
every class, the same whatever the run's `seed`). Images are decoded, converted to
`dataset.color_mode` (grayscale, rgb, rgba) and resized (bilinear, as keras does) to
`dataset.image_size` [H, W] (default: the first training image's size) batch by batch in a
tf.data pipeline: only the file paths are held in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avlsi.data import SPLIT_SEED, Dataset, apply_limits
from avlsi.data.files import kind_of
from avlsi.errors import UserError, clip

EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # what keras' loader reads
CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}
LOAD_BATCH = 256


@dataclass(frozen=True)
class ImageReader:
    """Decodes image files to float32 (H, W, C) arrays in [0, 1]."""

    image_size: tuple[int, int]
    channels: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self.image_size, self.channels)

    def decode(self, path):
        """One file path (a string tensor) -> its image tensor (inside tf.data)."""
        import tensorflow as tf

        raw = tf.io.read_file(path)
        image = tf.io.decode_image(raw, channels=self.channels, expand_animations=False)
        image = tf.image.resize(image, self.image_size, method="bilinear")
        image.set_shape(self.shape)
        return image / 255.0

    def load(self, paths: np.ndarray) -> np.ndarray:
        """The images of `paths` as one (N, H, W, C) float32 array."""
        import tensorflow as tf

        if not len(paths):
            return np.zeros((0, *self.shape), np.float32)
        stream = tf.data.Dataset.from_tensor_slices(paths).map(
            self.decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        try:
            return np.concatenate([b.numpy() for b in stream.batch(LOAD_BATCH)])
        except tf.errors.OpError as exc:
            raise self.explain(paths) or exc from None

    def explain(self, paths: np.ndarray) -> UserError | None:
        """After a decoding error: the first file of `paths` that does not decode, as a
        one-line UserError (None if every file decodes: the error came from elsewhere)."""
        import tensorflow as tf

        for path in paths:
            try:
                raw = tf.io.read_file(path)
                tf.io.decode_image(raw, channels=self.channels, expand_animations=False)
            except tf.errors.OpError as exc:
                text = (exc.message or type(exc).__name__).strip().splitlines()
                cause = text[0] if text else type(exc).__name__
                return UserError(
                    f"{clip(str(path))} is not a readable image ({clip(cause)}); "
                    "replace or remove it"
                )
        return None


def _image_size(cfg: Any) -> tuple[int, int] | None:
    raw = getattr(cfg, "image_size", None)
    if raw is None:
        return None
    try:
        size = tuple(int(d) for d in raw)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise UserError(f"dataset.image_size={raw} must be [height, width], e.g. [32,32]")
    return size  # type: ignore[return-value]


def _channels(cfg: Any) -> int:
    mode = str(getattr(cfg, "color_mode", "rgb"))
    if mode not in CHANNELS:
        raise UserError(f"dataset.color_mode={clip(mode)} must be one of {', '.join(CHANNELS)}")
    return CHANNELS[mode]


def check_settings(cfg: Any) -> None:
    """image_size, color_mode and test_fraction, before anything is listed or loaded."""
    _image_size(cfg)
    _channels(cfg)
    fraction = float(getattr(cfg, "test_fraction", 0.2))
    if not 0 < fraction < 1:
        raise UserError(f"dataset.test_fraction={fraction} must be in (0, 1), e.g. 0.2")


def _folder(path: Path, what: str) -> Path:
    kind = kind_of(path, what)
    if kind != "folder":
        shown = "does not exist" if kind == "missing" else f"is {kind}, not a folder"
        raise UserError(
            f"{what}={clip(path)} {shown}: pass a folder with one sub-folder of images per class"
        )
    return path


def class_names(folder: Path, what: str) -> list[str]:
    """The sorted, non-hidden sub-folders of `folder`."""
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise UserError(
            f"{what}={clip(folder)} has no class sub-folders: put each class's images in "
            f"{clip(folder)}/<class name>/"
        )
    return names


def list_images(folder: Path, classes: list[str], what: str, every_class: bool) -> tuple:
    """(paths, labels) of the images under `folder/<class>/`, label = index in `classes`;
    shuffled with the fixed SPLIT_SEED. A class folder missing from `classes` is refused;
    with `every_class`, so is a class without images."""
    found = class_names(folder, what)
    extra = [name for name in found if name not in classes]
    if extra:
        raise UserError(
            f"{what}={clip(folder)} has the class folder {clip(extra[0])}, which the training "
            "folder lacks; the test classes must be training classes"
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = []
        for root, dirs, names in os.walk(folder / name):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(root, n) for n in names if n.lower().endswith(EXTENSIONS)]
        if not files and every_class:
            raise UserError(
                f"{what}={clip(folder)}: the class folder {clip(name)} has no images "
                f"({' '.join(EXTENSIONS)}); add some or remove the folder"
            )
        paths += sorted(files)
        labels += [label] * len(files)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(paths))
    return np.asarray(paths, dtype=str)[order], np.asarray(labels, dtype=np.int64)[order]


def _split_off(paths: np.ndarray, labels: np.ndarray, fraction: float) -> tuple:
    """The last `fraction` (at least one) of an already shuffled list as the test set."""
    if not 0 < fraction < 1:
        raise UserError(f"dataset.test_fraction={fraction} must be in (0, 1), e.g. 0.2")
    n_test = max(1, round(len(paths) * fraction))
    if n_test >= len(paths):
        raise UserError(
            f"dataset.test_fraction={fraction} of {len(paths)} images leaves none to train on; "
            "add images or pass dataset.test_path"
        )
    cut = len(paths) - n_test
    return (paths[:cut], labels[:cut]), (paths[cut:], labels[cut:])


def list_splits(cfg: Any) -> tuple[list[str], dict[str, tuple]]:
    """Class names and {split: (paths, labels)} by the rules of this module's docstring."""
    root = _folder(Path(str(cfg.path)).expanduser(), "dataset.path")
    test_path = getattr(cfg, "test_path", None)
    if test_path:
        test_dir = _folder(Path(str(test_path)).expanduser(), "dataset.test_path")
        classes = class_names(root, "dataset.path")
        return classes, {
            "train": list_images(root, classes, "dataset.path", True),
            "test": list_images(test_dir, classes, "dataset.test_path", False),
        }
    if kind_of(root / "train") == "folder":
        if kind_of(root / "test") != "folder":
            raise UserError(
                f"dataset.path={clip(root)} has train/ but no test/: add {clip(root)}/test/ "
                "with the same class folders, or pass dataset.test_path"
            )
        what = f"dataset.path={clip(root)}"
        classes = class_names(root / "train", "dataset.path")
        splits = {"train": list_images(root / "train", classes, f"{what}: train/", True)}
        for split in ("val", "test"):
            if kind_of(root / split) == "folder":
                splits[split] = list_images(root / split, classes, f"{what}: {split}/", False)
        return classes, splits
    classes = class_names(root, "dataset.path")
    paths, labels = list_images(root, classes, "dataset.path", True)
    train, test = _split_off(paths, labels, float(getattr(cfg, "test_fraction", 0.2)))
    return classes, {"train": train, "test": test}


def first_image_size(path: str) -> tuple[int, int]:
    import tensorflow as tf

    try:
        shape = tf.io.decode_image(tf.io.read_file(path), expand_animations=False).shape
    except tf.errors.OpError as exc:
        cause = (exc.message or "").strip().splitlines()
        raise UserError(
            f"{clip(path)} is not a readable image ({clip(cause[0] if cause else exc)}); "
            "replace or remove it"
        ) from None
    return int(shape[0]), int(shape[1])


def load(cfg: Any, seed: int) -> Dataset:
    """The folder's images as a streamed Dataset (file paths + an ImageReader)."""
    del seed  # the splits are fixed (SPLIT_SEED)
    channels, size = _channels(cfg), _image_size(cfg)
    classes, splits = list_splits(cfg)
    if len(classes) < 2:
        raise UserError(
            f"dataset.path={clip(cfg.path)} has one class folder ({clip(classes[0])}); a "
            "classifier needs at least 2"
        )
    train_paths = splits["train"][0]
    reader = ImageReader(size or first_image_size(str(train_paths[0])), channels)
    val = splits.get("val", (None, None))
    data = Dataset(
        name=str(cfg.name),
        x_train=splits["train"][0],
        y_train=splits["train"][1],
        x_test=splits["test"][0],
        y_test=splits["test"][1],
        num_classes=len(classes),
        x_val=val[0],
        y_val=val[1],
        reader=reader,
        class_names=classes,
    )
    return apply_limits(data, getattr(cfg, "limit", None), getattr(cfg, "test_limit", None))
