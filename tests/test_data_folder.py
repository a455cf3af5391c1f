"""dataset=image_folder: class folders of image files, streamed through tf.data."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from data_factory import TINY_JOB, arrays, write_folder, write_npz, write_split_folder
from omegaconf import OmegaConf

from avlsi import keys
from avlsi.data import hold_out_validation, image_folder
from avlsi.data.image_folder import ImageReader
from avlsi.errors import UserError


def cfg(path: Path, **kwargs):
    base = {
        "name": "image_folder",
        "path": str(path),
        "limit": None,
        "test_limit": None,
        "test_path": None,
        "image_size": None,
        "color_mode": "rgb",
        "test_fraction": 0.2,
    }
    return OmegaConf.create({**base, **kwargs})


@pytest.fixture(scope="module")
def raw() -> dict[str, np.ndarray]:
    return arrays(60, 30)


@pytest.fixture(scope="module")
def split_folder(raw, tmp_path_factory) -> Path:
    return write_split_folder(tmp_path_factory.mktemp("split") / "data", raw)


def index_of(path: str) -> int:
    return int(Path(path).stem)


def test_class_folders_sorted_and_a_fixed_test_fraction(raw, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "flat", raw["x_train"], raw["y_train"], ("b", "c", "a"))
    (root / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    (root / "a" / "notes.txt").write_text("not an image")  # nor are other files images
    data = image_folder.load(cfg(root), seed=0)
    assert data.class_names == ["a", "b", "c"] and data.num_classes == 3
    assert data.streamed and data.input_shape == (16, 16, 3)
    assert data.split_sizes() == {"train": 48, "validation": 0, "test": 12}
    for x, y in (data.arrays("train"), data.arrays("test")):
        folders = [Path(p).parent.name for p in x]
        assert [data.class_names[label] for label in y] == folders
        pairs = zip(x, folders, strict=True)
        assert all(raw["y_train"][index_of(p)] == "bca".index(f) for p, f in pairs)
    assert not set(data.x_train) & set(data.x_test)
    again = image_folder.load(cfg(root), seed=5)  # the split does not depend on the seed
    assert again.x_test.tolist() == data.x_test.tolist()


def test_train_test_val_layout_and_test_path(raw, split_folder: Path, tmp_path: Path) -> None:
    data = image_folder.load(cfg(split_folder), seed=0)
    assert data.split_sizes() == {"train": 60, "validation": 0, "test": 30}
    assert sorted(index_of(p) for p in data.x_test) == list(range(30))
    shutil.copytree(split_folder / "test", tmp_path / "val")
    shutil.copytree(split_folder, tmp_path / "with_val")
    shutil.copytree(split_folder / "test", tmp_path / "with_val" / "val", dirs_exist_ok=True)
    data = image_folder.load(cfg(tmp_path / "with_val"), seed=0)
    assert data.split_sizes()["validation"] == 30
    assert hold_out_validation(data, 0.1).split_sizes()["train"] == 60  # no hold-out then
    data = image_folder.load(
        cfg(split_folder / "train", test_path=str(split_folder / "test"), test_limit=7), seed=0
    )
    assert data.split_sizes() == {"train": 60, "validation": 0, "test": 7}


def test_limit_keeps_every_class_and_val_fraction_holds_out(split_folder: Path) -> None:
    data = image_folder.load(cfg(split_folder, limit=12), seed=0)
    assert len(data.y_train) == 12 and set(data.y_train.tolist()) == {0, 1, 2}
    data = hold_out_validation(data, 0.25)
    assert data.split_sizes() == {"train": 9, "validation": 3, "test": 30}
    assert not set(data.x_train) & set(data.x_val)


def test_decoded_images_are_the_npz_pixels(raw, split_folder: Path) -> None:
    data = image_folder.load(cfg(split_folder), seed=0)
    images = data.reader.load(data.x_test)
    expected = raw["x_test"][[index_of(p) for p in data.x_test]].astype(np.float32) / 255
    assert images.dtype == np.float32 and np.array_equal(images, expected)
    grey = image_folder.load(cfg(split_folder, color_mode="grayscale", image_size=[8, 12]), 0)
    assert grey.input_shape == (8, 12, 1)
    assert grey.reader.load(grey.x_test[:3]).shape == (3, 8, 12, 1)


def test_sample_decodes_only_what_it_draws_and_is_fixed_by_seed(split_folder, monkeypatch):
    data = image_folder.load(cfg(split_folder), seed=0)
    loaded: list[int] = []
    original = ImageReader.load
    monkeypatch.setattr(ImageReader, "load", lambda s, p: loaded.append(len(p)) or original(s, p))
    x, y = data.sample(10, seed=3)
    assert x.shape == (10, 16, 16, 3) and loaded == [10]
    again, _ = data.sample(10, seed=3)
    other, _ = data.sample(10, seed=4)
    assert np.array_equal(x, again) and not np.array_equal(x, other)
    assert data.sample(500, seed=0)[0].shape[0] == 60  # at most the whole set


def test_fit_and_evaluate_stream_and_never_materialise(split_folder, monkeypatch) -> None:
    import tensorflow as tf

    from avlsi import train

    data = image_folder.load(cfg(split_folder), seed=0)
    seen: list = []
    for method in ("fit", "evaluate"):
        original = getattr(tf.keras.Model, method)

        def spy(self, *args, _original=original, **kwargs):
            seen.append(kwargs.get("x", args[0] if args else None))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(tf.keras.Model, method, spy)
    monkeypatch.setattr(ImageReader, "load", lambda *a: pytest.fail("materialised"))
    model = tf.keras.Sequential(
        [tf.keras.Input((16, 16, 3)), tf.keras.layers.Flatten(), tf.keras.layers.Dense(3)]
    )
    model.add(tf.keras.layers.Softmax())
    settings = OmegaConf.create({"epochs": 2, "batch_size": 16, "learning_rate": 0.01})
    history = train.fit(model, data, settings, verbose=0)
    accuracy = train.evaluate(model, data, batch_size=8)
    assert len(history.history["loss"]) == 2 and 0 <= accuracy <= 1
    fitted, evaluated = seen
    assert isinstance(fitted, tf.data.Dataset) and isinstance(evaluated, tf.data.Dataset)
    assert int(fitted.cardinality()) == math.ceil(60 / 16)  # known: Keras shows steps
    assert int(evaluated.cardinality()) == math.ceil(30 / 8)


def test_a_file_that_does_not_decode_is_named(split_folder, tmp_path: Path) -> None:
    from avlsi import train

    root = shutil.copytree(split_folder, tmp_path / "broken")
    bad = root / "test" / "dog" / "9999.png"
    bad.write_bytes(b"\x89PNG but not really")
    data = image_folder.load(cfg(root), seed=0)
    with pytest.raises(UserError, match=r"9999\.png is not a readable image"):
        data.reader.load(data.x_test)
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.Input((16, 16, 3)), tf.keras.layers.Flatten()])
    model.add(tf.keras.layers.Dense(3, activation="softmax"))
    with pytest.raises(UserError, match=r"9999\.png is not a readable image"):
        train.evaluate(model, data)


def _layout(tmp_path: Path, raw, case: str) -> Path:
    root = tmp_path / case
    if case == "no_classes":
        root.mkdir()
        (root / "x.png").write_bytes(b"")
    elif case == "one_class":
        write_folder(root, raw["x_train"][:4], np.zeros(4, int), ("only",))
    elif case == "empty_class":
        write_folder(root, raw["x_train"], raw["y_train"])
        (root / "fox").mkdir()
    elif case == "unknown_test_class":
        write_split_folder(root, raw)
        write_folder(root / "test", raw["x_test"][:1], [0], ("yak",))
    elif case == "train_without_test":
        write_folder(root / "train", raw["x_train"], raw["y_train"])
    return root


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("no_classes", "has no class sub-folders"),
        ("one_class", "has one class folder (only)"),
        ("empty_class", "the class folder fox has no images"),
        ("unknown_test_class", "has the class folder yak, which the training folder lacks"),
        ("train_without_test", "has train/ but no test/"),
    ],
)
def test_bad_layouts_are_one_line(raw, tmp_path: Path, case: str, needle: str) -> None:
    with pytest.raises(UserError) as caught:
        image_folder.load(cfg(_layout(tmp_path, raw, case)), seed=0)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"color_mode": "cmyk"}, "dataset.color_mode=cmyk must be one of grayscale, rgb, rgba"),
        ({"image_size": [16]}, "dataset.image_size=[16] must be [height, width]"),
        ({"test_fraction": 1.0}, "dataset.test_fraction=1.0 must be in (0, 1)"),
    ],
)
def test_bad_settings_are_refused_before_loading(split_folder, settings, needle) -> None:
    with pytest.raises(UserError, match=None) as caught:
        image_folder.check_settings(cfg(split_folder, **settings))
    assert needle in str(caught.value)


def test_folder_fingerprint_follows_content_and_is_cached(split_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("AVLSI_CACHE_DIR", str(tmp_path / "cache"))
    copy = shutil.copytree(split_folder, tmp_path / "copy")  # new mtimes, same content
    first = keys.data_fingerprint(cfg(split_folder))
    assert keys.data_fingerprint(cfg(copy)) == first
    keys.forget_folders()
    monkeypatch.setattr(keys, "file_sha256", lambda p: pytest.fail("hashed again"))
    assert keys.data_fingerprint(cfg(copy)) == first  # cached: the listing is unchanged
    monkeypatch.undo()
    monkeypatch.setenv("AVLSI_CACHE_DIR", str(tmp_path / "cache"))
    walked = []
    monkeypatch.setattr(keys, "folder_listing", lambda f: walked.append(f) or [])
    keys.data_fingerprint(cfg(copy))
    assert walked == []  # within a job, a folder is walked once
    monkeypatch.undo()
    monkeypatch.setenv("AVLSI_CACHE_DIR", str(tmp_path / "cache"))
    keys.forget_folders()
    some_image = next((copy / "test" / "cat").iterdir()).read_bytes()
    (copy / "train" / "cat" / "new.png").write_bytes(some_image)
    assert keys.data_fingerprint(cfg(copy)) != first
    with_test = keys.data_fingerprint(cfg(split_folder, test_path=str(copy / "test")))
    assert with_test not in (first, keys.data_fingerprint(cfg(copy)))


@pytest.mark.slow
def test_a_whole_job_on_a_folder_and_on_the_same_data_as_npz(raw, tmp_path, cli) -> None:
    """The same 90 images as a folder (streamed) and as an npz (arrays): both jobs finish;
    their times are printed (pytest -s) for the report."""
    root = write_split_folder(tmp_path / "images", raw)
    npz_path = write_npz(tmp_path / "same.npz", raw)
    seconds = {}
    for name, overrides in {
        "image_folder": ["dataset=image_folder", f"dataset.path={root}"],
        "npz": ["dataset=npz", f"dataset.path={npz_path}"],
    }.items():
        start = time.perf_counter()
        proc = cli(*overrides, *TINY_JOB, "mlflow.experiment=" + name, tiny=False)
        seconds[name] = time.perf_counter() - start
        assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"\njob seconds: {seconds}")
    for name, train_shape in (("image_folder", [54]), ("npz", [54, 16, 16, 3])):
        (run,) = cli.runs(name)
        metrics = run.data.metrics
        assert run.info.status == "FINISHED" and run.data.params["dataset"] == name
        assert metrics["finetuned.test_accuracy"] > 0.5  # 3 classes: chance is 1/3
        assert metrics["finetuned.params"] < metrics["baseline.params"]
        inputs = {d.tags[0].value: json.loads(d.dataset.profile) for d in run.inputs.dataset_inputs}
        assert inputs["train"]["features_shape"] == train_shape  # paths, or the images
        assert inputs["validation"]["features_shape"][0] == 6 and len(inputs) == 3
    assert run.data.tags["avlsi.data"] == keys.data_fingerprint(cfg(npz_path))
    (folder_run,) = cli.runs("image_folder")
    assert folder_run.data.tags["avlsi.data"] == keys.data_fingerprint(cfg(root))


def test_streamed_training_is_reproducible_for_a_seed(split_folder) -> None:
    import tensorflow as tf

    from avlsi import train

    data = image_folder.load(cfg(split_folder), seed=0)
    settings = OmegaConf.create({"epochs": 2, "batch_size": 8, "learning_rate": 0.01})

    def trained(seed: int) -> list[np.ndarray]:
        train.seed_everything(seed)
        model = tf.keras.Sequential([tf.keras.Input((16, 16, 3)), tf.keras.layers.Flatten()])
        model.add(tf.keras.layers.Dense(3, activation="softmax"))
        train.fit(model, data, settings, verbose=0)
        return model.get_weights()

    first, again, other = trained(0), trained(0), trained(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["dataset=image_folder"], "dataset=image_folder needs dataset.path=/path/to/images"),
        (["dataset=image_folder", "dataset.path=FILE"], "dataset=image_folder reads a folder"),
        (["dataset=npz", "dataset.path=FOLDER"], "dataset=npz reads an .npz file"),
        (["dataset=image_folder", "dataset.path=FOLDER", "dataset.test_path=MISSING"], "test_path"),
        (["dataset=image_folder", "dataset.path=FOLDER", "dataset.color_mode=bw"], "color_mode"),
        (["dataset=keras", "dataset.path=FOLDER"], "dataset=keras reads keras' own cache"),
    ],
)
def test_dataset_settings_are_checked_with_the_config(tmp_path, overrides, needle) -> None:
    """config.check_dataset: what `python run.py` refuses before TensorFlow loads."""
    from hydra import compose, initialize_config_dir

    from avlsi.config import PROJECT_ROOT, check_dataset, register

    (tmp_path / "file.npz").touch()
    places = {"FILE": tmp_path / "file.npz", "FOLDER": tmp_path, "MISSING": tmp_path / "none"}
    overrides = [
        o.split("=")[0] + "=" + str(places.get(o.split("=")[1], o.split("=")[1])) for o in overrides
    ]
    register()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        dataset = compose(config_name="config", overrides=overrides).dataset
    with pytest.raises(UserError) as caught:
        check_dataset(dataset)
    assert needle in str(caught.value)
