"""Sweeps through the real launchers, the baseline store, and the end-of-sweep report."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_error

# Three jobs: on two joblib workers one worker runs two of them, one after the other.
SWEEP = ["criterion=l1,random,taylor", "psize=0.6"]


def outcome(runs) -> dict:
    """(criterion, psize) -> the numbers a leaking job would disturb."""
    return {
        (r.data.params["criterion"], r.data.params["psize"]): (
            r.data.metrics["pruned.params"],
            r.data.metrics["finetuned.test_accuracy"],
            r.data.metrics["finetune.loss"],
        )
        for r in runs
    }


def job_runs(cli):
    return [r for r in cli.runs() if "avlsi.report" not in r.data.tags]


def assert_all_landed_with_one_baseline(cli, proc, jobs: int):
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = job_runs(cli)
    assert len(runs) == jobs
    assert {r.info.status for r in runs} == {"FINISHED"}
    sources = sorted(r.data.tags["baseline.source"] for r in runs)
    assert sources == ["reused"] * (jobs - 1) + ["trained"]
    assert len({r.data.tags["baseline.key"] for r in runs}) == 1
    return runs


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The reference: the same sweep run job after job in one process."""
    from conftest import Cli

    cli = Cli(tmp_path_factory.mktemp("serial"))
    proc = cli("-m", *SWEEP)
    return outcome(assert_all_landed_with_one_baseline(cli, proc, 3))


@pytest.mark.slow
def test_joblib_sweep_trains_once_matches_serial_and_reports(cli, serial):
    proc = cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SWEEP,
        "report.after_sweep=true",
    )  # fmt: skip
    runs = assert_all_landed_with_one_baseline(cli, proc, 3)
    # Two workers ran three jobs: a job that saw its predecessor's Keras, random or MLflow
    # state would not reproduce the serial sweep's numbers.
    assert outcome(runs) == serial
    report = next(cli.tmp.glob("sweep*/report"))
    assert {"report.csv", "report.md"} <= {p.name for p in report.iterdir()}
    assert list(report.glob("*.png"))
    # The sweep is one parent run holding the report; each job is its child.
    (parent,) = [r for r in cli.runs(parents=True) if r.data.tags.get("avlsi.sweep") == "true"]
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    from mlflow.tracking import MlflowClient

    def files(path=None):
        found = MlflowClient(cli.uri).list_artifacts(parent.info.run_id, path)
        return [n for a in found for n in (files(a.path) if a.is_dir else [a.path])]

    assert any(name.endswith("report.md") for name in files())
    assert not [r for r in cli.runs() if r.data.tags.get("avlsi.report") == "true"]


@pytest.mark.slow
def test_ray_sweep_on_a_local_instance_trains_once(cli, serial):
    # Two of the jobs (each Ray task is a fresh process: nothing can leak between them).
    proc = cli("-m", "cluster=ray", "hydra.launcher.ray.init.num_cpus=2", "criterion=l1,random",
               "psize=0.6")  # fmt: skip
    runs = assert_all_landed_with_one_baseline(cli, proc, 2)
    assert outcome(runs) == {key: serial[key] for key in [("l1", "0.6"), ("random", "0.6")]}
    # Jobs in Ray's worker processes attach to the sweep's parent run by its id.
    (parent,) = [r for r in cli.runs(parents=True) if r.data.tags.get("avlsi.sweep") == "true"]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}


def test_cluster_sweep_with_a_sqlite_store_is_refused_before_launching(cli):
    for overrides in (
        ["cluster=slurm"],
        ["cluster=ray", "hydra.launcher.ray.init.address=10.0.0.1:6379"],
    ):
        proc = cli("-m", *overrides, "psize=0.1,0.2")
        assert_one_line_error(proc, "tracking server", code=2)
        assert cli.runs() == []


def test_slurm_config_selects_submitit_and_keeps_overrides(cli):
    proc = cli("--cfg=hydra", "--package=hydra.launcher", "cluster=slurm",
               "hydra.launcher.partition=cpu")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "submitit" in proc.stdout and "partition: cpu" in proc.stdout


@pytest.mark.slow
def test_corrupt_store_entry_is_rebuilt_and_clear_empties_the_store(cli):
    assert cli("stage=train").returncode == 0
    models = list(cli.store.glob("baselines/*/model.keras"))
    assert len(models) == 1
    models[0].write_bytes(models[0].read_bytes()[:1000])  # a truncated file

    proc = cli("stage=train")
    assert proc.returncode == 0, proc.stderr
    assert "corrupt" in proc.stdout + proc.stderr
    proc = cli("stage=prune")
    assert proc.returncode == 0, proc.stderr
    sources = sorted(r.data.tags["baseline.source"] for r in cli.runs())
    assert sources == ["reused", "trained", "trained"]

    clear = subprocess.run(
        [sys.executable, "-m", "avlsi.store", "--dir", str(cli.store), "--clear"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert clear.returncode == 0, clear.stderr
    assert "removed 2 " in clear.stdout  # the baseline and the pruned model
    assert not list(Path(cli.store).glob("*/*/model.keras"))
    assert "no trained baseline" in cli("stage=prune").stderr


@pytest.mark.slow
def test_a_sweep_run_again_only_runs_what_is_missing(cli):
    untuned = "finetune.epochs=0"  # what is run or skipped matters here, not the numbers
    assert cli("-m", "psize=0.3", untuned).returncode == 0
    first = {r.info.run_id for r in cli.runs()}
    proc = cli("-m", "psize=0.3,0.6", untuned)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("skipped: this job FINISHED before") == 1
    runs = cli.runs()
    assert len(runs) == 2 and first <= {r.info.run_id for r in runs}
    assert len({r.data.tags["avlsi.job_key"] for r in runs}) == 2

    assert cli("-m", "psize=0.3", "rerun=true", untuned).returncode == 0
    assert len(cli.runs()) == 3
    assert cli("psize=0.3", untuned).returncode == 0  # a single run always runs
    assert len(cli.runs()) == 4


def test_a_sweep_without_its_data_file_stops_once_before_any_job(cli):
    proc = cli("-m", "dataset=fer2013", "model=fer_cnn", "psize=0.1,0.2", tiny=False)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["avlsi: error: dataset=fer2013 needs dataset.path=/path/to/train.csv"]
    assert cli.runs() == []
    assert not list(cli.tmp.glob("sweep*/0"))
