"""MLflow: one run per job, with the flattened config, the metrics and the model files.

Every run carries the host and process that ran it (`avlsi.host`, `avlsi.pid`,
`avlsi.process_start`); a job starting marks this host's RUNNING runs whose process is
gone as FAILED with `avlsi.orphaned=true`. A sqlite store is created under a file lock
beside the database (`<db>.lock`), so jobs started at once do not race MLflow's schema
migration.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from avlsi.errors import Terminated, UserError

log = logging.getLogger(__name__)
# "Creating initial MLflow database tables..." is not news to a user.
for _name in ("mlflow.store.db.utils", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# Columns and charts a pruning user looks for first, in this order, when the runs carry them.
METRIC_COLUMNS = (
    "finetuned.test_accuracy",
    "finetuned.val_accuracy",
    "finetuned.kept_params",
    "finetuned.kept_macs",
    "finetuned.accuracy_drop",
    "baseline.test_accuracy",
)
PARAM_COLUMNS = ("criterion", "psize", "scope", "stage", "seed", "model", "dataset")
SCATTERS = (  # (x, y): accuracy against the size kept; the first two the runs carry are drawn
    ("finetuned.kept_params", "finetuned.test_accuracy"),
    ("finetuned.kept_macs", "finetuned.test_accuracy"),
    ("finetuned.params", "finetuned.test_accuracy"),  # stores older than kept_* metrics
    ("finetuned.macs", "finetuned.test_accuracy"),
)
VIEW_KEY = "avlsi"  # the experiment's shared view: tag mlflow.sharedViewState.avlsi


def runs_view_state(
    metric_keys: set[str] | None = None,
    param_keys: set[str] | None = None,
    parent_ids: list[str] | tuple[str, ...] = (),
) -> dict:
    """MLflow 3.17's runs-page state: the accuracy / size columns and accuracy-vs-size scatters.

    The UI reads it from the experiment tag `mlflow.sharedViewState.<key>` when the address
    carries `viewStateShareKey=<key>` (and from localStorage, which scripts/ui_check.py
    presets). With no keys given, every column and the first two scatters are named: a
    column of a metric no run has yet is simply empty.
    """
    metric_keys = (
        set(METRIC_COLUMNS) | {x for x, _ in SCATTERS[:2]} if metric_keys is None else metric_keys
    )
    param_keys = set(PARAM_COLUMNS) if param_keys is None else param_keys
    metrics = [m for m in METRIC_COLUMNS if m in metric_keys]
    params = [p for p in PARAM_COLUMNS if p in param_keys]
    section = "avlsi-accuracy-vs-size"
    pairs = [pair for pair in SCATTERS if set(pair) <= metric_keys][:2]
    charts = [
        {
            "uuid": f"avlsi-scatter-{i}",
            "type": "SCATTER",
            "xaxis": {"key": x, "type": "METRIC"},
            "yaxis": {"key": y, "type": "METRIC"},
            "runsCountToCompare": 100,
            "metricSectionId": section,
            "deleted": False,
            "isGenerated": False,
        }
        for i, (x, y) in enumerate(pairs)
    ]
    sections = [
        {
            "uuid": section,
            "name": "Accuracy vs size kept",
            "display": True,
            "isReordered": False,
            "deleted": False,
            "isGenerated": False,
            "columns": 2,
            "cardHeight": 420,
        }
    ]
    metric_ids = [f"metrics.`{m}`" for m in metrics]
    param_ids = [f"params.`{p}`" for p in params]
    models = ["attributes.`Models`", "attributes.`Dataset`"]
    # Run name, metrics and params first, wide enough for their names; then models, dataset.
    order = ["attributes.`Run Name`", "runDateAndNestInfo", *metric_ids, *param_ids, *models]
    widths = {c: 175 for c in metric_ids} | {c: 95 for c in param_ids}
    state: dict = {
        "selectedColumns": models + metric_ids + param_ids,
        "columnOrder": order,
        "columnWidths": {"attributes.`Run Name`": 240} | widths,
        "runsExpanded": {run_id: True for run_id in parent_ids},
        "runsHiddenMode": "SHOW_ALL",
    }
    if charts:
        state |= {"compareRunCharts": charts, "compareRunSections": sections}
    return state


def experiment_tags() -> dict[str, str]:
    """Model-training kind, and the shared view with AVLSI's columns and scatter."""
    import json

    return {
        "mlflow.experimentKind": "custom_model_development",
        f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(runs_view_state()),
    }


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI, else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    # SQLAlchemy's rule: sqlite:///rel.db is relative to the cwd, sqlite:////abs.db absolute.
    return Path(tracking_uri.removeprefix("sqlite:///")).absolute()


