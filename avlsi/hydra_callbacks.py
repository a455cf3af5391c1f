"""Hydra callbacks: prepare the shared tracking store before a sweep, report after it."""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepHooks(Callback):
    """Runs in the launching process around a multirun."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Create the sqlite schema and the experiment once, before parallel jobs race
        # for them ("database is locked", schema migration run twice).
        from avlsi.config import check_dataset
        from avlsi.errors import UserError, clip
        from avlsi.preflight import check_environment
        from avlsi.record import close_orphans, ensure_experiment, open_client

        try:
            check_shared_tracking(config)
            check_environment(config)  # writable stores, a server that answers: before MLflow
            if not any(key.startswith("dataset") for key in swept_keys(config)):
                check_dataset(config.dataset)  # once, instead of once per job
            check_sweep_jobs(config)  # every job's config, before the first job starts
        except UserError as err:  # Hydra turns callback exceptions into warnings: stop here
            print(clip(f"avlsi: error: {err}"), file=sys.stderr)
            raise SystemExit(2) from None
        uri = config.mlflow.tracking_uri
        close_orphans(open_client(uri), ensure_experiment(uri, config.mlflow.experiment))
        self.start_parent(config)

    def start_parent(self, config: DictConfig) -> None:
        """The sweep's parent run: the runs table groups the jobs under it."""
        import atexit

        from avlsi.record import start_sweep_run

        sweep_dir = Path(config.hydra.sweep.dir)
        label = config.hydra.runtime.choices.get("experiment") or "sweep"
        name = f"{label} {sweep_dir.parent.name} {sweep_dir.name}"
        uri = config.mlflow.tracking_uri
        self.parent_run_id = start_sweep_run(uri, config.mlflow.experiment, name, sweep_dir)
        self.ended = False
        # A failing job ends the sweep without on_multirun_end (Hydra re-raises its error):
        # the table still comes, and the parent run must not stay RUNNING.
        atexit.register(self.end_failed, config)

    def end_failed(self, config: DictConfig) -> None:
        if not self.ended:
            self.finish(config, status="FAILED", report=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.finish(config, status="FINISHED", report=bool(config.report.after_sweep))

    def finish(self, config: DictConfig, status: str, report: bool) -> None:
        """The sweep's jobs as a table, its report when asked for, and the report command."""
        from avlsi.errors import UserError
        from avlsi.report import report_from_config

        self.ended = True
        uri, experiment = str(config.mlflow.tracking_uri), str(config.mlflow.experiment)
        sweep_dir = Path(config.hydra.sweep.dir)
        parent = getattr(self, "parent_run_id", None)  # set by whoever starts the sweep's run
        try:
            jobs, parent = sweep_jobs(uri, experiment, sweep_dir, parent)
            print(format_jobs(jobs))
        except UserError as err:
            print(f"avlsi: no table of the sweep's jobs: {err}", file=sys.stderr)
        if report:
            try:
                result = report_from_config(config, out=sweep_dir / "report", run_id=parent)
                print(result.summary())
            except UserError as err:
                print(f"avlsi: no report written: {err}", file=sys.stderr)
        if parent:
            from avlsi.record import end_sweep_run

            end_sweep_run(uri, parent, status)
        print(f"report of experiment '{experiment}': {report_command(config)}")


# Columns of the sweep's table that are always there; keys that differ between its jobs
# come between `seed` and the accuracies.
JOB_COLUMNS = ("job", "criterion", "psize", "seed")


def sweep_jobs(
    tracking_uri: str, experiment: str, sweep_dir: Path, parent: str | None = None
) -> tuple[Any, str | None]:
    """One row per job of the sweep in sweep_dir, read from MLflow; and the sweep's run id.

    A job's run is a child of the sweep's run (tag mlflow.parentRunId), or has its `output_dir`
    tag under sweep_dir; a job folder with no run (skipped as finished before, or failed
    before it was recorded) is a row too, from its .hydra/overrides.yaml.
    """
    import pandas as pd
    from omegaconf import OmegaConf

    from avlsi.runs import differing_keys, open_experiment, runs_frame, search_all

    client, experiment_id = open_experiment(tracking_uri, experiment)
    frame = runs_frame(search_all(client, experiment_id))
    under = frame["output_dir"].map(lambda d: isinstance(d, str) and is_under(Path(d), sweep_dir))
    if parent is None:
        parents = frame.loc[under & frame["is_data"], "parent"].dropna()
        parent = parents.mode().iloc[0] if len(parents) else None
    mine = frame[frame["is_data"] & (under | (frame["parent"] == parent))].copy()
    mine["job"] = [job_number(d, sweep_dir) for d in mine["output_dir"]]
    extra = differing_keys(list(mine["config"]), {"criterion", "psize", "criterion.prunes"})
    for group in ("model", "dataset"):  # a chosen option that differs says it all
        if group in extra:
            extra = [k for k in extra if not k.startswith(group + ".")]
    rows = []
    for _, run in mine.sort_values("start_time").iterrows():
        row = {"job": run["job"], "criterion": run["criterion"], "psize": run["psize"]}
        row["seed"] = run["seed"]
        row.update({key: run["config"].get(key) for key in extra})
        kept = run["finetuned.nonzero_params"]
        if pd.isna(kept):
            kept = run["pruned.nonzero_params"]
        row.update(
            baseline=run["baseline.test_accuracy"],
            finetuned=run["finetuned.test_accuracy"],
            kept=kept / run["baseline.nonzero_params"],
            status=run["status"].lower(),
        )
        rows.append(row)
    seen = {row["job"] for row in rows}
    for overrides in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        number = job_number(str(overrides.parent.parent), sweep_dir)
        if number in seen:
            continue
        given = dict(str(o).split("=", 1) for o in OmegaConf.load(overrides) if "=" in str(o))
        row = {key: given.get(key, "") for key in JOB_COLUMNS[1:]}
        rows.append({"job": number, **row, "status": "no run (skipped: done before?)"})
    rows.sort(key=lambda row: row["job"] if isinstance(row["job"], int) else float("inf"))
    return pd.DataFrame(rows), parent


def format_jobs(jobs: Any) -> str:
    """A plain aligned table: accuracies and params kept in percent."""
    from avlsi.runs import percent, short_name

    if jobs.empty:
        return "avlsi: no runs of this sweep in MLflow"
    table = jobs.copy()
    for column, digits in (("baseline", 2), ("finetuned", 2), ("kept", 1)):
        if column in table:
            table[column] = [percent(value, digits) for value in table[column]]
    names = {
        "baseline": "baseline acc",
        "finetuned": "fine-tuned acc",
        "kept": "params kept",
    }
    table = table.rename(columns=lambda c: names.get(c, short_name(c))).fillna("")
    return f"avlsi: the sweep's {len(table)} jobs (test accuracy)\n" + table.to_string(index=False)


def is_under(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def job_number(output_dir: str | None, sweep_dir: Path) -> int | str:
    """Hydra's job number from the job's folder (sweep_dir/<num>), else '?'."""
    if not isinstance(output_dir, str) or not is_under(Path(output_dir), sweep_dir):
        return "?"
    part = Path(output_dir).resolve().relative_to(sweep_dir.resolve()).parts[:1]
    return int(part[0]) if part and part[0].isdigit() else "?"


def report_command(config: DictConfig) -> str:
    """The command that writes the report of this sweep's experiment."""
    from avlsi.config import configured_default

    command = f"python run.py task=report mlflow.experiment={config.mlflow.experiment}"
    uri = str(config.mlflow.tracking_uri)
    if uri != configured_default("mlflow.tracking_uri"):
        command += f" mlflow.tracking_uri={uri}"
    return command


def swept_keys(config: DictConfig) -> set[str]:
    """The keys a sweep varies: its sweeper's params and the command line's a,b / range(...)."""
    keys = set(config.hydra.sweeper.get("params") or {})
    for override in config.hydra.overrides.task:
        key, _, value = str(override).partition("=")
        if "," in value or value.startswith(("range(", "choice(", "interval(", "glob(")):
            keys.add(key.lstrip("+~"))
    return keys


def runs_on_other_machines(config: DictConfig) -> bool:
    """True when the sweep's launcher may put jobs on machines other than this one."""
    launcher = config.hydra.launcher
    target = str(launcher.get("_target_", ""))
    if "submitit" in target:
        return "Local" not in target
    if "ray" in target.lower():
        return launcher.ray.init.get("address") not in (None, "local")
    return False


def check_shared_tracking(config: DictConfig) -> None:
    """A sqlite file is one machine's store: refuse it before a cluster sweep starts."""
    from avlsi.errors import UserError

    uri = str(config.mlflow.tracking_uri)
    if runs_on_other_machines(config) and uri.startswith(("sqlite:", "file:", "/", ".")):
        raise UserError(
            f"jobs on other machines cannot share mlflow.tracking_uri={uri}; start an MLflow "
            "tracking server (make ui HOST=0.0.0.0, or mlflow server ...) and pass "
            "mlflow.tracking_uri=http://HOST:PORT"
        )


MAX_CHECKED_JOBS = 100_000  # beyond this, each swept value is checked once, not every job


def sweep_overrides(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides, as Hydra's basic sweeper will launch them (the sweeper's params,
    then the command line; `a,b`, range(), choice() and glob() expanded); None for other
    sweepers, which choose their jobs as they go."""
    if "BasicSweeper" not in str(config.hydra.sweeper.get("_target_", "")):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    overrides = parser.parse_overrides([*params, *map(str, config.hydra.overrides.task)])
    (jobs,) = BasicSweeper.split_arguments(overrides, None)
    return jobs


def representative_jobs(jobs: list[list[str]]) -> list[tuple[int, list[str]]]:
    """(number, overrides) of all jobs, or for a huge sweep of the first job with each swept
    value in turn."""
    if len(jobs) <= MAX_CHECKED_JOBS:
        return list(enumerate(jobs))
    seen: set[str] = set()
    picked = []
    for num, job in enumerate(jobs):
        if not set(job) <= seen:
            seen.update(job)
            picked.append((num, job))
    return picked


def check_sweep_jobs(config: DictConfig) -> None:
    """Compose and check every job of the sweep before the first one starts.

    Cheap: the config is composed once per combination of config-group choices (model=...,
    criterion=..., experiment=...); each job's plain values (psize=..., train.epochs=...)
    are then applied to it (every job of one composition sets the same keys, so each job's
    values replace the previous job's) and checked with `check_config`, which needs no
    TensorFlow: about 10 ms a job. A job that would fail is reported as one line naming
    its swept values.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from omegaconf import open_dict

    from avlsi.config import check_config
    from avlsi.errors import UserError

    jobs = sweep_overrides(config)
    if not jobs:
        return
    loader = GlobalHydra.instance().config_loader()
    parser = OverridesParser.create(config_loader=loader)
    swept = swept_keys(config)
    bases: dict[tuple[str, ...], DictConfig] = {}
    for num, job in representative_jobs(jobs):
        parsed = parser.parse_overrides(job)
        is_group = [
            "/" in o.key_or_group or loader.repository.group_exists(o.key_or_group) for o in parsed
        ]
        groups = [o for o, group in zip(parsed, is_group, strict=True) if group]
        plain = [o for o, group in zip(parsed, is_group, strict=True) if not group]
        shown = " ".join(o for o in job if o.split("=")[0].lstrip("+~") in swept)
        which = f"sweep job {num}" + (f" ({shown})" if shown else "")
        try:
            key = tuple(o.input_line for o in groups)
            if key not in bases:
                base = loader.load_sweep_config(config, list(key))
                with open_dict(base):
                    del base["hydra"]
                bases[key] = base
            cfg = bases[key]
            if any(o.type != OverrideType.CHANGE for o in plain):
                cfg = copy.deepcopy(cfg)  # + and ~ change the keys; plain values overwrite
            ConfigLoaderImpl._apply_overrides_to_config(plain, cfg)
            check_config(cfg)
        except UserError as err:
            raise UserError(f"{which}: {err}") from None
        except Exception as err:  # a value Hydra cannot compose: one line, like a single job
            from avlsi.cli import describe

            raise UserError(f"{which}: {describe(err)}") from None
