"""dataset=npz: the user's arrays, read without unpickling, checked array by array."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error
from data_factory import TINY_JOB, arrays, write_npz
from omegaconf import OmegaConf

from avlsi.data import hold_out_validation, npz
from avlsi.errors import UserError


@pytest.fixture
def no_tensorflow(tmp_path: Path) -> dict:
    """An environment in which importing TensorFlow fails loudly."""
    fake = tmp_path / "fake_tf" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('TensorFlow loaded before the check')\n")
    return {"PYTHONPATH": str(fake.parent), "TF_CPP_MIN_LOG_LEVEL": "3"}


def cfg(path: Path, **kwargs):
    base = {"name": "npz", "path": str(path), "limit": None, "test_limit": None}
    return OmegaConf.create({**base, **kwargs})


def test_uint8_rgb_images_are_scaled_and_classes_counted(tmp_path: Path) -> None:
    raw = arrays()
    data = npz.load(cfg(write_npz(tmp_path / "d.npz", raw)), seed=0)
    assert data.x_train.shape == (60, 16, 16, 3) and data.x_test.shape == (30, 16, 16, 3)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert np.array_equal(data.x_train, raw["x_train"].astype(np.float32) / np.float32(255))
    assert data.num_classes == 3 and data.input_shape == (16, 16, 3)
    assert data.y_val is None and not data.streamed


def test_grey_images_vectors_floats_and_label_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = {
        "x_train": rng.integers(0, 256, (8, 5, 7), dtype=np.uint8),
        "y_train": np.arange(8).reshape(8, 1) % 4,  # keras' cifar layout (N, 1)
        "x_test": rng.integers(0, 256, (4, 5, 7), dtype=np.uint8),
        "y_test": np.arange(4, dtype=np.float32),  # whole-number floats pass
    }
    data = npz.load(cfg(write_npz(tmp_path / "g.npz", grey)), seed=0)
    assert data.input_shape == (5, 7, 1) and data.num_classes == 4
    sequences = npz.load(cfg(tmp_path / "g.npz", add_channel=False), seed=0)
    assert sequences.input_shape == (5, 7)  # (N, T, C) for a Conv1D model
    assert np.array_equal(sequences.x_train, data.x_train[..., 0])
    assert data.y_train.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    onehot = np.eye(5, dtype=np.float32)
    vectors = {
        "x_train": rng.normal(size=(10, 6)).astype(np.float64) * 3,  # floats are kept
        "y_train": onehot[np.arange(10) % 5],
        "x_test": rng.normal(size=(5, 6)),
        "y_test": onehot[[4, 3, 2, 1, 0]],
    }
    data = npz.load(cfg(write_npz(tmp_path / "v.npz", vectors)), seed=0)
    assert data.input_shape == (6,) and data.num_classes == 5
    assert data.y_test.tolist() == [4, 3, 2, 1, 0]
    assert np.allclose(data.x_train, vectors["x_train"]) and data.x_train.dtype == np.float32


def test_limits_read_only_the_rows_kept(tmp_path: Path, monkeypatch) -> None:
    raw = arrays()
    raw["y_test"][-1] = 3  # a class seen only beyond the limit still counts
    path = write_npz(tmp_path / "d.npz", raw)
    read_whole: list[tuple[int, ...]] = []
    original = np.lib.format.read_array

    def spy(f, **kwargs):
        array = original(f, **kwargs)
        read_whole.append(array.shape)
        return array

    monkeypatch.setattr(np.lib.format, "read_array", spy)
    data = npz.load(cfg(path, limit=7, test_limit=5), seed=0)
    assert np.array_equal(data.x_train, raw["x_train"][:7] / np.float32(255))
    assert data.y_train.tolist() == raw["y_train"][:7].tolist() and len(data.y_test) == 5
    assert read_whole == [(60,), (30,)]  # the labels whole, the images only as far as kept
    assert data.num_classes == 4


def test_given_validation_arrays_are_used_not_held_out(tmp_path: Path) -> None:
    raw = arrays()
    path = write_npz(tmp_path / "d.npz", raw, x_val=raw["x_test"][:4], y_val=raw["y_test"][:4])
    data = hold_out_validation(npz.load(cfg(path), seed=0), 0.1)
    assert len(data.y_train) == 60 and data.y_val.tolist() == raw["y_test"][:4].tolist()
    assert data.split_sizes() == {"train": 60, "validation": 4, "test": 30}


def _bad(name: str) -> dict:
    raw = arrays(12, 6)
    if name == "missing":
        del raw["y_test"]
    elif name == "length":
        raw["y_train"] = raw["y_train"][:-1]
    elif name == "shapes":
        raw["x_test"] = raw["x_test"][:, :8]
    elif name == "non_integer":
        raw["y_train"] = raw["y_train"] + 0.5
    elif name == "negative":
        raw["y_test"] = raw["y_test"] - 1
    elif name == "object":
        raw["x_train"] = np.array([object()] * 12, dtype=object)
    elif name == "val_alone":
        raw["x_val"] = raw["x_test"]
    elif name == "int_images":
        raw["x_train"] = raw["x_train"].astype(np.int32)
    elif name == "not_onehot":
        raw["y_train"] = np.ones((12, 3))
    return raw


BAD = [
    ("missing", ["lacks y_test"]),
    ("length", ["x_train has 12 examples but y_train has 11 labels"]),
    ("shapes", ["x_test holds examples of shape (8, 16, 3) but x_train (16, 16, 3)"]),
    ("non_integer", ["y_train has non-integer labels (e.g. 2.5 at index 0)"]),
    ("negative", ["y_test has negative labels (e.g. -1 at index"]),
    ("object", ["x_train holds Python objects"]),
    ("val_alone", ["has x_val but no y_val"]),
    ("int_images", ["x_train is int32", "uint8"]),
    ("not_onehot", ["y_train is 2-D (12, 3) but not one-hot"]),
]


def _write_bad(path: Path, case: str) -> Path:
    np.savez(path, **_bad(case), allow_pickle=case == "object")
    return path


@pytest.mark.parametrize(("case", "needles"), BAD, ids=[b[0] for b in BAD])
def test_each_bad_npz_is_one_line_naming_the_array(tmp_path, case, needles) -> None:
    """What `python run.py` checks before TensorFlow loads (config.check_dataset -> here)."""
    path = _write_bad(tmp_path / "bad.npz", case)
    with pytest.raises(UserError) as caught:
        npz.check_file(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"dataset.path={path}")
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize("case", ["missing", "object", "negative"])
def test_a_bad_npz_ends_the_command_in_one_line_before_tensorflow_loads(
    cli, tmp_path, no_tensorflow, case
) -> None:
    path = _write_bad(tmp_path / "bad.npz", case)
    proc = cli("dataset=npz", f"dataset.path={path}", *TINY_JOB, tiny=False, env=no_tensorflow)
    assert_one_line_error(proc, "dataset.path=", *dict(BAD)[case], code=2)
    assert "TensorFlow loaded" not in proc.stderr
    assert cli.runs() == []


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (b"not a zip at all", ["is not an .npz file"]),
        (None, ["is a folder", "dataset=npz reads an .npz file"]),
    ],
    ids=["not_zip", "folder"],
)
def test_a_file_that_is_no_npz_is_one_line(cli, tmp_path, no_tensorflow, content, needles):
    path = tmp_path / "data.npz"
    path.mkdir() if content is None else path.write_bytes(content)
    proc = cli("dataset=npz", f"dataset.path={path}", *TINY_JOB, tiny=False, env=no_tensorflow)
    assert_one_line_error(proc, *needles, code=2)


def test_object_arrays_are_never_unpickled(tmp_path: Path, monkeypatch) -> None:
    """The refusal comes from the header: the pickle inside is never loaded."""
    path = tmp_path / "o.npz"
    raw = arrays(6, 3)
    np.savez(path, **{**raw, "y_test": np.array([{"a": 1}] * 3, dtype=object)})
    monkeypatch.setattr("pickle.load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(UserError, match="y_test holds Python objects"):
        npz.load(cfg(path), seed=0)
    with zipfile.ZipFile(path) as zf:
        assert "y_test.npy" in zf.namelist()


def test_nan_images_are_named_in_one_line(tmp_path: Path) -> None:
    """Found when the images are read (after the header checks), named with its index."""
    raw = arrays(12, 6)
    x = raw["x_train"].astype(np.float32) / 255
    x[3, 2, 1, 0] = np.nan
    path = write_npz(tmp_path / "nan.npz", {**raw, "x_train": x})
    npz.check_file(path)  # the headers and labels are fine
    with pytest.raises(UserError, match=r"x_train holds nan at \(3, 2, 1, 0\)"):
        npz.load(cfg(path), seed=0)


def test_an_npz_whose_header_promises_too_much_is_refused_before_reading(tmp_path: Path) -> None:
    """A header promising 2**40 images: refused from the header (memory), nothing read."""
    import io

    def member(shape: tuple[int, ...]) -> bytes:
        buf = io.BytesIO()
        header = {"descr": "|u1", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(buf, header)
        return buf.getvalue() + bytes(64)

    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x_train.npy", member((2**40, 16, 16, 3)))
        z.writestr("y_train.npy", member((2**40,)))
        z.writestr("x_test.npy", member((1, 16, 16, 3)))
        z.writestr("y_test.npy", member((1,)))
    for check in (lambda: npz.check_file(path), lambda: npz.load(cfg(path), seed=0)):
        with pytest.raises(UserError, match="as float32, more than the .* of memory available"):
            check()


def test_a_conv1d_model_on_3d_arrays_is_told_about_dataset_add_channel() -> None:
    """(N, T, C) arrays read as grey images do not fit a Conv1D model: the one line says how."""
    import tf_keras as keras

    from avlsi.models import check_classifier

    inputs = keras.Input((20, 3))
    hidden = keras.layers.GlobalAveragePooling1D()(keras.layers.Conv1D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    with pytest.raises(UserError, match=r"20x3x1 .*dataset.add_channel=false"):
        check_classifier(model, (20, 3, 1), 2, "model=file")
    with pytest.raises(UserError) as other:  # another mismatch: no such hint
        check_classifier(model, (21, 3, 1), 2, "model=file")
    assert "add_channel" not in str(other.value)
    assert check_classifier(model, (20, 3), 2, "model=file") is model
