"""The report and the sweep's table, from real sqlite MLflow stores of fake job runs.

Runs are written with MlflowClient the way jobs record them (the params, tags and metrics
of the data contract), plus runs the way older AVLSI versions recorded them.
"""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, Cli, assert_one_line_error
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from avlsi.errors import UserError
from avlsi.hydra_callbacks import format_jobs, sweep_jobs
from avlsi.record import ensure_experiment
from avlsi.report import REPORT_TAG, main, make_report, pareto_front

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
# Hand-checked with validation accuracy = test accuracy: sizes depend on psize only, so at
# each size the best criterion is the candidate, and a smaller model at least as good
# knocks it out.
PARETO = {
    "cnn": {("l1", "0.3"), ("apoz", "0.5")},  # cnn l1@0.1 loses to l1@0.3 (smaller, better)
    "dnn": {("apoz", "0.1"), ("l1", "0.3"), ("l1", "0.5")},
}
COLUMNS = [
    "model",
    "dataset",
    "series",
    "criterion",
    "scope",
    "psize",
    "n_seeds",
    "pareto",
    "pareto_by",
    "baseline.test_accuracy_mean",
    "pruned.test_accuracy_mean",
    "finetuned.test_accuracy_mean",
    "finetuned.test_accuracy_std",
    "finetuned.val_accuracy_mean",
    "finetuned.params_mean",
    "finetuned.nonzero_params_mean",
    "finetuned.macs_mean",
    "kept_params_mean",
    "kept_macs_mean",
    "compression_mean",
    "speedup_mean",
]
START = 1_700_000_000_000


def digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def sizes(model: str, prefix: str, psize: float = 0.0) -> dict[str, float]:
    params = round(PARAMS[model] * (1 - psize))
    return {
        f"{prefix}.params": params,
        f"{prefix}.nonzero_params": params,
        f"{prefix}.macs": round(MACS[model] * (1 - psize) ** 2),
    }


def job_metrics(model, psize, finetuned, val=None, baseline=0.99, stage="all", pruned=None):
    """The metrics a job of `stage` logs (the contract: prune logs baseline.* and pruned.*)."""
    size = 0.0 if psize == "None" else float(psize)
    metrics = {"baseline.test_accuracy": baseline, **sizes(model, "baseline")}
    if stage == "train":
        return metrics
    pruned = finetuned - 0.3 * size if pruned is None else pruned
    metrics.update({"pruned.test_accuracy": pruned, **sizes(model, "pruned", size)})
    if stage == "prune":
        return metrics
    metrics.update({"finetuned.test_accuracy": finetuned, **sizes(model, "finetuned", size)})
    if val is not None:
        metrics["finetuned.val_accuracy"] = val
    return metrics


class Store:
    """A real sqlite MLflow store that fake job runs are written into."""

    def __init__(self, uri: str) -> None:
        self.uri, self.client, self.start = uri, MlflowClient(uri), START

    def experiment(self, name: str) -> str:
        return ensure_experiment(self.uri, name)

    def add(
        self,
        experiment: str,
        metrics: dict,
        *,
        model="cnn",
        criterion="l1",
        psize="0.3",
        seed=0,
        stage="all",
        status="FINISHED",
        config=None,
        tags=None,
        contract=True,
    ) -> str:
        """One job run; contract=False records it the way older versions did."""
        self.start += 1000
        params = {
            "model": model,
            "dataset": "mnist",
            "criterion": criterion,
            "scope": "layerwise",
            "psize": str(psize),
            "train.epochs": "1",
            "finetune.epochs": "1",
            **({"finetune.init": "pruned"} if contract else {}),
            **(config or {}),
        }
        group = digest({k: v for k, v in params.items()})
        params.update(stage=stage, seed=str(seed))
        all_tags = {"stage": stage, "baseline.key": f"{model}-s{seed}"}
        if contract:
            all_tags.update({"avlsi.group_key": group, "avlsi.job_key": digest(params)})
            all_tags["avlsi.code"] = "c0de" * 4
        else:  # the internals older versions logged as params
            params.update(
                {
                    "model.name": model,
                    "model._target_": "avlsi.models.stack.build",
                    "criterion.scope": params["scope"],
                    "criterion.layer_types.layer": "['Conv2D', 'Dense']",
                    "stage.name": stage,
                    "mlflow.tracking_uri": f"sqlite:///somewhere/{self.start}.db",
                    "store.dir": f"/store/{self.start}",
                    "report.after_sweep": "False",
                    "rerun": "False",
                }
            )
        all_tags.update(tags or {})
        experiment_id = self.experiment(experiment)
        run = self.client.create_run(experiment_id, start_time=self.start, run_name="job")
        self.client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, float(v), self.start, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in all_tags.items()],
        )
        self.client.set_terminated(run.info.run_id, status)
        return run.info.run_id


