"""A content-addressed store of trained baselines and pruned models, shared by all jobs.

An entry is a folder `<kind>/<key>/` holding `model.keras` and `meta.json`. The meta
records the entry's kind and key, the model file's sha256 and a sha256 of the meta itself:
an edited meta, a truncated model or an entry copied under another key fails verification
and is rebuilt, never loaded.

Writers of one key are serialised by its file lock (`<kind>/<key>.lock`) and write aside,
in a temporary folder `<kind>/.<key>.<random>/`: a new entry appears by renaming that
folder, an existing one is replaced file by file with `os.replace`, so a reader sees the
old files or the new ones, never a half-written file. A reader that finds an entry that
does not verify (perhaps mid-replace) waits for the key's lock and looks again; only then
is an entry still corrupt removed. Temporary folders left by killed writers are removed
once no process holds their key's lock. Folders and files follow the user's umask, so a
group can share a store.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

MODEL_FILE, META_FILE = "model.keras", "meta.json"
META_DIGEST = "meta_sha256"  # the meta's own checksum, over every other field


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def meta_sha256(meta: dict) -> str:
    """The checksum of a meta dict as read back from JSON, without its own checksum field."""
    body = {k: v for k, v in meta.items() if k != META_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def temp_key(name: str) -> str | None:
    """The key a temporary folder `.<key>.<random>` was written for, else None."""
    if not name.startswith("."):
        return None
    key, dot, _ = name[1:].rpartition(".")
    return key if dot and key else None


class ModelStore:
    """Keras models under `<root>/<kind>/<key>/`, written once and read by many."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def _lock_path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.lock"

    @contextmanager
    def lock(self, kind: str, key: str):
        """Hold the key's lock: one job builds a missing entry, the others wait for it.

        Re-entrant within a process (a job holding it may `put` and `get` the same key).
        """
        (self.root / kind).mkdir(parents=True, exist_ok=True)
        with FileLock(str(self._lock_path(kind, key)), is_singleton=True):
            yield

    def verify(self, kind: str, key: str) -> str | None:
        """Why the entry is not intact (missing files, wrong checksums, another key), or None."""
        folder = self.entry(kind, key)
        try:
            meta = json.loads((folder / META_FILE).read_text())
            if not isinstance(meta, dict):
                return "meta.json is not an object"
            if meta.get(META_DIGEST) != meta_sha256(meta):
                return "meta.json was changed after it was written"
            if (meta.get("kind"), meta.get("key")) != (kind, key):
                return f"it was written for {meta.get('kind')}/{meta.get('key')}"
            if file_sha256(folder / MODEL_FILE) != meta.get("sha256"):
                return "model.keras does not match its checksum"
        except FileNotFoundError as err:
            return f"{Path(err.filename).name} is missing"
        except (OSError, ValueError) as err:
            return f"unreadable ({err})"
        return None

    def _read(self, kind: str, key: str) -> tuple[Path, dict] | str | None:
        """(model path, meta) if intact, None if absent, else why it is not intact."""
        folder = self.entry(kind, key)
        if not folder.is_dir():
            return None
        problem = self.verify(kind, key)
        if problem is not None:
            return problem
        return folder / MODEL_FILE, json.loads((folder / META_FILE).read_text())

    def get(self, kind: str, key: str) -> tuple[Path, dict] | None:
        """(model path, meta) of an intact entry; None if absent or corrupt (then removed).

        An entry that does not verify may be mid-replace: look again holding the key's
        lock (no writer is at work then), and remove it only if it is still corrupt.
        """
        found = self._read(kind, key)
        if not isinstance(found, str):
            return found
        with self.lock(kind, key):
            found = self._read(kind, key)
            if not isinstance(found, str):
                return found
            log.warning("store entry %s is corrupt (%s); removing it", self.entry(kind, key), found)
            self._discard(self.entry(kind, key), key)
        return None

    def put(self, kind: str, key: str, model, meta: dict) -> Path:
        """Save `model` with `meta` as the entry for key (replacing an older one)."""
        parent = self.root / kind
        parent.mkdir(parents=True, exist_ok=True)
        final = self.entry(kind, key)
        with self.lock(kind, key):
            for stale in parent.glob(f".{glob.escape(key)}.*"):  # ours to clean: we hold the lock
                if temp_key(stale.name) == key:
                    shutil.rmtree(stale, ignore_errors=True)
            self.clean_stale(kind)
            tmp = self._make_temp(parent, key)
            try:
                model.save(tmp / MODEL_FILE)
                meta = {**meta, "kind": kind, "key": key, "sha256": file_sha256(tmp / MODEL_FILE)}
                meta = json.loads(json.dumps(meta, default=str))  # the meta as it will be read
                meta[META_DIGEST] = meta_sha256(meta)
                (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
                if final.is_dir():  # replace file by file: readers never see a gap
                    os.replace(tmp / MODEL_FILE, final / MODEL_FILE)
                    os.replace(tmp / META_FILE, final / META_FILE)
                else:
                    if final.exists() or final.is_symlink():
                        final.unlink()
                    os.rename(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return final / MODEL_FILE

    @staticmethod
    def _make_temp(parent: Path, key: str) -> Path:
        """A new folder `.<key>.<random>` made with the umask's permissions (not mkdtemp's 0700)."""
        while True:
            tmp = parent / f".{key}.{secrets.token_hex(4)}"
            try:
                tmp.mkdir()
                return tmp
            except FileExistsError:
                continue

    def _discard(self, folder: Path, key: str) -> None:
        """Remove a folder: rename it aside first, so nobody sees it half-deleted."""
        aside = self._make_temp(folder.parent, key)
        try:
            os.replace(folder, aside)
        except OSError:
            aside.rmdir()
            shutil.rmtree(folder, ignore_errors=True)
            return
        shutil.rmtree(aside, ignore_errors=True)

    def clean_stale(self, kind: str | None = None) -> int:
        """Remove temporary folders whose key's lock nobody holds; returns how many."""
        kinds = [self.root / kind] if kind else self._kind_folders()
        removed = 0
        for parent in kinds:
            for tmp in sorted(parent.glob(".*")) if parent.is_dir() else []:
                key = temp_key(tmp.name)
                if key is None or not tmp.is_dir():
                    continue
                probe = FileLock(str(self._lock_path(parent.name, key)))  # not re-entrant
                try:
                    probe.acquire(timeout=0)
                except Timeout:  # a writer (maybe this process) is at work on this key
                    continue
                try:
                    shutil.rmtree(tmp, ignore_errors=True)
                    removed += 1
                finally:
                    probe.release()
        return removed

    def _kind_folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def entries(self) -> Iterator[tuple[str, str]]:
        """(kind, key) of every entry folder, temporary folders excluded."""
        for parent in self._kind_folders():
            for folder in sorted(parent.iterdir()):
                if folder.is_dir() and temp_key(folder.name) is None:
                    yield parent.name, folder.name

    def clear(self) -> int:
        """Remove every entry; returns how many there were."""
        count = sum(1 for _ in self.entries())
        shutil.rmtree(self.root, ignore_errors=True)
        return count


def main(argv: list[str] | None = None) -> int:
    from avlsi.config import configured_default

    parser = argparse.ArgumentParser(prog="python -m avlsi.store", description=__doc__)
    parser.add_argument(
        "--dir", default=configured_default("store.dir"), help="default: %(default)s"
    )
    parser.add_argument("--clear", action="store_true", help="remove every stored model")
    parser.add_argument(
        "--verify", action="store_true", help="check every entry's checksums; exit 1 if any fails"
    )
    args = parser.parse_args(argv)
    store = ModelStore(args.dir)
    if args.clear:
        print(f"removed {store.clear()} stored models from {args.dir}")
        return 0
    store.clean_stale()
    failed = 0
    for kind, key in store.entries():
        problem = store.verify(kind, key) if args.verify else None
        failed += problem is not None
        print(f"{kind}/{key}" + (f"  CORRUPT: {problem}" if problem else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