def creation_lock(tracking_uri: str):
    """A lock beside a sqlite database (`<db>.lock`) for creating it and its experiments.

    MLflow migrates a new database's schema when a process first opens it; several
    processes doing so at once fail with "duplicate column name". Other stores need none.
    """
    db = sqlite_path(tracking_uri)
    if db is None:
        return nullcontext()
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(db) + ".lock", is_singleton=True)


def _copy_empty_store(db: Path) -> None:
    """A new sqlite store as a copy of an empty, migrated one (made once per MLflow version
    in AVLSI's cache): MLflow's schema migrations cost about a second per new database.
    Without a usable cache, MLflow creates the database itself."""
    from avlsi.keys import cache_root

    try:
        template = cache_root() / f"mlflow-{mlflow.__version__}-empty.db"
        if not template.exists():
            template.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=template.parent) as tmp:
                fresh = Path(tmp) / "empty.db"
                MlflowClient(f"sqlite:///{fresh}").search_experiments()  # migrates it
                os.replace(fresh, template)  # atomic: a reader never sees half a file
        partial = db.with_name(f".{db.name}.{os.getpid()}.tmp")
        shutil.copyfile(template, partial)
        os.replace(partial, db)
    except (OSError, MlflowException):
        pass


_opened: set[str] = set()  # tracking URIs whose store this process has opened


def open_client(tracking_uri: str) -> MlflowClient:
    """A client whose store exists: the first open in a process (creation) holds the lock."""
    if tracking_uri in _opened:
        return MlflowClient(tracking_uri)
    try:
        with creation_lock(tracking_uri):
            db = sqlite_path(tracking_uri)
            if db is not None and not db.exists():
                _copy_empty_store(db)
            client = MlflowClient(tracking_uri)  # opens the store: creates / migrates it
    except OSError:  # no lock beside a read-only database: nothing will be created there
        client = MlflowClient(tracking_uri)
    _opened.add(tracking_uri)
    return client


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """Create the experiment (artifacts beside a sqlite database) if needed; return its id."""
    db = sqlite_path(tracking_uri)
    client = open_client(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage != "deleted":
        for key, value in experiment_tags().items():  # experiments made by older versions
            if key not in found.tags:
                client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    with creation_lock(tracking_uri):
        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                client.restore_experiment(found.experiment_id)
            return found.experiment_id
        # A plain absolute path: MLflow 3.17 turns a file:/// location into file://x/... for runs.
        location = str(db.parent / "mlartifacts") if db is not None else None
        try:
            return client.create_experiment(
                name, artifact_location=location, tags=experiment_tags()
            )
        except MlflowException:  # another job (without the lock: a remote store) was first
            return client.get_experiment_by_name(name).experiment_id


HOST_TAG, PID_TAG, PROCESS_START_TAG = "avlsi.host", "avlsi.pid", "avlsi.process_start"
ORPHANED_TAG = "avlsi.orphaned"


def process_start(pid: int) -> str | None:
    """`<boot id>:<start time in clock ticks>` of a live process (Linux), else None.

    Tells a process from a later one that reuses its pid. None for a zombie or where
    /proc cannot say.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the name may hold spaces and parentheses
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return f"{boot}:{fields[19]}"  # field 22 of proc(5): starttime


def process_tags() -> dict[str, str]:
    """The host and process running this job, to tell later whether it is still alive."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    start = process_start(os.getpid())
    if start is not None:
        tags[PROCESS_START_TAG] = start
    return tags


def process_alive(pid: int, start: str | None) -> bool:
    """Whether process `pid` of this host still runs (and is the one that started at `start`)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    except (OverflowError, ValueError):
        return False
    if start is None or not Path("/proc/self/stat").exists():
        return True  # nothing to compare with: a live pid counts as alive
    return process_start(pid) == start  # None (a zombie) or another start: not that process


def close_orphans(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark this host's RUNNING runs whose process is gone FAILED + avlsi.orphaned; their ids."""
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=1000,
    )
    closed = []
    for run in runs:
        tags = run.data.tags
        try:
            pid = int(tags.get(PID_TAG, ""))
        except ValueError:
            continue
        if process_alive(pid, tags.get(PROCESS_START_TAG)):
            continue
        client.set_tag(run.info.run_id, ORPHANED_TAG, "true")
        client.set_tag(
            run.info.run_id,
            "error",
            f"its process (pid {pid} on {host}) ended without closing the run "
            "(killed with SIGKILL, out of memory, or the machine stopped)",
        )
        client.set_terminated(run.info.run_id, "FAILED")
        log.warning(
            "run %s (%s) was left RUNNING by a process that is gone; marked FAILED",
            run.info.run_name,
            run.info.run_id,
        )
        closed.append(run.info.run_id)
    return closed


