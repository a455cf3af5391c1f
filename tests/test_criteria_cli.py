"""Every criterion x every scope it accepts, through the real CLI on model=cnn and model=dnn.

One Hydra multirun per model and group of criteria that accept the same scopes; all the
sweeps run at once (each with its own MLflow database; the sweeps of a model share its
store, so its baseline is trained once), then the runs are read back from MLflow.
Structured criteria run stage=all with finetune.epochs=0 (fine-tuning a smaller model does
not depend on the criterion, and each fit costs a graph trace); magnitude fine-tunes one
epoch, to show that its zeros survive it.
"""

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


def criteria() -> dict[str, tuple[tuple[str, ...], bool]]:
    """Each criterion's accepted scopes and whether it is structured, as its YAML says."""
    found = {}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for path in sorted((CONF / "criterion").glob("*.yaml")):
            cfg = compose(config_name="config", overrides=[f"criterion={path.stem}"]).criterion
            scopes = tuple(s for s in SCOPES if cfg.layer_types.get(s))
            found[path.stem] = (scopes, bool(cfg.structured))
    return found


def groups() -> dict[tuple[tuple[str, ...], bool], list[str]]:
    """Criteria with the same scopes and kind: each group is one cartesian sweep."""
    grouped: dict[tuple[tuple[str, ...], bool], list[str]] = {}
    for name, key in criteria().items():
        grouped.setdefault(key, []).append(name)
    return grouped


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
        for i, ((scopes, structured), names) in enumerate(groups().items()):
            others = [scope for scope in scopes if scope != "layer"]
            # scope=layer names its layer; the other scopes refuse a criterion.layer.
            for j, part in enumerate([["layer"] if "layer" in scopes else [], others]):
                if not part:
                    continue
                tmp = base / f"{model}{i}_{j}"
                sweep = [
                    f"criterion={','.join(names)}",
                    f"criterion.scope={','.join(part)}",
                    f"finetune.epochs={0 if structured else 1}",
                ]
                if part == ["layer"]:
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
    assert ran == sorted((n, s) for n, (scopes, _) in criteria().items() for s in scopes)
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


@pytest.mark.slow
def test_a_scope_the_criterion_refuses_is_one_line(sweeps):
    proc, out, err = sweeps[None]
    assert proc.returncode == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("avlsi: error:"), err[-3000:]
    assert "criterion=gradient" in lines[0] and "scope=global" in lines[0], lines[0]