def seeded(model, criterion, psize, seed, finetuned=None):
    middle = sum(SEEDS[model]) / len(SEEDS[model])
    offset = OFFSET * (seed - middle)
    if finetuned is None:
        finetuned = FINETUNED[model, criterion][PSIZES.index(psize)] + offset
    return job_metrics(model, psize, finetuned, val=finetuned, baseline=0.99 + offset / 4)


def fill_main_experiment(store: Store) -> None:
    """The sweep, one older identical run, a FAILED run, a stage=train run, a report run."""
    store.add(EXPERIMENT, seeded("cnn", "l1", 0.1, 0, finetuned=0.5), psize=0.1)  # rerun
    for model, criterion in FINETUNED:
        for psize in PSIZES:
            for seed in SEEDS[model]:
                metrics = seeded(model, criterion, psize, seed)
                store.add(EXPERIMENT, metrics, model=model, criterion=criterion, psize=psize,
                          seed=seed)  # fmt: skip
    failed = seeded("cnn", "l1", 0.3, 3, finetuned=0.1)
    store.add(EXPERIMENT, failed, psize=0.3, seed=3, status="FAILED")
    train_only = job_metrics("cnn", "0.3", 0.5, stage="train")
    store.add(EXPERIMENT, train_only, seed=4, stage="train")
    # A sweep's own run holds metrics of a report; it is never read as data.
    store.add(EXPERIMENT, seeded("cnn", "l1", 0.3, 0, finetuned=0.2), seed=9,
              tags={"avlsi.sweep": "true"})  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
    fill_main_experiment(store)
    # An experiment without a single usable run.
    store.add("no-pruning-runs", seeded("cnn", "l1", 0.3, 0), status="FAILED")
    store.add("no-pruning-runs", {"baseline.test_accuracy": 0.9}, stage="train")
    return store.uri


@pytest.fixture
def fresh(tmp_path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'mlflow.db'}")


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
        (table["model"] == model)
        & (table["criterion"] == criterion)
        & (table["psize"] == str(psize))
    ]
    return table.loc[index]


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 10_000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def report_runs(uri: str):
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return client.search_runs([experiment_id], f"tags.`{REPORT_TAG}` = 'true'")


# ---------------------------------------------------------------- the main experiment


def test_cli_with_hydra_options_writes_plots_tables_and_a_report_run(store, tmp_path):
    before = len(report_runs(store))
    out = tmp_path / "out"
    proc = report_cli(
        f"mlflow.tracking_uri={store}", f"mlflow.experiment={EXPERIMENT}", f"report.out={out}",
        cwd=tmp_path,
    )  # fmt: skip
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
    assert "| cnn | mnist | l1 | layerwise | 0.3 | 3 | 70.0 |" in markdown  # percent
    assert "| 97.50 ± 0.40 | 97.50 ± 0.40 | yes |" in markdown
    assert "45 runs" in proc.stdout
    assert "left out 1 runs: 1 identical older runs (same job key)" in proc.stdout

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
    assert report.n_runs == 45  # not the FAILED, stage=train, replaced or sweep runs
    assert len(table) == 18 and set(table["scope"]) == {"layerwise"}
    assert set(table["series"]) == {"l1", "apoz", "random"}  # nothing else differs
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
    assert any("1 identical older runs" in note for note in report.notes)
    assert any("ignored 1 finished runs" in note for note in report.notes)  # stage=train


def test_pareto_points_are_the_hand_checked_ones(report):
    table = report.table
    assert set(table["pareto_by"]) == {"finetuned.val_accuracy"}
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
    # A second report reads the same runs: report runs are never counted as job runs.
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
    titles = [result.legends[path.name][0] for path in result.plots]
    assert all("(one seed)" in title and "±" not in title for title in titles)


