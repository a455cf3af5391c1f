"""scripts/ui_check.py against a real store, a real `mlflow server` and headless Chromium."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_error

SCRIPT = ROOT / "scripts" / "ui_check.py"
SHOTS = ["ui_runs_table.png", "ui_run_page.png", "ui_models.png", "ui_chart.png"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="needs Debian's chromium for the MLflow UI check: apt-get install chromium",
)


def ui_check(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def load_script():
    spec = importlib.util.spec_from_file_location("ui_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ui_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def store_with_experiment(tmp_path: Path, name: str, runs: int = 0) -> Path:
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    exp_id = client.create_experiment(name, artifact_location=str(tmp_path / "mlartifacts"))
    for i in range(runs):
        client.create_run(exp_id, run_name=f"run-{i}")
    return db


@pytest.mark.slow
@needs_chromium
def test_ui_check_lists_the_runs_of_a_sweep_and_writes_screenshots(l1_random_sweep, tmp_path):
    cli, proc = l1_random_sweep  # -m criterion=l1,random psize=0.5
    assert proc.returncode == 0, proc.stderr
    # The sweep's jobs (test_report's test may have added a report's run to the store).
    names = {run.info.run_name for run in cli.runs() if "avlsi.report" not in run.data.tags}
    assert len(names) >= 2
    out, dom = tmp_path / "shots", tmp_path / "runs_table.html"

    check = ui_check("--db", cli.db, "--out", out, "--dom", dom)

    assert check.returncode == 0, check.stdout + check.stderr
    for shot in SHOTS:
        data = (out / shot).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, shot
        assert str(out / shot) in check.stdout.splitlines()
    html = dom.read_text()
    assert all(name in html for name in names)
    assert 'col-id="metrics.`finetuned.test_accuracy`"' in html  # the preset metric column
    # The same detector that passed says what is missing from this real page.
    problem = load_script().runs_table_problem(html, [*names, "no-such-run"])
    assert problem is not None and "no-such-run" in problem
    assert not any(name in problem for name in names)


def test_runs_table_problem_names_the_genai_overview():
    problem = load_script().runs_table_problem("Overview Token usage Latency", ["cnn-l1-p0.3"])
    assert "cnn-l1-p0.3" in problem and "GenAI overview" in problem


@pytest.mark.slow
def test_experiment_without_runs_fails_in_one_line(tmp_path):
    db = store_with_experiment(tmp_path, "empty")
    proc = ui_check("--db", db, "--experiment", "empty", "--out", tmp_path / "shots")
    assert_one_line_error(proc, "'empty'", "no runs", code=1)
    assert not (tmp_path / "shots").exists()


@pytest.mark.slow
def test_unknown_experiment_and_missing_store_fail_in_one_line(tmp_path):
    db = store_with_experiment(tmp_path, "avlsi", runs=1)
    assert_one_line_error(ui_check("--db", db, "--experiment", "nope"), "'nope'", "avlsi", code=1)
    missing = tmp_path / "none" / "mlflow.db"
    assert_one_line_error(ui_check("--db", missing), str(missing), "--db", code=1)
    proc = ui_check("--db", db, "--chromium", "/nonexistent/chromium")
    assert_one_line_error(proc, "apt-get install chromium", code=1)
