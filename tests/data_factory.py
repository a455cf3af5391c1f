"""Small image data for the data tests: uint8 RGB 16x16 images of 3 classes, as an npz and as
an image folder of PNGs (PIL), with the same pixels in both."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE, CLASSES = 16, 3
# Every non-data setting of a tiny job (conftest.TINY without its synthetic dataset).
TINY_JOB = [
    "model.conv_filters=[4,4,8,8]",
    "model.dense_units=[8]",
    "train.epochs=2",
    "finetune.epochs=1",
    "train.batch_size=16",
    "finetune.batch_size=16",
    "train.learning_rate=0.01",
    "criterion.samples=16",
    "latency.enabled=false",  # measured latency: tests/test_runtime.py
]


def images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 (16, 16, 3) images: a blocky colour prototype per class plus noise."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(99).integers(0, 256, (CLASSES, 4, 4, 3))
    y = rng.permutation(np.arange(n) % CLASSES)
    x = np.repeat(np.repeat(protos[y], 4, axis=1), 4, axis=2)
    x = x + rng.integers(-25, 26, x.shape)
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


def arrays(n_train: int = 60, n_test: int = 30) -> dict[str, np.ndarray]:
    x_train, y_train = images(n_train, seed=1)
    x_test, y_test = images(n_test, seed=2)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def write_npz(path: Path, data: dict[str, np.ndarray] | None = None, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{**(arrays() if data is None else data), **extra})
    return path


def write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.squeeze()).save(path)


def write_folder(root: Path, x: np.ndarray, y: np.ndarray, names=("cat", "dog", "eel")) -> Path:
    """root/<class name>/<index>.png for each image (index = its position in x)."""
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        write_png(root / names[label] / f"{i:04d}.png", image)
    return root


def write_split_folder(root: Path, data: dict[str, np.ndarray] | None = None) -> Path:
    """root/train/<class>/ and root/test/<class>/ from keras-layout arrays."""
    data = arrays() if data is None else data
    write_folder(root / "train", data["x_train"], data["y_train"])
    write_folder(root / "test", data["x_test"], data["y_test"])
    return root
