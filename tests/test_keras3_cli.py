"""Keras 3 end to end through the real command line: a model saved by plain Keras 3 code (in
a process without AVLSI) is pruned by the native engine and fine-tuned; the job's files load
with plain Keras 3 again and predict what the job measured. (A Keras 3 stack's whole job,
masks and store included, runs in-process in test_keras3.py.)"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY

# Plain Keras 3, no AVLSI, no TF_USE_LEGACY_KERAS: what a user writes today.
SAVE_MODEL_AND_DATA = """
import sys
import numpy as np
import keras

keras.utils.set_random_seed(0)
L = keras.layers
inputs = keras.Input((12, 12, 1))
x = L.Conv2D(6, 3, padding="same")(inputs)
x = L.BatchNormalization()(x)
x = L.ReLU()(x)
x = L.MaxPooling2D()(x)
y = L.Conv2D(6, 3, padding="same", activation="relu")(x)
y = L.Conv2D(6, 3, padding="same")(y)
x = L.Activation("relu")(L.Add()([x, y]))
x = L.GlobalAveragePooling2D()(x)
x = L.Dense(16, activation="relu")(x)
outputs = L.Dense(10)(x)
keras.Model(inputs, outputs).save(sys.argv[1])

rng = np.random.default_rng(0)
sizes = {"train": 96, "test": 48}
data = {f"x_{s}": rng.random((n, 12, 12, 1), dtype=np.float32) for s, n in sizes.items()}
data |= {f"y_{s}": rng.integers(0, 10, n) for s, n in sizes.items()}
np.savez(sys.argv[2], **data)
"""

# Plain Keras 3 again: load the job's files, predict the test set.
PREDICT = """
import sys
import numpy as np
import keras

x = np.load(sys.argv[1])["x_test"]
out = {}
for path in sys.argv[3:]:
    model = keras.saving.load_model(path)
    out[path.rsplit("/", 1)[-1].split(".")[0]] = model.predict(x, verbose=0)
np.savez(sys.argv[2], **out)
"""


def plain_keras3(code: str, *args) -> None:
    """Run `code` with plain Keras 3 in a fresh process without AVLSI (nor tf-keras)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def logged_flavours(cli, run) -> set[str]:
    import mlflow
    from mlflow.tracking import MlflowClient

    (logged,) = MlflowClient(cli.uri).search_logged_models([run.info.experiment_id])
    mlflow.set_tracking_uri(cli.uri)
    return set(mlflow.models.get_model_info(logged.model_uri).flavors)


@pytest.mark.slow
def test_a_model_saved_by_plain_keras3_is_pruned_and_finetuned(cli):
    model_file, data_file = cli.tmp / "m.keras", cli.tmp / "data.npz"
    plain_keras3(SAVE_MODEL_AND_DATA, model_file, data_file)
    sections = ("train", "finetune", "criterion")
    settings = {o.split("=")[0]: o for o in TINY if o.split("=")[0].split(".")[0] in sections}
    del settings["train.epochs"]  # model=file: the file is the baseline, not trained
    proc = cli(
        "model=file",
        f"model.path={model_file}",
        "dataset=npz",
        f"dataset.path={data_file}",
        "criterion=l1",
        "psize=0.5",
        *settings.values(),
        tiny=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "surgery with the native engine" in proc.stderr + proc.stdout
    (run,) = cli.runs()
    metrics, params = run.data.metrics, run.data.params
    assert run.info.status == "FINISHED"
    assert params["surgery.engine"] == "auto" and params["surgery.engine_used"] == "native"
    assert metrics["pruned.params"] < metrics["baseline.params"]
    assert metrics["pruned.macs"] < metrics["baseline.macs"]
    assert metrics["pruned.macs_coverage"] == 1.0
    assert metrics["pruned.equivalence_error"] < 1e-5
    assert [m.step for m in cli_history(cli, run, "finetune.loss")] == [1]
    assert logged_flavours(cli, run) >= {"keras"} and "tensorflow" not in logged_flavours(cli, run)

    run_dir = Path(run.data.tags["output_dir"])
    files = [run_dir / "pruned.keras", run_dir / "finetuned.keras"]
    predictions = cli.tmp / "predictions.npz"
    plain_keras3(PREDICT, data_file, predictions, *files)
    found, y_test = np.load(predictions), np.load(data_file)["y_test"]
    from avlsi.kerasapi import is_keras3
    from avlsi.kerasjob import load_model

    x_test = np.load(data_file)["x_test"]
    for stage in ("pruned", "finetuned"):
        accuracy = float(np.mean(found[stage].argmax(axis=1) == y_test))
        assert accuracy == pytest.approx(metrics[f"{stage}.test_accuracy"])
        model = load_model(run_dir / f"{stage}.keras")  # as AVLSI reloads it: Keras 3
        assert is_keras3(model) and model.count_params() == metrics[f"{stage}.params"]
        np.testing.assert_allclose(model.predict(x_test, verbose=0), found[stage], atol=1e-6)


def cli_history(cli, run, key: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(cli.uri).get_metric_history(run.info.run_id, key)
