"""`dataset=npz dataset.path=data.npz`: the user's own arrays in keras layout.

Arrays `x_train, y_train, x_test, y_test` (optional `x_val, y_val`: then no validation set
is held out of the training set), checked as `avlsi.data.arrays` says. Each member's header
is read first: an object (pickled) array is refused before any of it is read (never
unpickled: `allow_pickle=False`), shapes and memory are checked, and with `dataset.limit` /
`dataset.test_limit` only the rows kept are read from the file.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from avlsi.data import Dataset
from avlsi.data.arrays import (
    OPTIONAL,
    REQUIRED,
    check_layout,
    check_memory,
    count_classes,
    labels,
    to_dataset,
)
from avlsi.data.files import require_regular_file
from avlsi.errors import UserError, clip


@dataclass(frozen=True)
class Header:
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool


def _read_header(f: IO[bytes]) -> Header:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    return Header(tuple(shape), np.dtype(dtype), bool(fortran))


def _read_rows(zf: zipfile.ZipFile, member: str, rows: int | None) -> np.ndarray:
    """The first `rows` rows (all if None) of a member, never unpickling anything."""
    with zf.open(member) as f:
        header = _read_header(f)
        if rows is None or header.fortran_order or rows >= header.shape[0]:
            f.seek(0)
            array = np.lib.format.read_array(f, allow_pickle=False)
            return array if rows is None else array[:rows]
        shape = (rows, *header.shape[1:])
        count = int(np.prod(shape))
        data = f.read(count * header.dtype.itemsize)
        if len(data) < count * header.dtype.itemsize:
            raise EOFError(f"{member} is truncated")
        return np.frombuffer(data, dtype=header.dtype).reshape(shape).copy()


def _headers(zf: zipfile.ZipFile, source: str) -> tuple[dict, dict, list[str]]:
    """(member names, headers, splits) of an open npz, its layout checked."""
    members = {n.removesuffix(".npy"): n for n in zf.namelist() if n.endswith(".npy")}
    headers = {}
    for key in (*REQUIRED, *OPTIONAL):
        if key in members:
            with zf.open(members[key]) as f:
                headers[key] = _read_header(f)
    return members, headers, check_layout(headers, source)


def _opened(path: Path, source: str, work):
    """`work(zipfile)` on the npz at `path`; its failures as one-line UserErrors."""
    require_regular_file(path, "pass an .npz file made with np.savez")
    try:
        with zipfile.ZipFile(path) as zf:
            return work(zf)
    except zipfile.BadZipFile:
        raise UserError(
            f"{source} is not an .npz file (not a zip archive); save it with "
            "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        ) from None
    except (OSError, ValueError, EOFError, MemoryError, zipfile.LargeZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{source} cannot be read ({clip(first)}); save it again with np.savez"
        ) from None


def _fitting_headers(zf: zipfile.ZipFile, source: str, rows_of: dict):
    """The npz's members, array headers and splits, after checking that the rows kept (the
    limits in `rows_of`) fit in memory."""
    members, headers, splits = _headers(zf, source)
    rows = {s: min(headers[f"x_{s}"].shape[0], rows_of[s] or 2**63) for s in splits}
    check_memory(headers, rows, source)
    return members, headers, splits


def check_file(path: Path, limit: int | None = None, test_limit: int | None = None) -> None:
    """The npz's layout from its headers, the memory its images will take (with the limits)
    and its labels (the images are not read): run before TensorFlow loads."""
    source = f"dataset.path={clip(path)}"
    rows_of = {"train": limit, "test": test_limit, "val": None}

    def work(zf: zipfile.ZipFile) -> None:
        members, headers, splits = _fitting_headers(zf, source, rows_of)
        for split in splits:
            labels(_read_rows(zf, members[f"y_{split}"], None), f"y_{split}", source)

    _opened(path, source, work)


def read(path: Path, limit: int | None = None, test_limit: int | None = None) -> dict:
    """The arrays of an npz file, checked for layout (from headers) and memory first."""
    source = f"dataset.path={clip(path)}"
    rows_of = {"train": limit, "test": test_limit, "val": None}

    def work(zf: zipfile.ZipFile) -> dict:
        members, headers, splits = _fitting_headers(zf, source, rows_of)
        # Labels whole (small; all of them count the classes), images only as far as kept.
        return {
            key: _read_rows(zf, members[key], rows_of[key[2:]] if key[0] == "x" else None)
            for key in headers
        }

    return _opened(path, source, work)


def load(cfg: Any, seed: int) -> Dataset:
    """The npz file's arrays as a Dataset (float32 images in [0, 1], int64 labels)."""
    del seed  # the file fixes the split
    path = Path(str(cfg.path)).expanduser()
    source = f"dataset.path={clip(path)}"
    arrays = read(path, getattr(cfg, "limit", None), getattr(cfg, "test_limit", None))
    num_classes = count_classes(arrays, source)  # from every label, before the limits
    for split in ("train", "test"):  # the images were read only as far as the limits keep
        arrays[f"y_{split}"] = arrays[f"y_{split}"][: len(arrays[f"x_{split}"])]
    return to_dataset(arrays, str(cfg.name), source, cfg, num_classes=num_classes)
