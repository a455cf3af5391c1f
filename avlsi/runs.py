"""Reading job runs back from MLflow: one record per configuration and seed.

Shared by the report and the table a sweep prints when it ends. A run's *configuration* is
everything that determines its results except `seed` and `stage`: the tag `avlsi.group_key`
when the run has one, else its params without the ones that say where results go or how
they look (older runs log every config leaf). Runs that differ only by seed share it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from avlsi.errors import UserError
from avlsi.record import open_client, sqlite_path

STAGES = ("baseline", "pruned", "finetuned")
QUANTITIES = ("test_accuracy", "val_accuracy", "params", "nonzero_params", "macs")
# Measured where a job had latency.enabled / exports (avlsi/runtime.py); NaN otherwise.
QUANTITIES += ("latency_ms", "throughput", "bytes.keras")
METRICS = [f"{stage}.{what}" for stage in STAGES for what in QUANTITIES]
NEEDED_BASELINE = [f"baseline.{what}" for what in ("test_accuracy", "params", "nonzero_params")]
NEEDED_BASELINE.append("baseline.macs")
IDENTITY = ["model", "dataset", "criterion", "scope", "psize", "seed", "stage"]
THRESHOLD = "criterion.threshold"

REPORT_TAG, SWEEP_TAG = "avlsi.report", "avlsi.sweep"
JOB_KEY_TAG, GROUP_KEY_TAG = "avlsi.job_key", "avlsi.group_key"
PARENT_TAG = "mlflow.parentRunId"
# Fingerprint tags that are part of a configuration: a code change makes a new series.
FINGERPRINT_TAGS = {"avlsi.code": "code", "avlsi.data": "data"}

# Params of older runs that say where results go or how they look, or repeat a group
# choice (`criterion.name` = `criterion`, `criterion.scope` = `scope`): not configuration.
NOT_CONFIG = re.compile(
    r"(seed|stage|stage\..*|task|verbose|rerun|(mlflow|store|report|hydra|latency|export)\..*"
    r"|.*\._target_|.*\.name|criterion\.layer_types\..*|criterion\.scope)"
)


def is_config_param(name: str) -> bool:
    return not NOT_CONFIG.fullmatch(name)


# ---------------------------------------------------------------- the store


def local_store(tracking_uri: str) -> Path | None:
    """The file or folder a local tracking URI names (SQLAlchemy's rule for sqlite:///)."""
    if tracking_uri.startswith("sqlite:///"):
        return sqlite_path(tracking_uri)
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "" and tracking_uri:
        return Path(tracking_uri)
    return None  # a server, or an in-memory database


def open_experiment(tracking_uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client and the experiment's id; never creates a store or an experiment."""
    store = local_store(tracking_uri)
    if store is not None and not store.exists():
        raise UserError(
            f"no MLflow store at {store.absolute()} (mlflow.tracking_uri={tracking_uri}); "
            "run some jobs first, or pass the mlflow.tracking_uri they used"
        )
    client = open_client(tracking_uri)  # an older schema is migrated under the store's lock
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(
            f"no experiment '{experiment}' in {tracking_uri}; pass mlflow.experiment=NAME, "
            f"existing experiments: {', '.join(names) or '(none)'}"
        )
    return client, found.experiment_id


def search_all(client: MlflowClient, experiment_id: str, filter_string: str = "") -> list[Run]:
    runs, token = [], None
    try:
        while True:
            page = client.search_runs(
                [experiment_id], filter_string, max_results=1000, page_token=token
            )
            runs += page
            token = page.token
            if not token:
                return runs
    except MlflowException as err:
        first = (str(err.message).splitlines() or [type(err).__name__])[0]
        message = f"report.filter={filter_string!r} is not a valid MLflow filter: {first}"
        raise UserError(message) from err


# ---------------------------------------------------------------- one row per run


def config_of(run: Run) -> dict[str, str]:
    """The run's configuration: result-determining params and fingerprint tags, as strings."""
    config = {k: v for k, v in run.data.params.items() if is_config_param(k)}
    for tag, name in FINGERPRINT_TAGS.items():
        if tag in run.data.tags:
            config[name] = run.data.tags[tag][:8]
    return config


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run: ids, status, keys, identity params, config and metrics."""
    rows = []
    for run in runs:
        params, tags = run.data.params, run.data.tags
        config = config_of(run)
        group = tags.get(GROUP_KEY_TAG) or "params:" + json.dumps(config, sort_keys=True)
        row = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "is_data": tags.get(REPORT_TAG) != "true" and tags.get(SWEEP_TAG) != "true",
            "parent": tags.get(PARENT_TAG),
            "output_dir": tags.get("output_dir"),
            "baseline_key": tags.get("baseline.key"),
            "group": group,
            "config": config,
        }
        row.update({name: params.get(name) for name in IDENTITY})
        row[THRESHOLD] = params.get(THRESHOLD, "None")
        row["job"] = tags.get(JOB_KEY_TAG) or f"{group}|seed={row['seed']}|stage={row['stage']}"
        row.update({name: run.data.metrics.get(name, np.nan) for name in METRICS})
        rows.append(row)
    columns = ["run_id", "run_name", "status", "start_time", "is_data", "parent", "output_dir"]
    columns += ["baseline_key", "group", "config", *IDENTITY, THRESHOLD, "job", *METRICS]
    frame = pd.DataFrame(rows, columns=columns)
    frame[METRICS] = frame[METRICS].astype(float)
    frame["is_data"] = frame["is_data"].astype(bool)  # an empty object column selects columns
    return frame


def fill_baselines(frame: pd.DataFrame) -> pd.DataFrame:
    """Older stage=prune / finetune runs lack baseline.*: take it from their baseline's run."""
    frame = frame.copy()
    known = frame.dropna(subset=NEEDED_BASELINE).dropna(subset=["baseline_key"])
    by_key = known.sort_values("start_time").groupby("baseline_key").last()
    baseline = [f"baseline.{what}" for what in QUANTITIES]
    missing = frame[NEEDED_BASELINE].isna().any(axis=1) & frame["baseline_key"].isin(by_key.index)
    for index in frame.index[missing]:
        source = by_key.loc[frame.at[index, "baseline_key"], baseline]
        frame.loc[index, baseline] = frame.loc[index, baseline].fillna(source)
    return frame


# ---------------------------------------------------------------- choosing records


@dataclass
class Selection:
    """The records a comparison uses (one per configuration and seed) and what was left out."""

    records: pd.DataFrame
    ignored_incomplete: int = 0  # finished, but no baseline.* and pruned/finetuned.* metrics
    repeated: int = 0  # an identical newer run (same job key) exists
    less_complete: int = 0  # a more complete record of the same configuration and seed
    older_record: int = 0  # an equally complete, newer record of the same config and seed
    notes: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return self.repeated + self.less_complete + self.older_record

    def dropped_line(self) -> str | None:
        """One line saying how many finished runs were left out and why, or None."""
        reasons = [
            (self.repeated, "identical older runs (same job key)"),
            (self.less_complete, "less complete records of the same configuration and seed "
             "(e.g. a stage=prune run whose chain went on to stage=finetune)"),
            (self.older_record, "older complete records of the same configuration and seed"),
        ]  # fmt: skip
        parts = [f"{n} {why}" for n, why in reasons if n]
        return f"left out {self.dropped} runs: " + "; ".join(parts) if parts else None


def usable(frame: pd.DataFrame) -> pd.Series:
    """Finished job runs with baseline.* and pruned.* or finetuned.* metrics."""
    finished = frame["status"] == "FINISHED"
    has_baseline = frame[NEEDED_BASELINE].notna().all(axis=1)
    has_result = frame["pruned.test_accuracy"].notna() | frame["finetuned.test_accuracy"].notna()
    has_keys = frame[["model", "dataset", "criterion", "seed"]].notna().all(axis=1)
    return finished & frame["is_data"] & has_baseline & has_result & has_keys


def select_records(frame: pd.DataFrame) -> Selection:
    """One record per configuration and seed: the most complete one, then the newest.

    A run is only left out for an identical newer run (same job key) or a better record of
    the same configuration and seed; the Selection counts each reason.
    """
    frame = fill_baselines(frame[frame["is_data"]])
    ok = usable(frame)
    selection = Selection(frame.iloc[0:0])
    selection.ignored_incomplete = int(((frame["status"] == "FINISHED") & ~ok).sum())
    runs = frame[ok].sort_values("start_time", kind="stable")
    unique = runs.drop_duplicates("job", keep="last")
    selection.repeated = len(runs) - len(unique)
    unique = unique.assign(complete=unique["finetuned.test_accuracy"].notna().astype(int))
    unique = unique.sort_values(["complete", "start_time"], kind="stable")
    kept = unique.drop_duplicates(["group", "seed"], keep="last")
    dropped = unique.drop(kept.index)
    if len(dropped):
        best = kept.set_index(["group", "seed"])["complete"]
        better = [best[g, s] > c for g, s, c in dropped[["group", "seed", "complete"]].values]
        selection.less_complete = int(np.sum(better))
        selection.older_record = len(dropped) - selection.less_complete
        kept = fill_pruned(kept, dropped)
    selection.records = kept.drop(columns="complete").reset_index(drop=True)
    if selection.ignored_incomplete:
        selection.notes.append(
            f"ignored {selection.ignored_incomplete} finished runs without baseline.* and "
            "pruned.*/finetuned.* metrics (e.g. stage=train runs)"
        )
    if line := selection.dropped_line():
        selection.notes.append(line)
    return selection


def fill_pruned(kept: pd.DataFrame, dropped: pd.DataFrame) -> pd.DataFrame:
    """An older stage=finetune record lacks pruned.*: take it from its chain's prune run."""
    pruned = [f"pruned.{what}" for what in QUANTITIES]
    donors = dropped.dropna(subset=["pruned.test_accuracy"]).groupby(["group", "seed"]).last()
    kept = kept.copy()
    for index in kept.index[kept["pruned.test_accuracy"].isna()]:
        key = (kept.at[index, "group"], kept.at[index, "seed"])
        if key in donors.index:
            kept.loc[index, pruned] = kept.loc[index, pruned].fillna(donors.loc[key, pruned])
    return kept


# ---------------------------------------------------------------- configurations that differ


AXES = {"model", "dataset", "criterion", "psize", THRESHOLD}  # plotted, not in series labels


def differing_keys(configs: list[dict[str, str]], leave_out: set[str] = AXES) -> list[str]:
    """Config keys whose value (missing counts as a value) is not the same in all configs."""
    keys = sorted({k for config in configs for k in config} - leave_out)
    return [k for k in keys if len({config.get(k) for config in configs}) > 1]


def label_keys(configs: list[dict[str, str]]) -> list[list[str]]:
    """Per config: the keys that tell it apart from the others (of one model x dataset).

    `criterion.*` keys are compared among configs of the same criterion only (criteria
    have settings of their own); every other key among all of them.
    """
    shared = [k for k in differing_keys(configs) if not k.startswith("criterion.")]
    own: dict[str | None, list[str]] = {}
    for name in {config.get("criterion") for config in configs}:
        mine = [config for config in configs if config.get("criterion") == name]
        own[name] = [k for k in differing_keys(mine) if k.startswith("criterion.")]
    return [shared + own[config.get("criterion")] for config in configs]


def short_name(key: str) -> str:
    """`criterion.layer` -> `layer`: the criterion's keys read well without their group."""
    return key.removeprefix("criterion.")


def percent(value: float, digits: int = 2) -> str:
    return "—" if pd.isna(value) else f"{100 * value:.{digits}f}%"