def test_title_says_mean_and_std_over_seeds_only_with_several(report):
    cnn, dnn = (report.legends[f"accuracy_{m}_mnist.png"][0] for m in ("cnn", "dnn"))
    assert "mean ± std over 3 seeds" in cnn and "mean ± std over 2 seeds" in dnn


# ---------------------------------------------------------------- what is a configuration


def test_per_layer_sweep_gives_one_row_per_layer(fresh, tmp_path):
    """-m criterion.scope=layer criterion.layer=conv1,conv2 psize=0.3,0.5 seed=0,1"""
    for layer, accuracy in (("conv1", 0.96), ("conv2", 0.92)):
        for psize in ("0.3", "0.5"):
            for seed in (0, 1):
                config = {"scope": "layer", "criterion.layer": layer}
                metrics = job_metrics("cnn", psize, accuracy, val=accuracy)
                fresh.add("layers", metrics, psize=psize, seed=seed, config=config)
    result = make_report(fresh.uri, "layers", tmp_path, log_to_mlflow=False)
    table = result.table
    assert len(table) == 4 and set(table["n_seeds"]) == {2}
    assert set(zip(table["criterion.layer"], table["psize"], strict=True)) == {
        ("conv1", "0.3"), ("conv1", "0.5"), ("conv2", "0.3"), ("conv2", "0.5"),
    }  # fmt: skip
    assert set(table["series"]) == {"l1 · layer=conv1", "l1 · layer=conv2"}
    conv2 = table[table["criterion.layer"] == "conv2"]
    assert conv2["finetuned.test_accuracy_mean"].tolist() == pytest.approx([0.92, 0.92])
    assert "criterion.layer" in pd.read_csv(result.csv).columns
    assert "| layer |" in result.markdown.read_text()
    legend = result.legends["accuracy_cnn_mnist.png"]
    assert {"l1 · layer=conv1", "l1 · layer=conv2"} <= set(legend)
    assert "mean ± std over 2 seeds" in legend[0]  # the title, once for all series


def test_mixed_finetune_epochs_give_two_series(fresh, tmp_path):
    """-m criterion=l1,random finetune.epochs=1,2 psize=0.3,0.5"""
    for criterion in ("l1", "random"):
        for epochs, bonus in (("1", 0.0), ("2", 0.01)):
            for psize in ("0.3", "0.5"):
                accuracy = (0.95 if criterion == "l1" else 0.9) + bonus
                metrics = job_metrics("cnn", psize, accuracy, val=accuracy)
                fresh.add("epochs", metrics, criterion=criterion, psize=psize,
                          config={"finetune.epochs": epochs})  # fmt: skip
    result = make_report(fresh.uri, "epochs", tmp_path, log_to_mlflow=False)
    series = set(result.table["series"])
    assert series == {
        "l1 · finetune.epochs=1", "l1 · finetune.epochs=2",
        "random · finetune.epochs=1", "random · finetune.epochs=2",
    }  # fmt: skip
    assert len(result.table) == 8 and set(result.table["finetune.epochs"]) == {"1", "2"}
    two = result.table[result.table["series"] == "l1 · finetune.epochs=2"]
    assert two["finetuned.test_accuracy_mean"].tolist() == pytest.approx([0.96, 0.96])
    assert "| finetune.epochs |" in result.markdown.read_text()


def test_stage_chain_is_one_complete_record(fresh, tmp_path):
    """stage=train, then stage=prune, then stage=finetune: one record, the finetune run."""
    fresh.add("chain", job_metrics("cnn", "0.3", 0.0, stage="train"), stage="train")
    pruned = job_metrics("cnn", "0.3", 0.0, stage="prune", pruned=0.80)
    fresh.add("chain", pruned, stage="prune")
    finished = fresh.add("chain", job_metrics("cnn", "0.3", 0.95, val=0.94, pruned=0.80),
                         stage="finetune")  # fmt: skip
    fresh.add("chain", job_metrics("cnn", "0.3", 0.91, val=0.91), criterion="random")
    result = make_report(fresh.uri, "chain", tmp_path, log_to_mlflow=False)
    assert result.n_runs == 2
    l1 = row(result.table, "cnn", "l1", 0.3)
    assert l1["finetuned.test_accuracy_mean"] == pytest.approx(0.95)
    assert l1["pruned.test_accuracy_mean"] == pytest.approx(0.80)
    assert set(result.table["series"]) == {"l1", "random"}  # stage makes no series
    assert any("1 less complete records of the same configuration" in n for n in result.notes)
    assert MlflowClient(fresh.uri).get_run(finished).data.tags["stage"] == "finetune"


