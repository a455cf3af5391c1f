"""FER2013 facial expressions from its `train.csv`: 48x48 grayscale faces, 7 emotions.

The CSV has a header `emotion,pixels[,Usage]`: `emotion` an integer 0..6, `pixels` 2,304
space-separated integers 0..255, `Usage` one of Training / PublicTest / PrivateTest. The standard
protocol: Training rows train, PublicTest rows validate, PrivateTest rows test (a file without
PrivateTest rows tests on PublicTest and validates on `dataset.val_fraction` of Training).
Without a Usage column `dataset.test_fraction` of the rows, after a fixed shuffle that does not
depend on `seed`, are the test set.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avlsi.data import SPLIT_SEED, Dataset, apply_limits
from avlsi.data.files import require_regular_file
from avlsi.errors import UserError

SIDE = 48
PIXELS = SIDE * SIDE
NUM_CLASSES = 7
USAGES = ("Training", "PublicTest", "PrivateTest")  # -> train, validation, test
DEFAULT_TEST_FRACTION = 0.1
_DIGITS_AND_SPACE = b"0123456789 "


class _RowProblem(ValueError):
    """What is wrong with one row; `read_csv` adds the file and row to make it a UserError."""


@dataclass
class FerTable:
    """The parsed CSV: pixels uint8 (N, 2304), labels int64 (N,), usage int8 (N,) or None
    (the index of each row's Usage in USAGES)."""

    pixels: np.ndarray
    labels: np.ndarray
    usage: np.ndarray | None


def parse_label(text: str) -> int:
    """An emotion cell: an integer 0..6."""
    try:
        value = int(text.strip())
    except ValueError:
        raise _RowProblem(f"emotion {text!r} is not an integer 0..6") from None
    if not 0 <= value < NUM_CLASSES:
        raise _RowProblem(f"emotion {value} is outside 0..6")
    return value


def parse_usage(text: str) -> int:
    """A Usage cell: 0 for Training, 1 for PublicTest, 2 for PrivateTest."""
    usage = text.strip()
    if usage in USAGES:
        return USAGES.index(usage)
    raise _RowProblem(f"Usage {usage!r} is not one of Training, PublicTest, PrivateTest")


def parse_pixels(text: str) -> np.ndarray:
    """A pixels cell: exactly 2,304 integers 0..255 separated by spaces, as uint8."""
    # Fast path: only ASCII digits and single spaces, parsed in C.
    if text.isascii() and not text.encode("ascii").translate(None, _DIGITS_AND_SPACE):
        values = np.fromstring(text, dtype=np.int64, sep=" ")
        if len(values) == PIXELS and values.max() <= 255:
            return values.astype(np.uint8)
    return _parse_pixels_slowly(text)


def _parse_pixels_slowly(text: str) -> np.ndarray:
    """The same check token by token, to say exactly what is wrong (or accept odd whitespace)."""
    tokens = text.split()
    for i, token in enumerate(tokens, start=1):
        try:
            value = int(token)
        except ValueError:
            raise _RowProblem(f"pixel {i} is {token!r}, not an integer") from None
        if not 0 <= value <= 255:
            raise _RowProblem(f"pixel {i} is {value}, outside 0..255")
    if len(tokens) != PIXELS:
        raise _RowProblem(f"found {len(tokens)} pixels, expected {PIXELS} (48x48)")
    return np.array(tokens, dtype=np.int64).astype(np.uint8)


def _column_indices(header: list[str], path: Path) -> tuple[int, int, int | None]:
    """Indices of emotion, pixels and (optional) Usage in the header, case-insensitively."""
    names = [name.strip().lower() for name in header]
    missing = [col for col in ("emotion", "pixels") if col not in names]
    if missing:
        found = ",".join(name.strip() for name in header) or "an empty line"
        raise UserError(
            f"{path}: line 1 (the header) lacks the column(s) {', '.join(missing)} "
            f"(found: {found}); a FER2013 CSV starts with emotion,pixels,Usage"
        )
    usage = names.index("usage") if "usage" in names else None
    return names.index("emotion"), names.index("pixels"), usage


def _records(lines: Iterable[str], path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) per non-blank line; plain splitting unless the line has quotes."""
    for line_no, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        if '"' not in text:
            yield line_no, text.split(",")
            continue
        try:
            yield line_no, next(csv.reader([text]))
        except csv.Error as exc:
            raise UserError(
                f"{path}: line {line_no} is not valid CSV ({exc}); pass an unmodified train.csv"
            ) from None


def read_csv(path: Path) -> FerTable:
    """Parse and check a FER2013 CSV; any problem is a UserError naming the file and row."""
    require_regular_file(path, "pass dataset.path=/path/to/train.csv (FER2013)")
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        records = _records(f, path)
        _, header = next(records, (0, None))
        if header is None:
            raise UserError(f"{path} is empty: expected a FER2013 CSV with emotion,pixels,Usage")
        emotion_col, pixels_col, usage_col = _column_indices(header, path)
        images, labels, usages = [], [], []
        for line_no, row in records:
            where = f"{path}: data row {len(labels) + 1} (line {line_no})"
            if len(row) != len(header):
                raise UserError(f"{where} has {len(row)} fields, the header has {len(header)}")
            try:
                labels.append(parse_label(row[emotion_col]))
                images.append(parse_pixels(row[pixels_col]))
                if usage_col is not None:
                    usages.append(parse_usage(row[usage_col]))
            except _RowProblem as problem:
                raise UserError(f"{where}: {problem}") from None
    if not labels:
        raise UserError(f"{path} has a header but no data rows: pass the full FER2013 train.csv")
    return FerTable(
        pixels=np.stack(images),
        labels=np.array(labels, dtype=np.int64),
        usage=np.array(usages, dtype=np.int8) if usage_col is not None else None,
    )


def split_indices(
    table: FerTable, test_fraction: float, path: Path
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(train, validation or None, test) rows: by Usage, or a fixed shuffle holding out
    `test_fraction` as the test set (validation then comes from `hold_out_validation`)."""
    n = len(table.labels)
    if table.usage is not None:
        train, public, private = (np.flatnonzero(table.usage == i) for i in range(3))
        if not len(train) or not (len(public) or len(private)):
            which = "Training" if not len(train) else "PublicTest/PrivateTest"
            raise UserError(
                f"{path} has no {which} rows: fix its Usage column, or drop the column "
                "to hold out dataset.test_fraction of the rows instead"
            )
        if not len(private):  # no private test rows: PublicTest is the test set
            return train, None, public
        return train, (public if len(public) else None), private
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"dataset.test_fraction={test_fraction} must be between 0 and 1")
    n_test = max(1, round(n * test_fraction))
    if n_test >= n:
        raise UserError(f"{path} has {n} data row(s): too few to hold out a test set")
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(order[: n - n_test]), None, np.sort(order[n - n_test :])


