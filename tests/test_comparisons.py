"""What makes runs comparable: controls, keys that see code and data, sweeps as parent runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY, Cli


@pytest.mark.slow
def test_none_control_fine_tunes_the_unpruned_baseline(cli):
    proc = cli("criterion=none", "psize=0.7")
    assert proc.returncode == 0, proc.stderr
    (run,) = cli.runs()
    m, params = run.data.metrics, run.data.params
    assert m["pruned.params"] == m["baseline.params"]
    assert m["pruned.test_accuracy"] == m["baseline.test_accuracy"]
    assert m["finetuned.kept_params"] == pytest.approx(1.0, abs=1e-3)
    assert params["psize"] == "None" and params["criterion"] == "none"
    assert "p0.7" not in run.info.run_name


@pytest.mark.slow
def test_scratch_control_retrains_the_pruned_architecture(cli):
    proc = cli("criterion=l1", "psize=0.5", "finetune.init=scratch", "train.epochs=2")
    assert proc.returncode == 0, proc.stderr
    (run,) = cli.runs()
    m = run.data.metrics
    assert m["finetuned.params"] == m["pruned.params"] < m["baseline.params"]
    assert run.data.params["finetune.init"] == "scratch"
    assert "scratch" in run.info.run_name
    from mlflow.tracking import MlflowClient

    history = MlflowClient(cli.uri).get_metric_history(run.info.run_id, "finetune.loss")
    assert len(history) == 2 + 1  # train.epochs + finetune.epochs, from fresh weights


def _project_copy(tmp: Path) -> Path:
    """A copy of the project (package, configs, entry point, README) to edit in a test."""
    proj = tmp / "proj"
    for name in ("avlsi", "conf", "experiments"):
        shutil.copytree(ROOT / name, proj / name, symlinks=True)
    for name in ("run.py", "README.md"):
        shutil.copy(ROOT / name, proj / name)
    return proj


@pytest.mark.slow
def test_a_source_change_reruns_a_sweep_a_readme_change_does_not(tmp_path: Path):
    proj = _project_copy(tmp_path)
    cli = Cli(tmp_path)

    def sweep() -> str:
        args = [*TINY, "criterion=random", "psize=0.5", "finetune.epochs=0", *cli.paths()]
        proc = subprocess.run(
            [sys.executable, str(proj / "run.py"), "-m", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout + proc.stderr

    sweep()
    assert "skipped" in sweep()  # nothing changed: the finished job is not run again
    (proj / "README.md").write_text("edited\n")
    assert "skipped" in sweep()
    with open(proj / "avlsi" / "train.py", "a") as f:
        f.write("\n# a change to the code that computes results\n")
    assert "skipped" not in sweep()
    finished = [
        r for r in cli.runs() if r.info.status == "FINISHED" and "avlsi.code" in r.data.tags
    ]
    assert len({r.data.tags["avlsi.code"] for r in finished}) == 2
    sources = sorted(r.data.tags["baseline.source"] for r in finished)
    assert sources == ["trained", "trained"]  # the store key saw the code change too


def _write_fer(path: Path, seed: int, rows: int = 60) -> None:
    rng = np.random.default_rng(seed)
    lines = ["emotion,pixels"]
    for i in range(rows):
        pixels = " ".join(map(str, rng.integers(0, 256, 48 * 48)))
        lines.append(f"{(i + seed) % 7},{pixels}")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_a_data_file_replaced_in_place_trains_anew(cli, tmp_path: Path):
    data = tmp_path / "train.csv"
    _write_fer(data, seed=0)
    args = ["-m", "dataset=fer2013", f"dataset.path={data}", "psize=0.5"]
    overrides = [o for o in TINY if not o.startswith("dataset.")]
    common = [*args, *overrides]
    assert cli(*common, tiny=False).returncode == 0
    _write_fer(data, seed=1)  # same path, new content
    proc = cli(*common, tiny=False)
    assert proc.returncode == 0, proc.stderr
    assert "skipped" not in proc.stdout + proc.stderr
    runs = cli.runs()
    assert sorted(r.data.tags["baseline.source"] for r in runs) == ["trained", "trained"]
    assert len({r.data.tags["avlsi.data"] for r in runs}) == 2


@pytest.mark.slow
def test_sweep_is_a_parent_run_with_one_child_per_job_under_joblib(cli):
    proc = cli(
        "-m",
        "criterion.scope=layer",
        "criterion.layer=conv1,conv2",
        "psize=0.5",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    )
    assert proc.returncode == 0, proc.stderr
    runs = cli.runs(parents=True)
    (parent,) = [r for r in runs if r.data.tags.get("avlsi.sweep") == "true"]
    children = [r for r in runs if r is not parent]
    assert parent.info.status == "FINISHED"
    assert len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    names = sorted(r.info.run_name for r in children)
    assert len(set(names)) == 2 and "conv1" in names[0] and "conv2" in names[1]
    # Runs that differ only in their layer are different groups for the report.
    assert len({r.data.tags["avlsi.group_key"] for r in children}) == 2
