"""dataset=keras: keras' own loaders and cache, offline; and no MNIST size outside MNIST."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error
from omegaconf import OmegaConf

from avlsi.data import keras_datasets
from avlsi.errors import UserError

# Any download attempt goes to a closed local port: a test can never reach the network.
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
OFFLINE |= {"HTTPS_PROXY": OFFLINE["https_proxy"], "HTTP_PROXY": OFFLINE["http_proxy"]}
OFFLINE |= {"no_proxy": "", "NO_PROXY": ""}


def cfg(name: str, cache_dir: Path, **kwargs):
    base = {"name": name, "path": None, "limit": None, "test_limit": None}
    return OmegaConf.create({**base, "cache_dir": str(cache_dir), **kwargs})


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_a_cached_keras_dataset_loads_offline(tmp_path: Path, monkeypatch) -> None:
    """Fashion-MNIST's four files in <cache_dir>/datasets/fashion-mnist/ (keras checks no
    hash for them, so small stand-ins do), read by keras' own loader."""
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    rng = np.random.default_rng(0)
    folder = tmp_path / "datasets" / "fashion-mnist"
    x_train = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    write_idx_gz(folder / "train-images-idx3-ubyte.gz", x_train)
    write_idx_gz(folder / "train-labels-idx1-ubyte.gz", np.arange(20) % 3)
    write_idx_gz(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (8, 28, 28)))
    write_idx_gz(folder / "t10k-labels-idx1-ubyte.gz", np.arange(8) % 3)
    data = keras_datasets.load(cfg("fashion_mnist", tmp_path, limit=12, test_limit=5), seed=0)
    assert data.input_shape == (28, 28, 1) and data.num_classes == 10  # keras': not the labels'
    assert data.split_sizes() == {"train": 12, "validation": 0, "test": 5}
    assert np.array_equal(data.x_train[..., 0], x_train[:12].astype(np.float32) / np.float32(255))


def test_an_unknown_keras_dataset_is_refused_before_tensorflow_loads(cli, tmp_path) -> None:
    fake = tmp_path / "fake_tf" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('TensorFlow loaded before the check')\n")
    proc = cli(
        "dataset=keras", "dataset.name=imagenet", tiny=False, env={"PYTHONPATH": str(fake.parent)}
    )
    assert_one_line_error(proc, "dataset.name=imagenet", "cifar10, cifar100, fashion_mnist, mnist")


def test_no_cache_and_no_network_says_which_file_to_put_where(tmp_path, monkeypatch) -> None:
    """keras' own loader tries its download (to a closed local port here) and fails; the
    error is one sentence naming the file and where it goes."""
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    empty = tmp_path / "empty_cache"
    with pytest.raises(UserError) as caught:
        keras_datasets.load(cfg("cifar10", empty), seed=0)
    message, expected = str(caught.value), empty / "datasets" / "cifar-10-batches-py.tar.gz"
    assert "\n" not in message and message.startswith("dataset=keras dataset.name=cifar10: ")
    assert f"{expected} is not in the cache" in message
    assert "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert f"save it as {expected}" in message
    assert "Connection refused" in message  # the download was tried, and failed locally


def test_every_keras_dataset_names_its_files(tmp_path: Path) -> None:
    for name in keras_datasets.SOURCES:
        hint = keras_datasets.missing_hint(name, tmp_path)
        assert str(tmp_path / "datasets") in hint
    assert keras_datasets.expected_files("mnist", tmp_path) == [tmp_path / "datasets/mnist.npz"]
    with pytest.raises(UserError, match="dataset.name=svhn"):
        keras_datasets.check_name("svhn")


def test_mnist_sizes_live_only_in_the_mnist_loader() -> None:
    """28x28 / 784 appear in avlsi/ only in the MNIST loader (and as the synthetic data's
    documented default shape and an example in its message)."""
    allowed = {"data/mnist.py", "config.py", "data/synthetic.py"}
    hits = []
    for path in (ROOT / "avlsi").rglob("*.py"):
        rel = path.relative_to(ROOT / "avlsi").as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\b(28|784)\b", line) and rel not in allowed:
                hits.append(f"{rel}:{number}: {line.strip()}")
    assert hits == []
    config = (ROOT / "avlsi" / "config.py").read_text()
    assert [ln for ln in config.splitlines() if re.search(r"\b28\b", ln)] == [
        "    shape: list[int] = field(default_factory=lambda: [28, 28, 1])"
    ]
