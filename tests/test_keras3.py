"""Keras 3 models in the job's parts, in-process: a built-in stack in Keras 3 runs a whole job
(masks held through fine-tuning, the baseline stored as Keras 3 and reloaded as Keras 3);
files of either Keras are recognised and loaded with it; builders and keras.applications in
Keras 3; criteria and multiply-adds give the same numbers in both Kerases."""

import importlib
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from avlsi.config import KerasAppConfig, ModelConfig, register
from avlsi.criteria import ScoringContext
from avlsi.errors import UserError
from avlsi.kerasapi import is_keras3
from avlsi.kerasjob import load_model
from avlsi.metrics import macs_report
from avlsi.models import build_model
from avlsi.models.file import keras_version_of

CONF = Path(__file__).resolve().parents[1] / "conf"
SMALL = ["dataset=synthetic", "dataset.shape=[12,12,1]", "dataset.train_size=64"]
SMALL += ["dataset.test_size=32", "model.conv_filters=[4,8]", "model.dense_units=[8]"]
SMALL += ["train.epochs=1", "finetune.epochs=1", "train.batch_size=32", "criterion.samples=16"]
SMALL += ["finetune.batch_size=32", "finetune.learning_rate=0.01", "model.keras=3"]


def job(tmp_path: Path, *overrides: str):
    """Run one job in this process (as run.py would) with SMALL settings; its MLflow run."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from avlsi.pipeline import run_job

    paths = [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"store.dir={tmp_path}/s"]
    register()  # the schemas, as run.py registers them
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*SMALL, *overrides, *paths])
    choices = {"model": "cnn", "dataset": "synthetic", "criterion": cfg.criterion.name}
    out = tmp_path / f"run-{cfg.criterion.name}"
    before = mlflow.get_tracking_uri()
    try:
        run_job(cfg, out, {**choices, "stage": "all"})
    finally:
        mlflow.set_tracking_uri(before)  # as it was, for the tests after this one
    client = MlflowClient(cfg.mlflow.tracking_uri)
    (found,) = client.search_runs(
        [client.get_experiment_by_name("avlsi").experiment_id],
        f"tags.output_dir = '{out}'",
    )
    return found, out


def test_a_keras3_stack_job_holds_its_masks_through_finetuning_and_stores_keras3(tmp_path):
    run, out = job(tmp_path, "criterion=magnitude", "psize=0.5")
    pruned, tuned = (load_model(out / f"{s}.keras") for s in ("pruned", "finetuned"))
    assert is_keras3(pruned) and is_keras3(tuned)
    masked = 0
    for layer in pruned.layers:
        if hasattr(layer, "kernel"):
            before = layer.get_weights()[0]
            after = tuned.get_layer(layer.name).get_weights()[0]
            zeros = before == 0
            masked += zeros.mean() == pytest.approx(0.5, abs=0.02)
            assert np.all(after[zeros] == 0), layer.name  # held at zero through fine-tuning
            assert np.mean(after[~zeros] != before[~zeros]) > 0.5, layer.name  # the rest trained
    assert masked >= 2
    assert run.data.tags["baseline.source"] == "trained"
    assert "surgery.engine_used" not in run.data.params  # nothing was cut out

    # The store keeps a Keras 3 baseline as a Keras 3 file, and it comes back as Keras 3.
    (entry,) = (tmp_path / "s" / "baselines").glob("*/model.keras")
    assert keras_version_of(entry) == 3 and is_keras3(load_model(entry))


def test_files_are_loaded_with_the_keras_that_saved_them(tmp_path):
    models = {}
    for version, package in ((2, tf.keras), (3, keras)):
        models[version] = package.Sequential(
            [
                package.Input((6,)),
                package.layers.Dense(4, activation="relu"),
                package.layers.Dense(3),
            ]
        )
    models[3].set_weights(models[2].get_weights())
    x = np.random.default_rng(0).random((5, 6), dtype=np.float32)
    for version, model in models.items():
        for suffix in (".keras", ".h5"):
            path = tmp_path / f"v{version}{suffix}"
            model.save(path)
            assert keras_version_of(path) == version
            loaded = load_model(path)
            assert is_keras3(loaded) == (version == 3)
            np.testing.assert_allclose(loaded.predict(x, verbose=0), models[2](x), atol=1e-6)


def keras3_builder(input_shape, num_classes, width=4):
    """A user's builder written with plain Keras 3."""
    return keras.Sequential(
        [keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(width),
         keras.layers.Dense(num_classes)]
    )  # fmt: skip


def test_a_builder_may_return_a_keras3_model_and_model_keras_is_checked():
    cfg = OmegaConf.create({"_target_": f"{__name__}.keras3_builder", "name": "builder"})
    assert is_keras3(build_model(cfg, (4, 4, 1), 3))
    # model.keras is passed on like any other key, and the model must then be of that Keras
    wrong = OmegaConf.create({"_target_": f"{__name__}.tf_keras_builder", "keras": 3})
    with pytest.raises(UserError, match="returned a tf-keras model, but model.keras=3"):
        build_model(wrong, (4, 4, 1), 3)


def tf_keras_builder(input_shape, num_classes, keras=2):
    """A builder that takes `keras` but builds with tf-keras whatever it says."""
    return tf.keras.Sequential([tf.keras.Input(input_shape), tf.keras.layers.Flatten(),
                                tf.keras.layers.Dense(num_classes)])  # fmt: skip


def test_keras_applications_count_the_same_multiply_adds_in_both_kerases():
    """Keras 3's nodes hold tensors, not shapes: depthwise, BN, pointwise, dense all counted."""
    counts = {}
    for version in (2, 3):
        cfg = OmegaConf.structured(
            KerasAppConfig(name="MobileNetV2", kwargs={"alpha": 0.35}, keras=version)
        )
        model = build_model(cfg, (32, 32, 3), 10)
        assert is_keras3(model) == (version == 3)
        report = macs_report(model)
        counts[version] = (report.total, report.coverage, model.count_params())
    assert counts[2] == counts[3] and counts[3][0] > 1_000_000 and counts[3][1] == 1.0


@pytest.mark.parametrize(
    "name", ["l1", "mean_activation", "apoz", "gradient", "taylor", "grad_activation"]
)
def test_criteria_score_a_keras3_model_as_its_tf_keras_twin(name):
    cfg = {
        v: OmegaConf.structured(
            ModelConfig(name="cnn", conv_filters=[4, 6], dense_units=[8], batch_norm=True, keras=v)
        )
        for v in (2, 3)
    }
    twins = {v: build_model(c, (10, 10, 1), 5) for v, c in cfg.items()}
    twins[3].set_weights(twins[2].get_weights())
    rng = np.random.default_rng(1)
    context = ScoringContext(x=rng.random((12, 10, 10, 1), dtype=np.float32),
                             y=rng.integers(0, 5, 12), seed=0, batch_size=8)  # fmt: skip
    score = importlib.import_module(f"avlsi.criteria.{name}").score
    found = {
        v: score(m, [m.get_layer(n) for n in ("conv0", "conv1", "dense0")], context)
        for v, m in twins.items()
    }
    for layer, scores in found[2].items():
        np.testing.assert_allclose(found[3][layer], scores, rtol=1e-5, atol=1e-7)
