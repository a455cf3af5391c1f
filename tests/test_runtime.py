"""Measured latency, exported files and their sizes, criterion.round_to (issue 11).

In-process on tiny models (tf-keras and Keras 3), plus one CLI job read back from a real
sqlite MLflow store."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import avlsi  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from avlsi.config import check_config, register
from avlsi.data import Dataset
from avlsi.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf"
register()


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def tiny_data(shape=(8, 8, 1), classes: int = 3) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.random((40, *shape), dtype=np.float32)
    y = rng.integers(0, classes, 40)
    return Dataset("tiny", x[:24], y[:24], x[24:], y[24:], classes)


def tf_keras_model(shape=(8, 8, 1), classes: int = 3):
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def keras3_model(shape=(8, 8, 1), classes: int = 3):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes)(x)
    return keras.Model(inputs, outputs)


FAST = ["latency.runs=3", "latency.warmup=1", "latency.batch_sizes=[1,8]"]


# ---------------------------------------------------------------- latency


def test_timing_statistics_and_metric_names():
    from avlsi.latency import Timing, timing_metrics

    timings = [Timing(1, [0.001, 0.002, 0.003, 0.010]), Timing(8, [0.004, 0.004, 0.004])]
    metrics = timing_metrics(timings, "pruned")
    assert metrics["pruned.latency_ms"] == pytest.approx(2.5)  # median
    assert metrics["pruned.latency_p90_ms"] == pytest.approx(7.9)
    assert metrics["pruned.throughput"] == pytest.approx(2000)  # 8 images / 4 ms


def test_measured_speedups_are_ratios_to_the_baseline():
    from avlsi.latency import speedup_metrics

    metrics = {
        "baseline.throughput": 100.0,
        "baseline.latency_ms": 3.0,
        "pruned.throughput": 250.0,
        "pruned.latency_ms": 2.0,
    }
    out = speedup_metrics(metrics, "pruned")
    assert out == {"pruned.speedup_measured": 2.5, "pruned.speedup_measured_b1": 1.5}


def test_keras_timings_run_a_compiled_function_per_batch():
    from avlsi.latency import keras_timings

    timings = keras_timings(tf_keras_model(), [1, 8], warmup=1, runs=4)
    assert [t.batch for t in timings] == [1, 8]
    assert all(len(t.seconds) == 4 and min(t.seconds) > 0 for t in timings)


def test_threads_cannot_change_once_tensorflow_runs(caplog):
    from avlsi.latency import pin_threads, tf_threads

    tf_keras_model()  # the runtime has started
    now = tf_threads()
    assert pin_threads(now) == now
    assert pin_threads(now + 1) == now  # stays, and says so
    assert "stay in effect" in caplog.text


# ---------------------------------------------------------------- exports


def test_keras_file_has_no_optimizer_state(tmp_path):
    from avlsi.export import save_keras

    model = tf_keras_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    data = tiny_data()
    model.fit(data.x_train, data.y_train, epochs=1, verbose=0)
    model.save(tmp_path / "with.keras")
    save_keras(model, tmp_path / "without.keras")

    def optimizer_arrays(path) -> list[tuple]:
        import h5py

        with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as handle:
            found = []
            h5py.File(handle, "r").visititems(
                lambda name, item: (
                    found.append(item.shape)
                    if name.startswith("optimizer/") and isinstance(item, h5py.Dataset)
                    else None
                )
            )
            return found

    assert len(optimizer_arrays(tmp_path / "with.keras")) > 1  # Adam's moments
    assert optimizer_arrays(tmp_path / "without.keras") == [()]  # its step counter only
    assert (tmp_path / "without.keras").stat().st_size < (tmp_path / "with.keras").stat().st_size
    import tf_keras

    reloaded = tf_keras.models.load_model(tmp_path / "without.keras")
    assert type(reloaded.optimizer).__name__ == "Adam"  # the settings stay, the state goes


@pytest.mark.parametrize("which", ["tf_keras", "keras3"])
def test_every_format_is_written_measured_and_checked(tmp_path, which):
    from avlsi.runtime import model_files

    model = tf_keras_model() if which == "tf_keras" else keras3_model()
    quantize = "int8" if which == "tf_keras" else "float16"
    cfg = composed(
        *FAST, "export.formats=[keras,saved_model,tflite]", f"export.quantize={quantize}",
        "export.calibration_samples=8",
    )  # fmt: skip
    known = {f"baseline.{k}": 1.0 for k in ("throughput", "latency_ms", "tflite_throughput")}
    metrics, files = model_files(model, "pruned", cfg, tiny_data(), tmp_path, known)
    names = sorted(p.name for p in files)
    q = f"tflite_{quantize}"
    expected = ["pruned.keras", "pruned.saved_model", "pruned.tflite", f"pruned.{q}.tflite"]
    assert names == sorted(expected)
    for fmt in ("keras", "saved_model", "tflite", q):
        assert metrics[f"pruned.bytes.{fmt}"] > 0 and metrics[f"pruned.gzip_bytes.{fmt}"] > 0
    assert metrics["pruned.bytes.tflite"] == (tmp_path / "pruned.tflite").stat().st_size
    assert metrics["pruned.tflite_max_abs_diff"] <= 1e-4
    assert 0 <= metrics[f"pruned.test_accuracy.{q}"] <= 1
    if quantize == "int8":  # float16 adds dequantize ops: on a tiny model, no smaller
        assert metrics[f"pruned.bytes.{q}"] < metrics["pruned.bytes.tflite"]
    for key in ("latency_ms", "latency_p90_ms", "throughput", "tflite_latency_ms",
                "tflite_throughput", f"tflite_latency_ms.{q}", "speedup_measured",
                "tflite_speedup_measured", "speedup_measured_b1"):  # fmt: skip
        assert metrics[f"pruned.{key}"] > 0, key
    assert metrics["latency.threads"] >= 1
    assert (tmp_path / "pruned.saved_model" / "saved_model.pb").exists()


def test_a_tflite_model_that_differs_fails_in_one_line(tmp_path):
    from avlsi.export import ExportError, check_float_tflite, save_saved_model, tflite_bytes

    model = tf_keras_model()
    content = tflite_bytes(save_saved_model(model, tmp_path / "sm"))
    other = tf_keras_model()
    other.set_weights([w + 0.1 for w in model.get_weights()])
    x = tiny_data().x_test
    assert check_float_tflite(model, content, x, 1, "pruned") <= 1e-4
    with pytest.raises(ExportError) as caught:
        check_float_tflite(other, content, x, 1, "pruned")
    assert "\n" not in str(caught.value) and "float32 TFLite model of pruned" in str(caught.value)


def test_gzip_size_sees_zeroed_weights(tmp_path):
    from avlsi.export import sizes

    rng = np.random.default_rng(0)
    dense = rng.standard_normal(50_000).astype(np.float32)
    sparse = np.where(rng.random(50_000) < 0.9, 0, dense).astype(np.float32)
    (tmp_path / "dense").write_bytes(dense.tobytes())
    (tmp_path / "sparse").write_bytes(sparse.tobytes())
    (dense_bytes, dense_gzip), (sparse_bytes, sparse_gzip) = (
        sizes(tmp_path / "dense"), sizes(tmp_path / "sparse")
    )  # fmt: skip
    assert dense_bytes == sparse_bytes == 200_000
    assert sparse_gzip < 0.3 * dense_gzip


# ---------------------------------------------------------------- round_to


def test_kept_channels_round_up_to_a_multiple():
    from avlsi.select import kept_rounded, select_units

    assert kept_rounded(32, 10, 8) == 8  # 22 kept -> 24
    assert kept_rounded(32, 8, 8) == 8  # 24 kept already
    assert kept_rounded(10, 9, 8) == 2  # 1 kept -> 8
    assert kept_rounded(10, 1, 8) == 0  # 9 kept -> 16 > 10: the layer stays whole
    assert kept_rounded(32, 10, 1) == 10
    scores = {"a": np.arange(32.0)[::-1], "b": np.arange(20.0)}
    for scope in ("layerwise", "global"):
        chosen = select_units(scores, scope, 0.3, "none", 1, round_to=8)
        assert all((len(scores[n]) - len(idx)) % 8 == 0 for n, idx in chosen.items() if idx)
        assert chosen["a"] == list(range(24, 32))[: len(chosen["a"])] or scope == "global"
    layerwise = select_units(scores, "layerwise", 0.3, "none", 1, round_to=8)
    assert layerwise == {"a": list(range(24, 32)), "b": [0, 1, 2, 3]}  # lowest scores go


def test_round_to_that_removes_nothing_is_refused():
    from avlsi.graph import pruning_groups
    from avlsi.targets import Targets, select_group_units

    model = tf_keras_model()
    groups = [g for g in pruning_groups(model) if g.prunable]
    targets = Targets([model.get_layer(p) for g in groups for p in g.producers], groups)
    criterion = OmegaConf.create(
        {"scope": "layerwise", "normalize": "rms", "min_units": 1, "round_to": 8,
         "group_reduce": "mean"}
    )  # fmt: skip
    scores = {p: np.arange(4.0) for g in groups for p in g.producers}
    with pytest.raises(UserError, match="round_to=8 leaves every layer whole"):
        select_group_units(scores, targets, criterion, 0.5)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["criterion.round_to=0"], "criterion.round_to=0 must be at least 1"),
        (["criterion=magnitude", "criterion.round_to=8"], "zeroes single weights"),
        (["latency.batch_sizes=[]"], "latency.batch_sizes"),
        (["latency.runs=0"], "latency.runs >= 1"),
        (["latency.threads=0"], "latency.threads=0"),
        (["export.quantize=int8"], "add tflite to export.formats"),
    ],
)
def test_bad_settings_are_refused(overrides, needle):
    with pytest.raises(UserError, match=needle.replace("[", r"\[")):
        check_config(composed(*overrides))


# ---------------------------------------------------------------- one real job


@pytest.mark.slow
def test_a_job_records_latency_exports_and_rounded_channels(cli):
    """Latency, every format (quantized ones: in-process above) and round_to, through the
    real command line into a real sqlite MLflow store."""
    overrides = [o for o in TINY if not o.startswith("latency.")]
    proc = cli(
        *overrides, *FAST, "latency.threads=1", "export.formats=[keras,saved_model,tflite]",
        "criterion.round_to=2", "psize=0.5", tiny=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "XNNPACK" not in proc.stderr
    (run,) = cli.runs()
    metrics = run.data.metrics
    assert metrics["latency.threads"] == 1
    for stage in ("baseline", "pruned", "finetuned"):
        for key in ("latency_ms", "latency_p90_ms", "throughput", "tflite_latency_ms",
                    "bytes.keras", "gzip_bytes.keras", "bytes.saved_model", "bytes.tflite",
                    "gzip_bytes.tflite"):  # fmt: skip
            assert f"{stage}.{key}" in metrics, f"{stage}.{key}"
        assert metrics[f"{stage}.tflite_max_abs_diff"] <= 1e-4
    assert metrics["finetuned.speedup_measured"] > 0
    assert metrics["pruned.bytes.keras"] < metrics["baseline.bytes.keras"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cli.uri)
    models = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "models")}
    for stage in ("baseline", "pruned", "finetuned"):
        assert {f"{stage}.keras", f"{stage}.tflite", f"{stage}.saved_model"} <= models
    units = json.loads(
        Path(client.download_artifacts(run.info.run_id, "pruned_units.json")).read_text()
    )
    widths = {"conv1": 4, "conv2": 8, "conv3": 8, "dense0": 8}  # TINY's stack
    assert any(units.values())
    for layer, removed in units.items():
        assert (widths[layer] - len(removed)) % 2 == 0, (layer, removed)


# ---------------------------------------------------------------- the report


def test_report_sets_measured_speedup_beside_the_macs_one(tmp_path):
    from test_report import Store, job_metrics

    from avlsi.report import axes_of, make_report

    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    measured = {"baseline.throughput": 1000.0, "baseline.bytes.keras": 4e6}
    for criterion in ("l1", "random"):
        for psize, throughput in ((0.3, 1500.0), (0.5, 2000.0)):
            metrics = job_metrics("cnn", psize, 0.9, val=0.9)
            metrics |= measured | {"finetuned.throughput": throughput}
            metrics["finetuned.bytes.keras"] = 4e6 * (1 - psize)
            store.add("speed", metrics, criterion=criterion, psize=psize)
    result = make_report(store.uri, "speed", tmp_path / "report", log_to_mlflow=False)
    table = result.table.set_index(["criterion", "psize"])
    row = table.loc["l1", "0.5"]
    assert row["speedup_measured_mean"] == pytest.approx(2.0)
    assert row["kept_time_mean"] == pytest.approx(0.5)
    assert row["kept_bytes_mean"] == pytest.approx(0.5)
    assert row["speedup_ratio_mean"] == pytest.approx(2.0 / row["speedup_mean"])
    assert [axis[0] for axis in axes_of(result.table)][2:] == ["kept_time", "kept_bytes"]
    text = result.markdown.read_text()
    assert "| measured speed-up | measured / MACs |" in text and "| 2.00 |" in text
    # Runs without measurements: two columns of plots, no measured columns in the table.
    plain = Store(f"sqlite:///{tmp_path / 'plain.db'}")
    plain.add("plain", job_metrics("cnn", 0.5, 0.9, val=0.9), psize=0.5)
    result = make_report(plain.uri, "plain", tmp_path / "plain", log_to_mlflow=False)
    assert len(axes_of(result.table)) == 2
    assert "| measured speed-up |" not in result.markdown.read_text()
