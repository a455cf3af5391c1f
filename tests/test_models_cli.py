"""A user's own model through the real command line: a saved file, a builder with keyword
arguments, a keras.applications model; and every mistake with them in one line."""

import json
import math
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, TINY, assert_one_line_error


def job(*overrides: str) -> list[str]:
    """TINY's data and training settings (not its stack sizes; for model=file not its
    train.epochs), then `overrides`, each key given once."""
    chosen = {o.split("=")[0]: o for o in TINY if not o.startswith("model.")}
    if any(o.startswith("dataset=") for o in overrides):  # the user's data, not TINY's
        chosen = {k: o for k, o in chosen.items() if not k.startswith("dataset.")}
    if "model=file" in overrides:
        del chosen["train.epochs"]  # its own default: 0, the file is the baseline
    chosen.update({o.split("=")[0]: o for o in overrides})
    return list(chosen.values())


def save_user_model(path: Path, seed: int = 0, input_shape=(12, 12, 1), classes: int = 10):
    """A user's Sequential model, no layer named, ending in logits, saved with tf-keras."""
    import tensorflow as tf

    layers = tf.keras.layers
    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.Sequential(
        [
            layers.Input(input_shape),
            layers.Conv2D(4, 3, activation="relu"),
            layers.Conv2D(6, 3),
            layers.BatchNormalization(),
            layers.Activation("relu"),
            layers.Flatten(),
            layers.Dense(8, activation="relu"),
            layers.Dense(classes),
        ]
    )
    model.save(path)
    return model


def keras_file(run_dir: Path, name: str) -> dict:
    with zipfile.ZipFile(run_dir / f"{name}.keras") as archive:
        return json.loads(archive.read("config.json"))


def load(path: Path):
    import tensorflow as tf

    return tf.keras.models.load_model(path, compile=False)


@pytest.mark.slow
def test_a_saved_model_is_the_untrained_baseline_pruned_and_finetuned(cli):
    """The user's file and the user's arrays (npz: 60 + 30 RGB 16x16 images, 3 classes)."""
    import numpy as np
    from data_factory import write_npz

    path = cli.tmp / "user.keras"
    user = save_user_model(path, input_shape=(16, 16, 3), classes=3)
    data = ["dataset=npz", f"dataset.path={write_npz(cli.tmp / 'user.npz')}"]
    proc = cli(
        *job(
            "model=file",
            f"model.path={path}",
            *data,
            "criterion=l1",
            "psize=0.5",
            "finetune.optimizer=sgd",
            "finetune.momentum=0.8",
            "finetune.lr_schedule=cosine",
        ),
        tiny=False,
    )
    assert proc.returncode == 0, proc.stderr
    (run,) = cli.runs()
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    assert run.info.status == "FINISHED"
    assert "train.loss" not in metrics and "finetune.loss" in metrics  # not trained, tuned
    assert metrics["baseline.params"] == user.count_params()
    assert metrics["pruned.params"] < metrics["baseline.params"]
    assert params["model.file"] == "user.keras" and params["train.epochs"] == "0"
    assert tags["baseline.source"] == "trained"
    run_dir = cli.tmp / "run1"
    baseline = load(run_dir / "baseline.keras")
    for kept, given in zip(baseline.get_weights(), user.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, given)  # the file is the baseline, untouched
    pruned = load(run_dir / "pruned.keras")
    assert pruned.outputs[0].shape[-1] == 3  # every class kept (the bug: 2 of 10)
    assert pruned.layers[-1].get_weights()[0].shape == (4, 3)  # its hidden Dense pruned
    compiled = keras_file(run_dir, "finetuned")["compile_config"]
    optimizer, rate = compiled["optimizer"], compiled["optimizer"]["config"]["learning_rate"]
    assert optimizer["class_name"] == "SGD"
    assert optimizer["config"]["momentum"] == pytest.approx(0.8)
    assert rate["class_name"] == "CosineDecay"
    assert rate["config"]["decay_steps"] == math.ceil(54 / 32)  # 60 minus 10% validation
    assert compiled["loss"]["config"]["from_logits"] is True
    assert keras_file(run_dir, "baseline")["compile_config"]["optimizer"]["class_name"] == "Adam"

    # The same file replaced in place with other weights: a new baseline, not the stored one.
    save_user_model(path, seed=1, input_shape=(16, 16, 3), classes=3)
    proc = cli(*job("model=file", f"model.path={path}", *data, "stage=train"), tiny=False)
    assert proc.returncode == 0, proc.stderr
    newer = next(r for r in cli.runs() if r.info.run_id != run.info.run_id)
    assert newer.data.tags["baseline.source"] == "trained"
    assert newer.data.tags["baseline.key"] != tags["baseline.key"]


