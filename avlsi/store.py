"""A content-addressed store of trained baselines and pruned models, shared by all jobs.

An entry is a folder `<kind>/<key>/` holding `model.keras` and `meta.json` (with the
model file's sha256). Entries appear by atomic rename of a finished folder; writers of
one key are serialised by a file lock; an entry whose checksum does not match is removed
and rebuilt, never loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)

MODEL_FILE, META_FILE = "model.keras", "meta.json"


def config_key(prefix: str, parts: dict[str, Any]) -> str:
    """`prefix-<16 hex>`: a readable prefix plus a hash of everything that determines it."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return f"{prefix}-{hashlib.sha256(blob).hexdigest()[:16]}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelStore:
    """Keras models under `<root>/<kind>/<key>/`, written once and read by many."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    @contextmanager
    def lock(self, kind: str, key: str):
        """Hold the key's lock: one job builds a missing entry, the others wait for it."""
        (self.root / kind).mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / kind / f"{key}.lock")):
            yield

    def get(self, kind: str, key: str) -> tuple[Path, dict] | None:
        """(model path, meta) of an intact entry; None if absent or corrupt (then removed)."""
        folder = self.entry(kind, key)
        if not folder.is_dir():
            return None
        try:
            meta = json.loads((folder / META_FILE).read_text())
            intact = file_sha256(folder / MODEL_FILE) == meta["sha256"]
        except (OSError, ValueError, KeyError):
            intact = False
        if not intact:
            log.warning("store entry %s is corrupt or incomplete; removing it", folder)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return folder / MODEL_FILE, meta

    def put(self, kind: str, key: str, model, meta: dict) -> Path:
        """Save `model` with `meta` as the entry for key (replacing an older one)."""
        parent = self.root / kind
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=parent))
        try:
            model.save(tmp / MODEL_FILE)
            meta = {**meta, "key": key, "sha256": file_sha256(tmp / MODEL_FILE)}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
            final = self.entry(kind, key)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final / MODEL_FILE

    def clear(self) -> int:
        """Remove every entry; returns how many there were."""
        count = sum(1 for _ in self.root.glob("*/*/" + META_FILE)) if self.root.is_dir() else 0
        shutil.rmtree(self.root, ignore_errors=True)
        return count


def main(argv: list[str] | None = None) -> int:
    from avlsi.config import configured_default

    parser = argparse.ArgumentParser(prog="python -m avlsi.store", description=__doc__)
    parser.add_argument(
        "--dir", default=configured_default("store.dir"), help="default: %(default)s"
    )
    parser.add_argument("--clear", action="store_true", help="remove every stored model")
    args = parser.parse_args(argv)
    store = ModelStore(args.dir)
    if args.clear:
        print(f"removed {store.clear()} stored models from {args.dir}")
    else:
        for meta in sorted(store.root.glob("*/*/" + META_FILE)):
            print(meta.parent.relative_to(store.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
