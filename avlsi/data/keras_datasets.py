"""`dataset=keras dataset.name=cifar10|cifar100|fashion_mnist|mnist`: keras' own loaders.

tf-keras keeps each download under `<cache>/datasets/` (`<cache>` is `dataset.cache_dir`,
default `~/.keras`; tf-keras does not read KERAS_HOME) and downloads only what is missing.
Without a network, the file must be put there by hand: `expected_files` says which.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from avlsi.data import Dataset
from avlsi.data.arrays import to_dataset
from avlsi.errors import UserError, clip

KERAS_STORAGE = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
FASHION = ("train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz")
FASHION += ("t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz")
# name -> (files under <cache>/datasets/ that tf-keras looks for, where to get them)
SOURCES: dict[str, tuple[tuple[str, ...], str]] = {
    "cifar10": (
        ("cifar-10-batches-py.tar.gz",),
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": (
        ("cifar-100-python.tar.gz",),
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
    "fashion_mnist": (tuple(f"fashion-mnist/{f}" for f in FASHION), KERAS_STORAGE),
    "mnist": (("mnist.npz",), KERAS_STORAGE + "mnist.npz"),
}


def check_name(name: str) -> None:
    if name not in SOURCES:
        raise UserError(
            f"dataset.name={clip(name)} is not a keras dataset AVLSI reads; pass one of "
            f"{', '.join(SOURCES)}"
        )


def cache_root(cfg: Any) -> Path:
    """`dataset.cache_dir`, else ~/.keras; `datasets/` inside it holds the files."""
    given = getattr(cfg, "cache_dir", None)
    return Path(str(given) if given else os.path.join("~", ".keras")).expanduser()


def expected_files(name: str, root: Path) -> list[Path]:
    return [root / "datasets" / f for f in SOURCES[name][0]]


def missing_hint(name: str, root: Path) -> str:
    """The sentence that says which file to put where."""
    files, origin = SOURCES[name]
    where = root / "datasets"
    if len(files) == 1:
        return (
            f"download {origin} on a machine with a network and save it as "
            f"{where / files[0]} (or point dataset.cache_dir at a folder whose datasets/ "
            "holds it)"
        )
    return (
        f"download {', '.join(Path(f).name for f in files)} from {origin} and put them in "
        f"{where / Path(files[0]).parent} (or point dataset.cache_dir elsewhere)"
    )


def read(name: str, root: Path) -> dict:
    """keras' `load_data` for `name`, with its cache under `root`; one line if it fails."""
    module = importlib.import_module(f"tf_keras.datasets.{name}")
    missing = [p for p in expected_files(name, root) if not p.is_file()]
    try:
        (x_train, y_train), (x_test, y_test) = module.load_data(cache_dir=str(root))
    except Exception as exc:  # keras raises bare Exception for a failed download
        text = str(exc).strip().splitlines()
        cause = clip(text[0]) if text else type(exc).__name__
        state = "is not in the cache" if missing else "could not be read"
        raise UserError(
            f"dataset=keras dataset.name={name}: {clip(missing[0] if missing else root)} "
            f"{state} and keras could not get it ({cause}); {missing_hint(name, root)}"
        ) from None
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def load(cfg: Any, seed: int) -> Dataset:
    """A keras dataset as float32 images in [0, 1] (28x28 ones get a channel axis)."""
    del seed  # keras fixes the split
    name = str(cfg.name)
    check_name(name)
    arrays = read(name, cache_root(cfg))
    classes = 100 if name == "cifar100" else 10
    return to_dataset(arrays, name, f"keras dataset {name}", cfg, num_classes=classes)