@pytest.mark.slow
def test_a_builder_gets_its_keyword_arguments(cli):
    """The user's builder on the user's image folder (streamed: train/ and test/ PNGs)."""
    from data_factory import write_split_folder

    images = write_split_folder(cli.tmp / "images")
    proc = cli(
        *job(
            "dataset=image_folder",
            f"dataset.path={images}",
            "model=builder",
            "model._target_=examples.my_models.residual_cnn",
            "model.width=6",
            "model.depth=1",
            "criterion=taylor",
            "criterion.scope=layer",
            "criterion.layer=block0_a",
            "psize=0.5",
        ),
        tiny=False,
    )
    assert proc.returncode == 0, proc.stderr
    (run,) = cli.runs()
    assert run.info.status == "FINISHED"
    assert run.data.params["model.width"] == "6" and run.data.params["model.depth"] == "1"
    assert run.data.params["model._target_"] == "examples.my_models.residual_cnn"
    baseline = load(cli.tmp / "run1" / "baseline.keras")
    names = {lyr.name for lyr in baseline.layers}
    assert {"stem", "block0_a", "block0_b"} <= names and "block1_a" not in names  # depth=1
    assert baseline.get_layer("stem").filters == 6  # width=6
    pruned = load(cli.tmp / "run1" / "pruned.keras")
    assert pruned.get_layer("block0_a").filters == 3


@pytest.mark.slow
def test_a_keras_application_builds_for_the_dataset(cli):
    import tensorflow as tf

    proc = cli(
        *job(
            "model=keras_app",
            "model.name=MobileNetV2",
            "model.kwargs.alpha=0.35",
            "dataset.shape=[32,32,3]",
            "dataset.train_size=64",
            "dataset.test_size=32",
            "criterion=magnitude",
            "finetune.epochs=0",  # one fit (masks through fine-tuning: test_criteria_cli)
        ),
        tiny=False,
    )
    assert proc.returncode == 0, proc.stderr
    (run,) = cli.runs()
    assert run.info.status == "FINISHED"
    expected = tf.keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )
    assert run.data.metrics["baseline.params"] == expected.count_params()
    assert run.data.metrics["finetuned.nonzero_params"] < expected.count_params()
    assert run.data.params["model.name"] == "MobileNetV2"
    assert run.data.params["model.kwargs.alpha"] == "0.35"


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["model=file"], ["model=file needs model.path="]),
        (["model=file", "model.path=/nonexistent/model.keras"], ["does not exist"]),
        (["model=file", "model.path={tmp}/notes.txt"], ["ends in .keras, .h5", "'.txt'"]),
        (["model=file", "model.path={tmp}/broken.keras"], ["cannot be read as a .keras"]),
        (["model=file", "model.path={tmp}/broken.h5"], ["cannot be read as an HDF5"]),
        (["model=file", "model.path={tmp}"], ["without saved_model.pb"]),
        (["model=builder"], ["model=builder needs model._target_="]),
        (["model=builder", "model._target_=x.y", "model.num_classes=3"], ["model.num_classes"]),
        (["model=keras_app"], ["model=keras_app needs model.name="]),
        (["model=keras_app", "model.name=VGG16", "model.kwargs.classes=3"], ["kwargs.classes"]),
        (["train.optimizer=rmsprop"], ["rmsprop", "adam, sgd, adamw"]),
        (["finetune.lr_schedule=step"], ["step", "constant, cosine"]),
        (["train.weight_decay=0.01"], ["train.optimizer=adamw"]),
        (["finetune.momentum=1"], ["finetune.momentum=1"]),
        (["surgery.engine=scalpel"], ["scalpel", "auto, kerassurgeon, native"]),
        (["model.keras=3", "surgery.engine=kerassurgeon"], ["kerassurgeon", "Keras 3", "native"]),
        (
            ["model.keras=3", "criterion=magnitude", "schedule=tfmot", "psize=0.5"],
            ["schedule=tfmot", "Keras 3", "schedule=gradual"],
        ),
        (["model=keras_app", "model.name=VGG16", "model.keras=4"], ["model.keras=4", "3"]),
    ],
)
def test_model_and_optimizer_mistakes_are_one_line_before_tensorflow(cli, overrides, needles):
    (cli.tmp / "notes.txt").write_text("not a model")
    (cli.tmp / "broken.keras").write_text("not a zip")
    (cli.tmp / "broken.h5").write_text("not hdf5")
    proc = cli(*job(*(o.format(tmp=cli.tmp) for o in overrides)), tiny=False)
    assert_one_line_error(proc, *needles)
    assert not cli.db.exists()  # refused before anything was written


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (
            ["model=file", "model.path={tmp}/small.keras"],
            ["takes inputs of shape 8x8x1", "12x12x1"],
        ),
        (["model=file", "model.path={tmp}/three.keras"], ["outputs 3 classes", "has 10"]),
        (["model=keras_app", "model.name=MobilenetV2"], ["did you mean MobileNetV2"]),
        # the other builder / application mistakes: the next test, in process
    ],
)
def test_a_model_that_does_not_fit_the_data_is_one_line_before_training(cli, overrides, needles):
    save_user_model(cli.tmp / "small.keras", input_shape=(8, 8, 1))
    save_user_model(cli.tmp / "three.keras", classes=3)
    proc = cli(*job(*(o.format(tmp=cli.tmp) for o in overrides)), tiny=False)
    assert_one_line_error(proc, *needles)
    assert "train.loss" not in "".join(m for r in cli.runs() for m in r.data.metrics)
    assert not cli.store.exists() or not any(cli.store.rglob("*.keras"))


