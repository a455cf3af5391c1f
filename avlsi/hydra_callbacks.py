"""Hydra callbacks: prepare the shared tracking store before a sweep, report after it."""

from __future__ import annotations

import logging
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
        from avlsi.record import ensure_experiment

        ensure_experiment(config.mlflow.tracking_uri, config.mlflow.experiment)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.report.after_sweep:
            return
        from avlsi.report import make_report

        out = Path(config.report.out or Path(config.hydra.sweep.dir) / "report")
        make_report(config.mlflow.tracking_uri, config.mlflow.experiment, out)
        log.info("report written to %s", out)
