"""The report, from a real sqlite MLflow store of fake pruning runs, through the real CLI too."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_one_line_error
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from avlsi.errors import UserError
from avlsi.record import ensure_experiment
from avlsi.report import REPORT_TAG, main, make_report, pareto_front

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "report-test"
PARAMS = {"cnn": 467_818, "dnn": 669_706}
MACS = {"cnn": 12_000_000, "dnn": 669_000}
SEEDS = {"cnn": [0, 1, 2], "dnn": [0, 1]}
# Mean fine-tuned accuracy of each model x criterion at psize 0.1, 0.3, 0.5; each seed adds
# OFFSET * (seed - mean seed), so the mean over seeds is exactly this number.
FINETUNED = {
    ("cnn", "l1"): (0.970, 0.975, 0.940),
    ("cnn", "apoz"): (0.965, 0.950, 0.945),
    ("cnn", "random"): (0.960, 0.930, 0.900),
    ("dnn", "l1"): (0.960, 0.950, 0.930),
    ("dnn", "apoz"): (0.965, 0.940, 0.920),
    ("dnn", "random"): (0.950, 0.900, 0.850),
}
PSIZES = (0.1, 0.3, 0.5)
OFFSET = 0.004
# Hand-checked: sizes depend on psize only, so at each size the best criterion is the
# candidate, and a smaller model with at least its accuracy knocks it out.
PARETO = {
    "cnn": {("l1", 0.3), ("apoz", 0.5)},  # cnn l1@0.1 loses to l1@0.3 (smaller, better)
    "dnn": {("apoz", 0.1), ("l1", 0.3), ("l1", 0.5)},
}
COLUMNS = [
    "model",
    "dataset",
    "criterion",
    "scope",
    "psize",
    "n_seeds",
    "pareto",
    "baseline.test_accuracy_mean",
    "pruned.test_accuracy_mean",
    "finetuned.test_accuracy_mean",
    "finetuned.test_accuracy_std",
    "finetuned.params_mean",
    "finetuned.nonzero_params_mean",
    "finetuned.macs_mean",
    "kept_params_mean",
    "kept_macs_mean",
    "compression_mean",
    "speedup_mean",
]


def sizes(model: str, prefix: str, psize: float = 0.0) -> dict[str, float]:
    params = round(PARAMS[model] * (1 - psize))
    return {
        f"{prefix}.params": params,
        f"{prefix}.nonzero_params": params,
        f"{prefix}.macs": round(MACS[model] * (1 - psize) ** 2),
    }


def add_run(
    client,
    experiment_id,
    start,
    model,
    criterion,
    psize,
    seed,
    metrics,
    status="FINISHED",
    stage="all",
):
    params = {
        "model": model,
        "dataset": "mnist",
        "criterion": criterion,
        "stage": stage,
        "scope": "layerwise",
        "psize": str(psize),
        "seed": str(seed),
        "criterion.scope": "layerwise",
        "train.epochs": "1",
    }
    tags = {"stage": stage, "baseline.source": "reused", "baseline.key": f"{model}-s{seed}"}
    run = client.create_run(
        experiment_id, start_time=start, run_name=f"{model}-{criterion}-p{psize}-s{seed}"
    )
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), start, 0) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    client.set_terminated(run.info.run_id, status)


def fake_metrics(model, criterion, psize, seed, finetuned=None):
    middle = sum(SEEDS[model]) / len(SEEDS[model])
    offset = OFFSET * (seed - middle)
    if finetuned is None:
        finetuned = FINETUNED[model, criterion][PSIZES.index(psize)] + offset
    return {
        "baseline.test_accuracy": 0.99 + offset / 4,
        **sizes(model, "baseline"),
        "pruned.test_accuracy": finetuned - 0.3 * psize,
        **sizes(model, "pruned", psize),
        "finetuned.test_accuracy": finetuned,
        **sizes(model, "finetuned", psize),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A sqlite store: the sweep, one older duplicate, a FAILED run, a stage=train run."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(uri, EXPERIMENT)
    start = 1_700_000_000_000
    # Older run of cnn/l1/0.1/seed 0 that a rerun replaced: must not be counted.
    add_run(
        client,
        experiment_id,
        start,
        "cnn",
        "l1",
        0.1,
        0,
        fake_metrics("cnn", "l1", 0.1, 0, finetuned=0.5),
    )
    for (model, criterion), _ in FINETUNED.items():
        for psize in PSIZES:
            for seed in SEEDS[model]:
                start += 1000
                add_run(
                    client,
                    experiment_id,
                    start,
                    model,
                    criterion,
                    psize,
                    seed,
                    fake_metrics(model, criterion, psize, seed),
                )
    add_run(
        client,
        experiment_id,
        start + 1000,
        "cnn",
        "l1",
        0.3,
        3,
        fake_metrics("cnn", "l1", 0.3, 3, finetuned=0.1),
        status="FAILED",
    )
    add_run(
        client,
        experiment_id,
        start + 2000,
        "cnn",
        "l1",
        0.3,
        4,
        {"baseline.test_accuracy": 0.5, **sizes("cnn", "baseline")},
        stage="train",
    )
    # An experiment without a single usable run.
    empty = ensure_experiment(uri, "no-pruning-runs")
    add_run(
        client,
        empty,
        start,
        "cnn",
        "l1",
        0.3,
        0,
        fake_metrics("cnn", "l1", 0.3, 0),
        status="FAILED",
    )
    add_run(
        client, empty, start, "cnn", "l1", 0.3, 0, {"baseline.test_accuracy": 0.9}, stage="train"
    )
    return uri


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    return make_report(store, EXPERIMENT, tmp_path_factory.mktemp("report"), log_to_mlflow=False)


def report_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "avlsi.report", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def row(table: pd.DataFrame, model: str, criterion: str, psize: float) -> pd.Series:
    (index,) = table.index[
        (table["model"] == model) & (table["criterion"] == criterion) & (table["psize"] == psize)
    ]
    return table.loc[index]


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 10_000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def report_runs(uri: str):
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return client.search_runs([experiment_id], f"tags.`{REPORT_TAG}` = 'true'")


def test_cli_writes_plots_tables_and_a_report_run(store, tmp_path):
    before = len(report_runs(store))
    out = tmp_path / "out"
    proc = report_cli(
        "--tracking-uri", store, "--experiment", EXPERIMENT, "--out", str(out), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    expected = ["report.csv", "report.md", "accuracy_cnn_mnist.png", "accuracy_dnn_mnist.png"]
    for name in expected:
        assert str(out / name) in proc.stdout  # says where the files went
    for name in expected[2:]:
        assert_png(out / name)
    table = pd.read_csv(out / "report.csv")
    assert len(table) == 2 * 3 * 3
    assert set(COLUMNS) <= set(table.columns)
    markdown = (out / "report.md").read_text()
    assert "| cnn | mnist | l1 | layerwise | 0.3 | 3 | 0.700 |" in markdown
    assert "| 0.9750 ± 0.0040 | yes |" in markdown
    assert "45 runs" in proc.stdout

    runs = report_runs(store)
    assert len(runs) == before + 1
    run = max(runs, key=lambda r: r.info.start_time)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "report"
    client = MlflowClient(store)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == set(expected)
    assert run.info.run_id in proc.stdout


def test_means_stds_and_seed_counts(report):
    table = report.table
    assert report.n_runs == 45  # the FAILED, stage=train and replaced runs are not counted
    assert len(table) == 18 and set(table["scope"]) == {"layerwise"}
    cnn = row(table, "cnn", "l1", 0.3)
    assert cnn["n_seeds"] == 3
    assert cnn["finetuned.test_accuracy_mean"] == pytest.approx(0.975)
    assert cnn["finetuned.test_accuracy_std"] == pytest.approx(OFFSET)  # of -o, 0, +o
    assert cnn["pruned.test_accuracy_mean"] == pytest.approx(0.975 - 0.09)
    assert cnn["baseline.test_accuracy_mean"] == pytest.approx(0.99)
    kept = round(PARAMS["cnn"] * 0.7)
    assert cnn["finetuned.nonzero_params_mean"] == kept
    assert cnn["kept_params_mean"] == pytest.approx(kept / PARAMS["cnn"])
    assert cnn["compression_mean"] == pytest.approx(PARAMS["cnn"] / kept)
    macs = round(MACS["cnn"] * 0.49)
    assert cnn["kept_macs_mean"] == pytest.approx(macs / MACS["cnn"])
    assert cnn["speedup_mean"] == pytest.approx(MACS["cnn"] / macs)
    assert cnn["finetuned.params_std"] == 0
    assert row(table, "cnn", "l1", 0.1)["finetuned.test_accuracy_mean"] == pytest.approx(0.970)
    dnn = row(table, "dnn", "random", 0.5)
    assert dnn["n_seeds"] == 2
    assert dnn["finetuned.test_accuracy_mean"] == pytest.approx(0.850)
    assert dnn["finetuned.test_accuracy_std"] == pytest.approx(OFFSET / math.sqrt(2))
    assert any("older runs" in note for note in report.notes)
    assert any("ignored 1 finished runs" in note for note in report.notes)  # stage=train


def test_pareto_points_are_the_hand_checked_ones(report):
    table = report.table
    for model, expected in PARETO.items():
        mine = table[(table["model"] == model) & table["pareto"]]
        assert set(zip(mine["criterion"], mine["psize"], strict=True)) == expected


def test_pareto_front_keeps_the_best_accuracy_for_its_size():
    size = [0.5, 0.5, 0.7, 0.7, 0.9, 0.3, float("nan")]
    accuracy = [0.90, 0.95, 0.95, 0.96, 0.94, 0.80, 0.99]
    # 0.5/0.95 knocks out 0.5/0.90 (same size), 0.7/0.95 (tie, smaller) and 0.9/0.94.
    assert pareto_front(size, accuracy).tolist() == [False, True, False, True, False, True, False]


def test_pareto_sizes_a_few_zero_weights_apart_count_as_equal():
    # One psize, three criteria: random keeps 2 fewer non-zero weights out of 20,000
    # (0.01%) but is far less accurate; it is not the best accuracy for its size.
    size = [0.13690, 0.13689, 0.13680]
    accuracy = [0.42, 0.56, 0.37]
    assert pareto_front(size, accuracy).tolist() == [False, True, False]
    assert pareto_front([0.10, 0.137], [0.37, 0.56]).tolist() == [True, True]


def test_report_run_holds_the_files(store, tmp_path):
    result = make_report(store, EXPERIMENT, tmp_path / "out")
    client = MlflowClient(store)
    run = client.get_run(result.run_id)
    assert run.data.tags[REPORT_TAG] == "true"
    assert run.data.params["n_runs"] == "45"
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert names == {path.name for path in result.files}
    copy = client.download_artifacts(result.run_id, "report.csv", str(tmp_path))
    assert Path(copy).read_text() == result.csv.read_text()
    # A second report reads the same runs: report runs are never counted as pruning runs.
    assert make_report(store, EXPERIMENT, tmp_path / "again", log_to_mlflow=False).n_runs == 45


def test_one_seed_one_psize_and_no_random(store, tmp_path):
    only = "params.seed = '0' and params.psize = '0.3' and params.criterion != 'random'"
    result = make_report(store, EXPERIMENT, tmp_path, log_to_mlflow=False, filter_string=only)
    table = result.table
    assert len(table) == 4 and set(table["n_seeds"]) == {1}
    assert table["finetuned.test_accuracy_std"].isna().all()
    assert sum("no random-pruning runs" in note for note in result.notes) == 2
    for path in result.plots:
        assert_png(path)
    assert "no random-pruning runs" in result.markdown.read_text()


def test_no_usable_runs_in_process_is_a_user_error(store, tmp_path):
    with pytest.raises(UserError, match="no finished pruning runs"):
        make_report(store, "no-pruning-runs", tmp_path, log_to_mlflow=False)


def test_unknown_experiment_is_one_line_listing_the_experiments(store, tmp_path):
    proc = report_cli(
        "--tracking-uri",
        store,
        "--experiment",
        "nope",
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "no experiment 'nope'", EXPERIMENT, "no-pruning-runs", code=2)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--experiment", "no-pruning-runs"], ["no finished pruning runs", "1 FAILED"]),
        (["--experiment", EXPERIMENT, "--filter", "params.model ~ 'x'"], ["--filter"]),
        (
            ["--experiment", EXPERIMENT, "--filter", "params.model = 'vgg'"],
            ["no finished pruning runs", "vgg"],
        ),
    ],
)
def test_bad_input_is_one_line(store, tmp_path, capsys, args, needles):
    """In-process through main() (the subprocess tests cover `python -m avlsi.report`)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--tracking-uri", store, "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    exited = subprocess.CompletedProcess([], exit_info.value.code, "", err)
    assert_one_line_error(exited, *needles, code=2)
    assert not (tmp_path / "out").exists()


def test_missing_store_is_one_line_and_creates_nothing(tmp_path):
    db = tmp_path / "nowhere" / "mlflow.db"
    proc = report_cli(
        "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "out"), cwd=tmp_path
    )
    assert_one_line_error(proc, str(db), code=2)
    assert not db.exists() and not db.parent.exists()
