"""Hydra callbacks: prepare the shared tracking store before a sweep, report after it."""

from __future__ import annotations

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
        from avlsi.errors import UserError
        from avlsi.record import close_orphans, ensure_experiment, open_client

        try:
            check_shared_tracking(config)
            if not any(key.startswith("dataset") for key in swept_keys(config)):
                check_dataset(config.dataset)  # once, instead of once per job
        except UserError as err:  # Hydra turns callback exceptions into warnings: stop here
            print(f"avlsi: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        uri = config.mlflow.tracking_uri
        close_orphans(open_client(uri), ensure_experiment(uri, config.mlflow.experiment))

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
