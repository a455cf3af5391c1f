"""The whole pipeline through the real command line, read back from a real MLflow store."""

from pathlib import Path

import pytest
from conftest import assert_one_line_error

METRICS = [
    f"{stage}.{what}"
    for stage in ("baseline", "pruned", "finetuned")
    for what in ("test_accuracy", "params", "nonzero_params", "macs", "macs_coverage")
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["dataset=fer2013"], ["dataset.path"]),
        (["dataset=fer2013", "dataset.path=/nonexistent/train.csv"], ["/nonexistent/train.csv"]),
        (["dataset=mnist", "dataset.path=/nonexistent/mnist.npz"], ["/nonexistent/mnist.npz"]),
    ],
)
def test_missing_data_file_is_one_line(cli, overrides, needles):
    proc = cli(*overrides, "train.epochs=1", tiny=False)
    assert_one_line_error(proc, *needles)
    assert not cli.store.exists() or not any(cli.store.rglob("*.keras"))


@pytest.mark.slow
def test_full_job_records_config_metrics_curves_and_models(cli):
    proc = cli("criterion=l1", "psize=0.5", "train.epochs=2")
    assert proc.returncode == 0, proc.stderr
    (run,) = cli.runs()
    assert run.info.status == "FINISHED"
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    assert set(METRICS) <= set(metrics)
    assert metrics["pruned.params"] < metrics["baseline.params"]
    assert metrics["finetuned.params"] == metrics["pruned.params"]
    assert metrics["pruned.macs"] < metrics["baseline.macs"]
    expected = {
        "model": "cnn",
        "dataset": "synthetic",
        "criterion": "l1",
        "stage": "all",
        "scope": "layerwise",
        "psize": "0.5",
        "seed": "0",
        "train.epochs": "2",
    }
    assert expected.items() <= params.items()
    assert tags["baseline.source"] == "trained"
    # Internals and absolute paths are not params; the chart view gets ratios to plot.
    assert not [k for k in params if k.endswith("_target_") or "layer_types" in k]
    assert not any(str(cli.tmp) in v for v in params.values())
    for stage in ("pruned", "finetuned"):
        assert 0 < metrics[f"{stage}.kept_params"] < 1
        assert 0 < metrics[f"{stage}.kept_macs"] < 1
        assert metrics[f"{stage}.compression"] > 1
        drop = 100 * (metrics["baseline.test_accuracy"] - metrics[f"{stage}.test_accuracy"])
        assert metrics[f"{stage}.accuracy_drop"] == pytest.approx(drop)
        assert 0 <= metrics[f"{stage}.val_accuracy"] <= 1
    for tag in ("avlsi.job_key", "avlsi.group_key", "avlsi.code", "avlsi.data"):
        assert tags[tag]
    assert run.info.run_name == "cnn-l1-layerwise-p0.5-s0-" + run.info.run_name[-6:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cli.uri)
    history = client.get_metric_history(run.info.run_id, "train.loss")
    assert [m.step for m in history] == [1, 2]
    names = {a.path for a in client.list_artifacts(run.info.run_id, "models")}
    assert names == {"models/baseline.keras", "models/pruned.keras", "models/finetuned.keras"}
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # The fine-tuned model is an MLflow model (the Models tab lists it) with a signature.
    (logged,) = client.search_logged_models([run.info.experiment_id])
    assert logged.source_run_id == run.info.run_id
    import mlflow

    mlflow.set_tracking_uri(cli.uri)
    info = mlflow.models.get_model_info(logged.model_uri)
    assert info.signature.inputs.inputs[0].shape == (-1, 12, 12, 1)
    inputs = {i.tags[0].value for i in run.inputs.dataset_inputs}
    assert inputs == {"train", "validation", "test"}
    run_dir = Path(tags["output_dir"])
    for name in ("baseline", "pruned", "finetuned"):
        assert (run_dir / f"{name}.keras").stat().st_size > 0
    # Artifacts sit beside the sqlite file, not wherever the job happened to run.
    assert run.info.artifact_uri.startswith(str(cli.tmp / "mlartifacts"))


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_numbers(cli):
    first = cli(
        "model=dnn", "model.dense_units=[16,16,8]", "criterion=random", "psize=0.5", "seed=3"
    )
    again = cli(
        "model=dnn",
        "model.dense_units=[16,16,8]",
        "criterion=random",
        "psize=0.5",
        "seed=3",
        "store.reuse=false",
        fresh=True,  # a new interpreter (another hash seed), not a fork of the same one
    )
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    runs = cli.runs()
    assert sorted(r.data.tags["baseline.source"] for r in runs) == ["trained", "trained"]
    a, b = (r.data.metrics for r in runs)
    for key in ("baseline.test_accuracy", "pruned.test_accuracy", "finetuned.test_accuracy"):
        assert a[key] == b[key]


