"""MLflow: one run per job, with the flattened config, the metrics and the model files."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

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


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """Create the experiment (artifacts beside a sqlite database) if needed; return its id."""
    db = sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    # A plain absolute path: MLflow 3.17 turns a file:/// location into file://x/... for runs.
    location = str(db.parent / "mlartifacts") if db is not None else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except MlflowException:  # another job created it first
        return client.get_experiment_by_name(name).experiment_id


JOB_KEY_TAG = "avlsi.job_key"


def find_finished(tracking_uri: str, experiment: str, key: str):
    """The newest FINISHED run of the experiment tagged with this job key, else None."""
    client = MlflowClient(tracking_uri)
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


@contextmanager
def mlflow_run(cfg: DictConfig, run_name: str, tags: dict[str, str]):
    """An active MLflow run: FINISHED on success, FAILED if the job raises."""
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    experiment_id = ensure_experiment(cfg.mlflow.tracking_uri, cfg.mlflow.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        yield run


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
