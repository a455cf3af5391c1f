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
import socket
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

# Makes the MLflow 3 UI open the experiment on its runs table, not the GenAI view.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


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


_opened: set[str] = set()  # tracking URIs whose store this process has opened


def open_client(tracking_uri: str) -> MlflowClient:
    """A client whose store exists: the first open in a process (creation) holds the lock."""
    if tracking_uri in _opened:
        return MlflowClient(tracking_uri)
    try:
        with creation_lock(tracking_uri):
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
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
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


def log_config(cfg: DictConfig, choices: dict[str, str], output_dir: Path) -> None:
    """Params: the flattened config plus the chosen option of each group; the YAML itself."""
    params = {k: v for k, v in flatten(cfg).items() if not k.startswith("hydra")}
    params.update(choices)
    mlflow.log_params({k: "None" if v is None else v for k, v in params.items()})
    config_file = output_dir / "config.yaml"
    config_file.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    mlflow.log_artifact(str(config_file))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_model_file(path: Path) -> None:
    mlflow.log_artifact(str(path), artifact_path="models")