def load(cfg: Any, seed: int) -> Dataset:
    """FER2013 as float32 (N, 48, 48, 1) images in [0, 1] and int64 labels 0..6."""
    if not getattr(cfg, "path", None):
        raise UserError("dataset=fer2013 needs dataset.path=/path/to/train.csv")
    path = Path(str(cfg.path)).expanduser()
    table = read_csv(path)
    fraction = getattr(cfg, "test_fraction", None)
    fraction = DEFAULT_TEST_FRACTION if fraction is None else float(fraction)
    del seed  # the splits are fixed: seeds vary initialisation and order only
    train, val, test = split_indices(table, fraction, path)
    images = table.pixels.reshape(-1, SIDE, SIDE, 1)
    data = Dataset(
        name=str(getattr(cfg, "name", "fer2013")),
        x_train=images[train],
        y_train=table.labels[train],
        x_test=images[test],
        y_test=table.labels[test],
        num_classes=NUM_CLASSES,
        x_val=None if val is None else images[val],
        y_val=None if val is None else table.labels[val],
    )
    # Limits first, on the uint8 arrays, so that a small run converts only what it keeps.
    data = apply_limits(data, getattr(cfg, "limit", None), getattr(cfg, "test_limit", None))
    data.x_train = data.x_train.astype(np.float32) / np.float32(255.0)
    data.x_test = data.x_test.astype(np.float32) / np.float32(255.0)
    if data.x_val is not None:
        data.x_val = data.x_val.astype(np.float32) / np.float32(255.0)
    return data