def test_older_runs_without_contract_tags(fresh, tmp_path):
    """Older versions: every leaf a param, no group/job key tags, chains without baseline.*."""
    for epochs, baseline in (("1", 0.99), ("0", 0.075)):
        for seed in (0, 1):
            metrics = job_metrics("cnn", "0.3", baseline - 0.01, baseline=baseline)
            fresh.add("old", metrics, seed=seed, config={"train.epochs": epochs},
                      contract=False)  # fmt: skip
    # An older stage chain: the prune run logged only pruned.*, the finetune run finetuned.*.
    config = {"criterion": "random", "train.epochs": "1"}
    fresh.add("old", job_metrics("cnn", "0.3", 0.0, stage="train"), stage="train", seed=5,
              contract=False)  # fmt: skip
    pruned = {"pruned.test_accuracy": 0.7, **sizes("cnn", "pruned", 0.3)}
    fresh.add("old", pruned, stage="prune", seed=5, config=config, contract=False)
    finetuned = {"finetuned.test_accuracy": 0.9, **sizes("cnn", "finetuned", 0.3)}
    fresh.add("old", finetuned, stage="finetune", seed=5, config=config, contract=False)
    result = make_report(fresh.uri, "old", tmp_path, log_to_mlflow=False)
    table = result.table
    # Paths and tracking URIs differ between all runs; they do not split a configuration.
    assert set(table["series"]) == {
        "l1 · train.epochs=0", "l1 · train.epochs=1", "random · train.epochs=1",
    }  # fmt: skip
    assert set(table["n_seeds"]) == {2, 1}
    chain = row(table, "cnn", "random", 0.3)
    assert chain["baseline.test_accuracy_mean"] == pytest.approx(0.99)  # from the train run
    assert chain["pruned.test_accuracy_mean"] == pytest.approx(0.7)  # from the prune run
    assert chain["kept_params_mean"] == pytest.approx(0.7, abs=1e-5)
    assert set(table["pareto_by"]) == {"finetuned.test_accuracy"}
    assert any("Pareto marks use test accuracy" in note for note in result.notes)
    legend = result.legends["accuracy_cnn_mnist.png"]
    assert any(label.startswith("unpruned · train.epochs=0 (7.50%)") for label in legend)


# ---------------------------------------------------------------- controls and Pareto


def test_controls_none_scratch_and_threshold_in_table_and_figure(fresh, tmp_path):
    for seed in (0, 1):
        for psize, accuracy in (("0.3", 0.95), ("0.5", 0.93)):
            fresh.add("controls", job_metrics("cnn", psize, accuracy, val=accuracy), psize=psize,
                      seed=seed)  # fmt: skip
            fresh.add("controls", job_metrics("cnn", psize, accuracy - 0.05, val=accuracy),
                      psize=psize, seed=seed, config={"finetune.init": "scratch"})  # fmt: skip
            fresh.add("controls", job_metrics("cnn", psize, 0.8, val=0.8), psize=psize,
                      seed=seed, criterion="random")  # fmt: skip
        fresh.add("controls", job_metrics("cnn", "None", 0.992, val=0.99), psize="None",
                  seed=seed, criterion="none")  # fmt: skip
        threshold = {"criterion.threshold": "0.01", "criterion.structured": "False"}
        fresh.add("controls", job_metrics("cnn", "0.4", 0.97, val=0.97), psize="None",
                  seed=seed, criterion="magnitude", config=threshold)  # fmt: skip
    result = make_report(fresh.uri, "controls", tmp_path, log_to_mlflow=False)
    table = result.table
    assert set(table["series"]) == {
        "l1 · finetune.init=pruned", "l1 · finetune.init=scratch",
        "random · finetune.init=pruned", "none · finetune.init=pruned",
        "magnitude · finetune.init=pruned",
    }  # fmt: skip
    none = table[table["criterion"] == "none"].iloc[0]
    assert none["psize"] == "None" and none["point"] == "—" and not none["pareto"]
    assert none["kept_params_mean"] == 1.0
    magnitude = table[table["criterion"] == "magnitude"].iloc[0]
    assert magnitude["point"] == "t=0.01"
    assert magnitude["pareto"]  # smallest and most accurate of the pruned points
    md = result.markdown.read_text()
    assert "| cnn | mnist | none | layerwise | pruned | — | 2 |" in md
    assert "| cnn | mnist | magnitude | layerwise | pruned | t=0.01 | 2 |" in md
    assert "| cnn | mnist | l1 | layerwise | scratch | 0.3 | 2 |" in md
    legend = result.legends["accuracy_cnn_mnist.png"]
    assert "none (unpruned, same fine-tuning) · finetune.init=pruned (99.20%)" in legend
    assert "l1 · finetune.init=scratch" in legend
    assert any(label.startswith("random · finetune.init=pruned") for label in legend)
    assert "ringed: Pareto-optimal by validation accuracy (best for its size)" in legend