JOB_KEY_TAG = "avlsi.job_key"


def find_finished(tracking_uri: str, experiment: str, key: str):
    """The newest FINISHED run of the experiment tagged with this job key, else None."""
    client = open_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{JOB_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


SWEEP_TAG = "avlsi.sweep"
PARENT_TAG = "mlflow.parentRunId"
PARENT_FILE = ".avlsi_parent_run"  # in a sweep's folder: the id of the sweep's parent run
UI = "http://127.0.0.1:5000"  # where `make ui` serves a local store


def runs_table_url(tracking_uri: str, experiment_id: str) -> str:
    """The address of the experiment's runs table (MLflow 3.17 opens a GenAI view otherwise)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else UI
    view = f"workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    return f"{base}/#/experiments/{experiment_id}/runs?{view}"


def print_runs_urls(tracking_uri: str) -> None:
    """Print each experiment's runs-table address (what `make ui` shows before it starts)."""
    db = sqlite_path(tracking_uri)
    found = (
        []
        if db is not None and not db.exists()
        else MlflowClient(tracking_uri).search_experiments()
    )
    found = [exp for exp in found if exp.name != "Default"]
    for exp in found:
        print(f"  {exp.name}: {runs_table_url(tracking_uri, exp.experiment_id)}")
    if not found:
        print(f"  (no experiments yet in {tracking_uri}: run `make run` first)")


def start_sweep_run(tracking_uri: str, experiment: str, name: str, sweep_dir: Path) -> str:
    """Create the parent run of a sweep (not the active run) and leave its id for the jobs."""
    client = MlflowClient(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, experiment)
    tags = {SWEEP_TAG: "true", **process_tags()}  # a killed sweep's parent is an orphan too
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / PARENT_FILE).write_text(run.info.run_id)
    return run.info.run_id


def sweep_parent(sweep_dir: Path) -> str | None:
    """The parent run id a sweep's jobs attach to (written by `start_sweep_run`), else None."""
    try:
        return (sweep_dir / PARENT_FILE).read_text().strip() or None
    except OSError:
        return None


