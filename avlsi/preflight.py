"""Before any work: the places a job writes to can be written, and a tracking server answers.

Each problem is one UserError naming the setting and the fix; nothing here imports MLflow or
TensorFlow, so a mistake is reported in well under a second.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from omegaconf import DictConfig

from avlsi.errors import UserError, clip

SERVER_TIMEOUT_S = 5.0  # a tracking server that does not answer within this is reported


def check_environment(cfg: DictConfig) -> None:
    """The tracking store and the model store can take what this job will write."""
    check_tracking_store(str(cfg.mlflow.tracking_uri))
    steps = [str(getattr(s, "value", s)) for s in cfg.stage.steps]
    if "train" in steps or "prune" in steps:  # these put models into the store
        check_writable_folder(Path(str(cfg.store.dir)).expanduser(), "store.dir")


def check_tracking_store(uri: str) -> None:
    """A sqlite database (and its folder: sqlite writes a journal beside it) is writable;
    an http(s) server answers."""
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        return
    if not uri.startswith("sqlite:///"):
        return
    # SQLAlchemy's rule: sqlite:///rel.db is relative to the cwd, sqlite:////abs.db absolute.
    db = Path(uri.removeprefix("sqlite:///")).absolute()
    setting = f"mlflow.tracking_uri={clip(uri)}"
    if db.exists():
        if not db.is_file():
            raise UserError(f"{setting}: {clip(db)} is not a database file")
        if not os.access(db, os.R_OK | os.W_OK):
            raise UserError(
                f"{setting}: the database file is read-only for this user; make it writable "
                "(chmod u+w) or pass another mlflow.tracking_uri"
            )
    check_writable_folder(db.parent, "mlflow.tracking_uri", shown=setting)


def check_writable_folder(folder: Path, setting: str, shown: str | None = None) -> None:
    """`folder`, or the nearest existing folder above it, can be written by this user."""
    shown = shown or f"{setting}={clip(folder)}"
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"{shown}: {clip(existing)} is a file, not a folder; pass another {setting}"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{shown}: the folder {clip(existing)} is read-only for this user; make it writable "
            f"or pass another {setting}"
        )


def check_server(uri: str, timeout: float = SERVER_TIMEOUT_S) -> None:
    """Any HTTP answer from the server will do; no answer within `timeout` is an error."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered (an error page is still an answer)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(
            f"no MLflow tracking server answers at mlflow.tracking_uri={clip(uri)} within "
            f"{timeout:g} s ({clip(reason)}); start one with `make ui` (or mlflow server ...) "
            "or pass a local store, e.g. mlflow.tracking_uri=sqlite:////abs/path/mlflow.db"
        ) from None