def test_pareto_uses_validation_accuracy(fresh, tmp_path):
    # By test accuracy psize 0.5 (smaller, 96%) would knock out psize 0.3 (95%); by
    # validation accuracy 0.3 (97%) beats 0.5 (90%), so both are on the front.
    fresh.add("val", job_metrics("cnn", "0.3", 0.95, val=0.97), psize="0.3")
    fresh.add("val", job_metrics("cnn", "0.5", 0.96, val=0.90), psize="0.5")
    fresh.add("val", job_metrics("cnn", "0.7", 0.50, val=0.89), psize="0.7")
    result = make_report(fresh.uri, "val", tmp_path, log_to_mlflow=False)
    front = result.table.set_index("psize")["pareto"].to_dict()
    assert front == {"0.3": True, "0.5": True, "0.7": True}
    assert set(result.table["pareto_by"]) == {"finetuned.val_accuracy"}
    assert not any("test accuracy" in note for note in result.notes)


def test_report_logs_to_the_sweeps_run_when_given_its_id(fresh, tmp_path):
    fresh.add("sweep", job_metrics("cnn", "0.3", 0.95, val=0.95))
    parent = fresh.add("sweep", {}, tags={"avlsi.sweep": "true"}, status="RUNNING")
    result = make_report(fresh.uri, "sweep", tmp_path, run_id=parent)
    client = MlflowClient(fresh.uri)
    assert result.run_id == parent and result.n_runs == 1
    assert {a.path for a in client.list_artifacts(parent)} == {p.name for p in result.files}
    assert client.get_run(parent).data.tags["avlsi.report.n_runs"] == "1"
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert not [r for r in runs if r.data.tags.get(REPORT_TAG) == "true"]  # no report run
    assert "to the sweep's run" in result.summary()


# ---------------------------------------------------------------- the sweep's table


def test_sweep_table_lists_this_sweeps_jobs_only(fresh, tmp_path):
    sweep = tmp_path / "sweep"
    parent = fresh.add("table", {}, tags={"avlsi.sweep": "true"})
    for job, (psize, epochs) in enumerate((("0.3", "1"), ("0.5", "2"))):
        # The first job is found by its folder, the second by its parent run.
        tags = {"output_dir": str(sweep / str(job))} if job == 0 else {"mlflow.parentRunId": parent}
        fresh.add("table", job_metrics("cnn", psize, 0.9512, val=0.95), psize=psize, tags=tags,
                  config={"finetune.epochs": epochs})  # fmt: skip
    fresh.add("table", job_metrics("cnn", "0.7", 0.5), psize="0.7",
              tags={"output_dir": str(tmp_path / "other" / "0")})  # fmt: skip
    (sweep / "2" / ".hydra").mkdir(parents=True)  # a job that was skipped: no run of its own
    (sweep / "2" / ".hydra" / "overrides.yaml").write_text("- psize=0.9\n- seed=1\n")
    jobs, found = sweep_jobs(fresh.uri, "table", sweep, parent)
    assert found == parent
    assert jobs["psize"].tolist() == ["0.3", "0.9", "0.5"]  # by job number, unknown last
    text = format_jobs(jobs)
    lines = text.splitlines()
    assert "finetune.epochs" in lines[1] and "fine-tuned acc" in lines[1]
    assert "95.12%" in lines[2] and "70.0%" in lines[2] and "finished" in lines[2]
    assert "no run (skipped" in lines[3] and "finished" in lines[4]
    assert "0.7" not in text
    # Without the parent's id (children of an older version): by folder only.
    jobs, found = sweep_jobs(fresh.uri, "table", sweep)
    assert jobs["psize"].tolist() == ["0.3", "0.9"] and found is None


