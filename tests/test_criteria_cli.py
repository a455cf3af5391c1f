"""Every criterion x every scope it accepts, through the real CLI; every criterion on
model=cnn and on model=dnn.

Each (criterion, scope) pair runs once: the CNN takes the scopes that rank across layers
(layerwise, global), the DNN scope=layer. One Hydra multirun per model and scope (the
criteria that accept it); all the sweeps run at once (each with its own MLflow database; the
sweeps of a model share its store, so its baseline is trained once), then the runs are read
back from MLflow. The DNN fine-tunes one epoch (magnitude's zeros must survive it); the CNN
runs finetune.epochs=0 (fine-tuning a smaller model does not depend on the criterion, and
each fit costs a graph trace), whose fine-tuned numbers are the pruned model's.
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from avlsi.config import register

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
register()

TINY = [
    "dataset=synthetic",
    "dataset.shape=[12,12,1]",
    "dataset.train_size=64",
    "dataset.test_size=32",
    "train.epochs=1",
    "train.batch_size=32",
    "finetune.batch_size=32",
    "criterion.samples=16",
    "psize=0.5",
    "verbose=0",
]
MODELS = {
    "cnn": ["model.conv_filters=[4,4,8,8]", "model.dense_units=[8]"],
    "dnn": ["model.dense_units=[16,16,8,8,8,8]"],
}
LAYER = {"cnn": "conv1", "dnn": "dense1"}  # for scope=layer (refused with other scopes)
SCOPES = ("layer", "layerwise", "global")
PLAN = {"cnn": ("layerwise", "global"), "dnn": ("layer",)}  # each scope on one model
FINETUNE_EPOCHS = {"cnn": 0, "dnn": 1}
MEASURED = ("test_accuracy", "val_accuracy", "params", "nonzero_params", "macs")


@functools.cache
def criteria() -> dict[str, tuple[str, ...]]:
    """Each criterion's accepted scopes, as its YAML says (composed once)."""
    found = {}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for path in sorted((CONF / "criterion").glob("*.yaml")):
            cfg = compose(config_name="config", overrides=[f"criterion={path.stem}"]).criterion
            found[path.stem] = tuple(s for s in SCOPES if cfg.layer_types.get(s))
    return found


def planned(model: str) -> list[tuple[str, str]]:
    """The (criterion, scope) pairs that run on `model`."""
    return sorted((n, s) for n, scopes in criteria().items() for s in scopes if s in PLAN[model])


def start(tmp: Path, store: Path, args: list[str]) -> subprocess.Popen:
    tmp.mkdir(parents=True)
    paths = [
        f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
        f"store.dir={store}",
        f"hydra.run.dir={tmp}/out",
        f"hydra.sweep.dir={tmp}/multi",
    ]
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args, *TINY, *paths],
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """{model: [(tmp folder, finished process)]} plus the refused-scope process under None."""
    base = tmp_path_factory.mktemp("criteria_cli")
    procs: dict = {model: [] for model in MODELS}
    for model, overrides in MODELS.items():
        for scope in PLAN[model]:
            names = sorted({n for n, s in planned(model) if s == scope})
            tmp = base / f"{model}_{scope}"
            sweep = [
                f"criterion={','.join(names)}",
                f"criterion.scope={scope}",
                f"finetune.epochs={FINETUNE_EPOCHS[model]}",
            ]
            if scope == "layer":  # scope=layer names its layer; the others refuse one
                sweep.append(f"criterion.layer={LAYER[model]}")
            args = ["-m", f"model={model}", *overrides, *sweep]
            procs[model].append((tmp, start(tmp, base / f"{model}_store", args)))
    refused = start(
        base / "refused",
        base / "refused_store",
        ["model=dnn", "criterion=gradient", "criterion.scope=global"],
    )
    results = {}
    for model, started in procs.items():
        results[model] = [(tmp, proc, *proc.communicate(timeout=900)) for tmp, proc in started]
    results[None] = (refused, *refused.communicate(timeout=900))
    return results


def test_the_plan_runs_every_pair_once_and_every_criterion_on_both_models():
    pairs = planned("cnn") + planned("dnn")
    assert sorted(pairs) == sorted((n, s) for n, scopes in criteria().items() for s in scopes)
    assert len(set(pairs)) == len(pairs)
    for model in MODELS:
        assert {n for n, _ in planned(model)} == set(criteria()), model


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
def test_every_criterion_and_accepted_scope_prunes(sweeps, model):
    runs = []
    for tmp, proc, _, err in sweeps[model]:
        assert proc.returncode == 0, err[-3000:]
        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        found = client.search_runs([client.get_experiment_by_name("avlsi").experiment_id])
        runs += [r for r in found if r.data.tags.get("avlsi.sweep") != "true"]  # not parents
    ran = sorted((r.data.params["criterion"], r.data.params["scope"]) for r in runs)
    assert ran == planned(model)
    for run in runs:
        name = f"{run.data.params['criterion']}/{run.data.params['scope']}"
        m = run.data.metrics
        assert run.info.status == "FINISHED", name
        assert run.data.params["model"] == model
        if run.data.params["criterion"] == "magnitude":  # weights zeroed, none removed
            assert m["pruned.params"] == m["baseline.params"] == m["finetuned.params"], name
            zeroed = m["baseline.nonzero_params"] - m["pruned.nonzero_params"]
            assert zeroed > 0, name
            # They stay zero through fine-tuning (other weights may leave zero: biases).
            assert m["finetuned.nonzero_params"] <= m["finetuned.params"] - zeroed, name
        elif run.data.params["criterion"] == "none":  # the control: nothing removed
            assert m["pruned.params"] == m["baseline.params"] == m["finetuned.params"], name
            assert m["pruned.test_accuracy"] == m["baseline.test_accuracy"], name
        else:
            assert m["pruned.params"] < m["baseline.params"], name
            assert m["pruned.macs"] < m["baseline.macs"], name
            assert m["pruned.kept_params"] < 1 and m["pruned.compression"] > 1, name
        # The same fine-tuned metrics as pruned ones, whether fine-tuned (dnn) or not (cnn).
        stage = {k.split(".", 1)[1]: v for k, v in m.items() if k.startswith("pruned.")}
        stage.pop("equivalence_error", None)  # the surgery's check, not a measurement
        tuned = {k.split(".", 1)[1] for k in m if k.startswith("finetuned.")}
        assert tuned == set(stage) >= {*MEASURED, "kept_params", "accuracy_drop"}, name
        if FINETUNE_EPOCHS[model] == 0:  # the pruned model, unchanged: its numbers carry over
            assert "finetune.loss" not in m, name
            for key in MEASURED:
                assert m[f"finetuned.{key}"] == m[f"pruned.{key}"], f"{name} {key}"
        else:
            assert "finetune.loss" in m, name


@pytest.mark.slow
def test_a_scope_the_criterion_refuses_is_one_line(sweeps):
    proc, out, err = sweeps[None]
    assert proc.returncode == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("avlsi: error:"), err[-3000:]
    assert "criterion=gradient" in lines[0] and "scope=global" in lines[0], lines[0]
