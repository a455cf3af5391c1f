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
        from avlsi.record import ensure_experiment

        try:
            check_shared_tracking(config)
            check_environment(config)  # writable stores, a server that answers: before MLflow
            if not any(key.startswith("dataset") for key in swept_keys(config)):
                check_dataset(config.dataset)  # once, instead of once per job
            check_sweep_jobs(config)  # every job's config, before the first job starts
        except UserError as err:  # Hydra turns callback exceptions into warnings: stop here
            print(clip(f"avlsi: error: {err}"), file=sys.stderr)
            raise SystemExit(2) from None
        ensure_experiment(config.mlflow.tracking_uri, config.mlflow.experiment)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.report.after_sweep:
            return
        from avlsi.errors import UserError
        from avlsi.report import make_report

        out = Path(config.report.out or Path(config.hydra.sweep.dir) / "report")
        try:
            result = make_report(config.mlflow.tracking_uri, config.mlflow.experiment, out)
        except UserError as err:
            print(f"avlsi: no report written: {err}", file=sys.stderr)
            return
        print(result.summary())


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


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
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

    jobs = sweep_jobs(config)
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