def end_sweep_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """End the sweep's parent run (once: a second call is a no-op)."""
    client = MlflowClient(tracking_uri)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status)


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """`a.b.c -> value` for every leaf of the resolved config."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}." if prefix or key else key)
        else:
            flat[prefix.rstrip(".")] = node

    walk(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "")
    return flat


def error_line(err: BaseException) -> str:
    """The `error` tag of a failed run: one line, cut to a readable length."""
    if isinstance(err, Terminated):
        return f"terminated ({err.signal_name})"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (SIGINT)"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if not isinstance(err, UserError):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 500 else text[:497] + "..."


@contextmanager
def mlflow_run(cfg: DictConfig, run_name: str, tags: dict[str, str]):
    """An active MLflow run: FINISHED on success, KILLED if interrupted, FAILED if the job raises.

    A failed run carries an `error` tag (one line). Before it starts, this host's runs
    left RUNNING by processes that are gone are closed as orphans.
    """
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    experiment_id = ensure_experiment(cfg.mlflow.tracking_uri, cfg.mlflow.experiment)
    try:
        close_orphans(open_client(cfg.mlflow.tracking_uri), experiment_id)
    except MlflowException as err:  # never a reason not to run the job
        log.warning("could not check for runs left RUNNING: %s", error_line(err))
    tags = {**tags, **process_tags()}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        try:
            yield run
        except BaseException as err:
            status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            try:
                mlflow.set_tag("error", error_line(err))
                mlflow.end_run(status)
            except Exception as inner:  # the job's own error is the one to report
                log.warning("could not record the run's end: %s", error_line(inner))
            raise


def job_params(cfg: DictConfig, choices: dict[str, str]) -> dict[str, Any]:
    """What a user chose and set, as MLflow params: the group options, then every config
    value that changes results, without internals (`_target_`, `name`, `layer_types`,
    `stage.steps`; but a builder's `model._target_` and a name other than the option's, e.g.
    keras_app's `model.name`, are kept) and with file names instead of absolute paths."""
    from avlsi.config import effective_psize
    from avlsi.keys import NOT_IN_JOB_KEY

    params: dict[str, Any] = dict(choices)
    for key, value in flatten(cfg).items():
        section, last = key.partition(".")[0], key.rpartition(".")[2]
        if section in NOT_IN_JOB_KEY:
            continue
        if last == "name" and value == choices.get(section):
            continue
        if last == "_target_" and not (
            key == "model._target_" and choices.get("model") == "builder"
        ):
            continue
        if key.startswith(("criterion.layer_types", "stage.steps")):
            continue
        if key in ("dataset.path", "model.path", "model.weights"):  # the file's name only
            key = key.replace("path", "file")
            value = None if value is None else Path(str(value)).name
        params[key] = value
    params["psize"] = effective_psize(cfg)
    return params


def log_config(cfg: DictConfig, choices: dict[str, str], output_dir: Path) -> None:
    """Params (see `job_params`); the whole resolved config as an artifact."""
    params = job_params(cfg, choices)
    mlflow.log_params({k: "None" if v is None else v for k, v in params.items()})
    config_file = output_dir / "config.yaml"
    config_file.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    mlflow.log_artifact(str(config_file))


SPLIT_CONTEXTS = {"train": "train", "validation": "val", "test": "test"}  # MLflow: Dataset


def log_dataset(data, name: str, digest: str) -> None:
    """The dataset as MLflow inputs, one per split (train / validation / test), with sizes
    (for a streamed dataset, the arrays are its image files' paths)."""
    from mlflow.data import from_numpy

    splits = {context: data.arrays(split) for context, split in SPLIT_CONTEXTS.items()}
    for context, (x, y) in splits.items():
        if y is None or not len(y):
            continue
        dataset = from_numpy(x, targets=y, name=f"{name}-{context}", digest=digest)
        for attempt in range(3):  # parallel jobs may insert the same dataset row at once
            try:
                mlflow.log_input(dataset, context=context)
                break
            except MlflowException:
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))


def log_keras_model(model, name: str = "model") -> None:
    """The model as an MLflow model with its input/output signature (Models tab): flavour
    `keras` (mlflow.keras) for a Keras 3 model, `tensorflow` (mlflow.tensorflow) for tf-keras."""
    from importlib.metadata import version

    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from avlsi.kerasapi import is_keras3

    def spec(tensor) -> Schema:
        return Schema([TensorSpec(np.dtype("float32"), (-1, *tensor.shape[1:]))])

    signature = ModelSignature(inputs=spec(model.inputs[0]), outputs=spec(model.outputs[0]))
    if is_keras3(model):
        import mlflow.keras

        flavour, keras_package = mlflow.keras, "keras"
    else:
        import mlflow.tensorflow

        flavour, keras_package = mlflow.tensorflow, "tf-keras"
    requirements = [f"{p}=={version(p)}" for p in ("tensorflow", keras_package)]
    flavour.log_model(model, name=name, signature=signature, pip_requirements=requirements)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_model_file(path: Path) -> None:
    mlflow.log_artifact(str(path), artifact_path="models")