@pytest.mark.slow
def test_stage_by_stage_each_finds_the_previous_model(cli):
    early = cli("stage=prune", "seed=7")
    assert_one_line_error(early, "no trained baseline", "stage=train")
    early = cli("stage=finetune", "seed=7")
    assert_one_line_error(early, "no pruned model", "stage=prune")
    assert cli.runs() == []

    for stage in ("train", "prune", "finetune"):
        proc = cli(f"stage={stage}", "seed=7")
        assert proc.returncode == 0, proc.stderr
    runs = {r.data.params["stage"]: r for r in cli.runs()}
    assert set(runs) == {"train", "prune", "finetune"}
    # stage=prune measures the stored baseline again beside the pruned model (latency.*)
    own = {"train": {"baseline"}, "prune": {"baseline", "pruned"}, "finetune": {"finetuned"}}
    # Each later stage's run is a complete record: it carries the earlier stages' metrics.
    recorded = {
        "train": {"baseline"},
        "prune": {"baseline", "pruned"},
        "finetune": {"baseline", "pruned", "finetuned"},
    }
    for stage, run in runs.items():
        prefixes = {k.split(".")[0] for k in run.data.metrics if k in METRICS}
        assert prefixes == recorded[stage], (stage, run.data.metrics)
        files = {p.stem for p in Path(run.data.tags["output_dir"]).glob("*.keras")}
        assert files == own[stage]
    final, train_run = runs["finetune"].data.metrics, runs["train"].data.metrics
    assert final["baseline.test_accuracy"] == train_run["baseline.test_accuracy"]
    assert final["pruned.test_accuracy"] == runs["prune"].data.metrics["pruned.test_accuracy"]
    assert final["finetuned.kept_params"] < 1
    assert runs["prune"].data.tags["baseline.source"] == "reused"
    assert runs["prune"].data.tags["baseline.key"] == runs["train"].data.tags["baseline.key"]


@pytest.mark.slow
def test_sweep_runs_every_job_and_a_failing_job_is_failed_not_fatal(cli):
    proc = cli("-m", "criterion.scope=layer", "criterion.layer=conv9,conv2", "psize=0.1,0.5")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "conv9" in proc.stderr
    runs = cli.runs()
    status = sorted((r.data.params["criterion.layer"], r.info.status) for r in runs)
    assert status == [("conv2", "FINISHED")] * 2 + [("conv9", "FAILED")] * 2
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert all("conv9" in r.data.tags["error"] for r in failed)
    sources = sorted(r.data.tags.get("baseline.source", "-") for r in runs)
    assert sources.count("trained") <= 1


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["model=resnet"], ["unknown model 'resnet'", "cnn, dnn, fer_cnn"]),
        (["criterion=nope"], ["unknown criterion 'nope'", "l1"]),
        (["psize=1.5"], ["psize=1.5", "(0, 1)"]),
        (["psize=0"], ["psize=0"]),
        (["psize=big"], ["psize=big"]),
        (["stage.steps=[train,finetune]"], ["stage.steps"]),
        (["criterion=gradient", "criterion.scope=global"], ["scope=global", "layerwise"]),
    ],
)
def test_bad_input_is_one_line_before_any_work(cli, overrides, needles):
    proc = cli(*overrides)
    assert_one_line_error(proc, *needles)
    assert cli.runs() == []
    assert not cli.store.exists() or not any(cli.store.rglob("*.keras"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["criterion.scope=layer", "criterion.layer=conv7"], ["no layer 'conv7'", "conv3"]),
        (["criterion.scope=layer"], ["criterion.layer=NAME"]),
        # an output layer or one without units (pool, Add): test_targets.py, in process
    ],
)
def test_bad_input_found_inside_a_job_is_one_line_and_leaves_nothing(cli, overrides, needles):
    proc = cli(*overrides)
    assert_one_line_error(proc, *needles)
    assert all(r.info.status == "FAILED" for r in cli.runs())
    assert not cli.store.exists() or not any(cli.store.rglob("*.keras"))


@pytest.mark.parametrize("overrides", [["psize=1.5"], ["criterion.scope=layer"], ["--help"]])
def test_a_command_line_forked_from_the_zygote_answers_as_a_fresh_interpreter(cli, overrides):
    """tests/zygote.py (imports done once, a fork per command line) changes nothing a user
    sees: the same exit code, stdout and stderr as `python run.py` in a new interpreter."""
    forked, fresh = cli(*overrides), cli(*overrides, fresh=True)
    assert (forked.returncode, forked.stderr) == (fresh.returncode, fresh.stderr)
    assert forked.stdout.replace("run1", "run2") == fresh.stdout.replace("run1", "run2")