@pytest.mark.slow
def test_a_sweep_ends_with_its_table_and_the_report_command(l1_random_sweep):
    cli, proc = l1_random_sweep  # -m criterion=l1,random psize=0.5
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "avlsi: the sweep's 2 jobs (test accuracy)" in out
    table = out[out.index("avlsi: the sweep's") :].splitlines()
    assert "criterion" in table[1] and "params kept" in table[1]
    assert "l1" in table[2] and "random" in table[3] and "finished" in table[3]
    command = f"python run.py task=report mlflow.experiment=avlsi mlflow.tracking_uri={cli.uri}"
    assert command in out
    report = cli("task=report", f"report.out={cli.tmp / 'rep'}", tiny=False)
    assert report.returncode == 0, report.stderr
    assert "report of 2 runs" in report.stdout


# ---------------------------------------------------------------- options and mistakes


def test_task_report_through_run_py(store, tmp_path):
    cli = Cli(tmp_path)
    cli.uri = store  # the module's store
    out = tmp_path / "from-run-py"
    proc = cli("task=report", f"mlflow.experiment={EXPERIMENT}", f"report.out={out}",
               "report.log=false", "report.filter=\"params.model = 'dnn'\"",
               tiny=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "report of 18 runs (9 configurations, 1 model x dataset)" in proc.stdout
    assert (out / "accuracy_dnn_mnist.png").is_file()
    assert not (out / "accuracy_cnn_mnist.png").exists()
    assert "logged to MLflow" not in proc.stdout
    assert "tensorflow" not in proc.stderr.lower()


def test_task_report_mistakes_are_one_line(store, tmp_path):
    cli = Cli(tmp_path)
    cli.uri = store
    proc = cli("task=report", "mlflow.experiment=nope", tiny=False)
    assert_one_line_error(proc, "no experiment 'nope'", EXPERIMENT, code=2)
    proc = cli("task=reprot", tiny=False)
    assert_one_line_error(proc, "task", "report", code=2)


def test_the_tracking_uri_defaults_to_the_configs(tmp_path):
    proc = report_cli("mlflow.experiment=surely-not-there-4711", "report.log=false", cwd=tmp_path)
    assert_one_line_error(proc, str(ROOT / "mlflow.db"), code=2)


def test_unknown_experiment_is_one_line_listing_the_experiments(store, tmp_path):
    proc = report_cli(
        f"mlflow.tracking_uri={store}", "mlflow.experiment=nope",
        f"report.out={tmp_path / 'out'}", cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(proc, "no experiment 'nope'", EXPERIMENT, "no-pruning-runs", code=2)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["mlflow.experiment=no-pruning-runs"], ["no finished pruning runs", "1 FAILED"]),
        ([f"mlflow.experiment={EXPERIMENT}", "report.filter=\"params.model ~ 'x'\""],
         ["report.filter"]),
        ([f"mlflow.experiment={EXPERIMENT}", "report.filter=\"params.model = 'vgg'\""],
         ["no finished pruning runs", "vgg"]),
        (["report.outt=x"], ["report.outt"]),
        (["--experiment", "x"], ["unknown option --experiment", "mlflow.experiment=NAME"]),
        (["report.filter=params.model = 'cnn'"], ["report.filter"]),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(store, tmp_path, capsys, args, needles):
    """In-process through main() (the subprocess tests cover `python -m avlsi.report`)."""
    with pytest.raises(SystemExit) as exit_info:
        main([f"mlflow.tracking_uri={store}", f"report.out={tmp_path / 'out'}", *args])
    err = capsys.readouterr().err
    exited = subprocess.CompletedProcess([], exit_info.value.code, "", err)
    assert_one_line_error(exited, *needles, code=2)
    assert not (tmp_path / "out").exists()


def test_missing_store_is_one_line_and_creates_nothing(tmp_path):
    db = tmp_path / "nowhere" / "mlflow.db"
    proc = report_cli(f"mlflow.tracking_uri=sqlite:///{db}", cwd=tmp_path)
    assert_one_line_error(proc, str(db), code=2)
    assert not db.exists() and not db.parent.exists()


def test_no_usable_runs_in_process_is_a_user_error(store, tmp_path):
    with pytest.raises(UserError, match="no finished pruning runs"):
        make_report(store, "no-pruning-runs", tmp_path, log_to_mlflow=False)