@pytest.mark.parametrize(
    ("overrides", "shape", "needles"),
    [
        (["model=builder", "model._target_=nowhere.fn"], (12, 12, 1), ["nowhere.fn", "nowhere"]),
        (
            ["model=builder", "model._target_=examples.my_models.residual_cnn", "model.width=0"],
            (12, 12, 1),
            ["examples.my_models.residual_cnn", "ValueError", "width must be >= 1"],
        ),
        (
            ["model=keras_app", "model.name=MobileNetV2"],
            (28, 28, 1),
            ["MobileNetV2 needs inputs of at least 32x32; the dataset gives 28x28x1"],
        ),
        (
            ["model=keras_app", "model.name=MobileNetV2", "model.kwargs.alfa=1"],
            (32, 32, 3),
            ["takes no argument model.kwargs.alfa", "alpha"],
        ),
    ],
)
def test_builder_and_application_mistakes_name_the_fix(overrides, shape, needles):
    """What a job checks before training (its one-line form: the test above)."""
    from hydra import compose, initialize_config_dir

    from avlsi.config import register
    from avlsi.errors import UserError
    from avlsi.models import build_model, check_buildable

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with pytest.raises(UserError) as refused:
        check_buildable(cfg.model)
        build_model(cfg.model, shape, 10)
    assert all(needle in str(refused.value) for needle in needles), refused.value


CUSTOM_LAYERS = """
import tf_keras as keras


@keras.saving.register_keras_serializable(package="mine")
class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
"""


@pytest.mark.slow
def test_a_model_with_custom_layers_loads_with_model_imports(cli, monkeypatch):
    """Without its module the file is one line naming the class and `model.imports`; with
    `model.imports=[my_layers]` (a module in the folder the user runs in) it is pruned."""
    import importlib

    import tf_keras as keras

    (cli.tmp / "my_layers.py").write_text(CUSTOM_LAYERS)
    monkeypatch.syspath_prepend(str(cli.tmp))
    scale = importlib.import_module("my_layers").Scale
    inputs = keras.Input((12, 12, 1))
    x = scale()(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
    x = keras.layers.Conv2D(6, 3, activation="relu")(x)  # prunable: GAP, then the output
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(10)(x)).save(cli.tmp / "custom.keras")
    base = job("model=file", f"model.path={cli.tmp / 'custom.keras'}", "criterion=l1")
    assert_one_line_error(cli(*base, tiny=False), "mine>Scale", "model.imports=[MODULE]")
    wrong = cli(*base, "model.imports=[json]", tiny=False)  # imported, defines no layer
    assert_one_line_error(wrong, "mine>Scale", "model.imports=[json] did not define them")
    proc = cli(*base, "model.imports=[my_layers]", tiny=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [r for r in cli.runs() if r.info.status == "FINISHED"]
    assert run.data.metrics["pruned.params"] < run.data.metrics["baseline.params"]


def test_the_custom_layers_module_source_is_in_the_baseline_key(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from avlsi.keys import _model_parts

    (tmp_path / "layers_v.py").write_text("FACTOR = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from avlsi.config import FileModelConfig

    model = OmegaConf.merge(OmegaConf.structured(FileModelConfig), {"imports": ["layers_v"]})
    cfg = OmegaConf.create({"model": model})
    before = _model_parts(cfg)["imports"]["layers_v"]
    (tmp_path / "layers_v.py").write_text("FACTOR = 3\n")
    assert _model_parts(cfg)["imports"]["layers_v"] != before != "unknown"
