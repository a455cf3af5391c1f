"""Keys: what determines a result, hashed, so that equal keys mean equal results.

Every key covers the config that computes the result, the TensorFlow / tf-keras / Keras 3
versions, a fingerprint of AVLSI's own source files and a fingerprint of the data file's content:
a sweep after a code change or after a data file is replaced runs again, a sweep after a
change to the README or the tests does not. `dataset.path` itself is not part of any key
(its content is): a data file moved elsewhere keeps its keys.

- job key: the whole job (every config section that changes results, seed and stage too);
- group key: the job key without `seed` and `stage`: runs that only repeat a configuration
  with another seed, or are other stages of one chain, share it (the report's groups);
- baseline key / pruned key: the store's entries for a trained baseline and a pruned model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import avlsi
from avlsi.config import effective_psize
from avlsi.store import file_sha256

# Config sections that say where results go or how they look, not what is computed.
NOT_IN_JOB_KEY = ("mlflow", "store", "report", "verbose", "rerun", "task", "hydra", "sensitivity")
NOT_IN_GROUP_KEY = ("seed", "stage", "latency", "export")  # latency / files: not accuracy
# Where data lives, not what it is (its content is fingerprinted instead).
DATA_LOCATIONS = ("path", "test_path", "cache_dir")


def config_key(prefix: str, parts: dict[str, Any]) -> str:
    """`prefix-<16 hex>`: a readable prefix plus a hash of everything that determines it."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return f"{prefix}-{hashlib.sha256(blob).hexdigest()[:16]}"


@functools.cache
def code_fingerprint() -> str:
    """sha256 (16 hex) of the `avlsi` package's Python sources, hashed once per process."""
    root = Path(avlsi.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout AVLSI runs from (with `+dirty` if changed), else None."""
    root = Path(avlsi.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty=+dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def cache_root() -> Path:
    """AVLSI's cache folder: $AVLSI_CACHE_DIR, else ~/.cache/avlsi."""
    return Path(os.environ.get("AVLSI_CACHE_DIR") or Path.home() / ".cache" / "avlsi").expanduser()


def _cache_dir() -> Path:
    return cache_root() / "fingerprints"


def file_fingerprint(path: Path) -> str:
    """sha256 of a regular file's content, cached by (path, size, mtime)."""
    stat = path.stat()
    ident = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
    cached = _cache_dir() / hashlib.sha256(ident).hexdigest()[:32]
    try:
        return cached.read_text().strip()
    except OSError:
        pass
    value = file_sha256(path)
    _write_cache(cached, value)
    return value


def folder_listing(folder: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every regular file under `folder`, sorted; hidden
    files and folders (a leading dot) are left out, as the image-folder loader leaves them."""
    found: list[tuple[str, int, int]] = []
    stack, seen = [folder], {folder.resolve()}
    while stack:
        current = stack.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    real = Path(entry.path).resolve()
                    if real not in seen:  # a link back up the tree is walked once
                        seen.add(real)
                        stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=True):
                    info = entry.stat(follow_symlinks=True)
                    rel = Path(entry.path).relative_to(folder).as_posix()
                    found.append((rel, info.st_size, info.st_mtime_ns))
    return sorted(found)


_FOLDER_MEMO: dict[Path, str] = {}  # folder -> fingerprint, for one job (forget_folders)


def forget_folders() -> None:
    """Walk data folders again at the next fingerprint (called as each job starts)."""
    _FOLDER_MEMO.clear()


def folder_fingerprint(folder: Path) -> str:
    """sha256 of a folder's file names and contents, cached on disk by its listing (names,
    sizes, mtimes): a rerun costs one walk of the folder (about 30 us a file here); a
    changed, added or removed file, a full hash (which also makes a copy of the folder,
    whose mtimes differ, keep its keys). Within a job the folder is walked once."""
    memo = _FOLDER_MEMO.get(folder.resolve())
    if memo is not None:
        return memo
    _FOLDER_MEMO[folder.resolve()] = value = _folder_fingerprint(folder)
    return value


def _folder_fingerprint(folder: Path) -> str:
    listing = folder_listing(folder)
    ident = hashlib.sha256(f"{folder.resolve()}\0{listing}".encode()).hexdigest()[:32]
    cached = _cache_dir() / f"folder-{ident}"
    try:
        return cached.read_text().strip()
    except OSError:
        pass
    digest = hashlib.sha256()
    for rel, _size, _mtime in listing:
        digest.update(rel.encode() + b"\0" + file_sha256(folder / rel).encode() + b"\0")
    value = digest.hexdigest()
    _write_cache(cached, value)
    return value


def _write_cache(cached: Path, value: str) -> None:
    try:  # a cache only: a read-only home is no reason to fail
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}")
        tmp.write_text(value)
        os.replace(tmp, cached)
    except OSError:
        pass


def path_fingerprint(path: Path) -> str:
    """Fingerprint (16 hex) of a file's or folder's content; `missing` if it is neither."""
    if path.is_dir():
        return folder_fingerprint(path)[:16]
    if path.is_file():
        return file_fingerprint(path)[:16]
    return "missing"


def data_fingerprint(dataset: DictConfig) -> str:
    """Fingerprint (16 hex) of `dataset.path`'s content (a file, or a folder's regular files)
    and of `dataset.test_path`'s if given; `builtin` for a dataset read from a package,
    keras' cache or generated from its config."""
    path = dataset.get("path")
    if not path:
        return "builtin"
    found = path_fingerprint(Path(str(path)).expanduser())
    test_path = dataset.get("test_path")
    if not test_path:
        return found
    tested = path_fingerprint(Path(str(test_path)).expanduser())
    return hashlib.sha256(f"{found}\0{tested}".encode()).hexdigest()[:16]


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def _dataset_parts(cfg: DictConfig) -> dict[str, Any]:
    parts = {k: v for k, v in _plain(cfg.dataset).items() if k not in DATA_LOCATIONS}
    parts["content"] = data_fingerprint(cfg.dataset)
    return parts


# Model keys that name a file (model=file, model=keras_app): its content is in the keys, not
# its place, so a model file replaced in place is a new baseline and a moved one is not.
MODEL_FILES = ("path", "weights")


def _model_parts(cfg: DictConfig) -> dict[str, Any]:
    from avlsi.models import is_builder

    parts = _plain(cfg.model)
    target = str(parts.get("_target_", ""))
    if not target.startswith("avlsi."):  # a user's builder: its module's source counts too
        parts["source"] = builder_fingerprint(target)
    if is_builder(cfg.model):
        return parts
    for key in MODEL_FILES:
        if parts.get(key):
            parts[key] = path_fingerprint(Path(str(parts[key])).expanduser())
    if parts.get("imports"):  # the modules of a file's custom layers: their code counts
        parts["imports"] = {name: module_fingerprint(name) for name in parts["imports"]}
    return parts


def module_fingerprint(name: str) -> str:
    """Fingerprint (16 hex) of module `name`'s source file, found without importing it
    ('unknown' when it cannot be found: the job then stops on importing it)."""
    from importlib.util import find_spec

    try:
        spec = find_spec(name)
    except Exception:  # noqa: BLE001  (a parent package that fails: reported on import)
        return "unknown"
    origin = spec.origin if spec else None
    return file_fingerprint(Path(origin))[:16] if origin and Path(origin).is_file() else "unknown"


def builder_fingerprint(target: str) -> str:
    """Fingerprint (16 hex) of the source file of the function `target` names ('unknown'
    when it cannot be found: the job then stops on that before anything is built)."""
    import inspect

    from hydra._internal.utils import _locate  # hydra.utils.get_method would log a failure

    try:
        source = inspect.getsourcefile(_locate(target))
    except Exception:  # not importable, or a builtin: reported by avlsi.models.resolve_builder
        return "unknown"
    return file_fingerprint(Path(source))[:16] if source else "unknown"


def _environment() -> dict[str, str]:
    """The versions that compute results: TensorFlow, tf-keras and Keras 3 (a model is in one
    of them; which one is in the model's keys: `model.keras`, a file's content, a builder's
    source)."""
    from importlib.metadata import version

    import tensorflow as tf
    import tf_keras

    return {
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "keras": version("keras"),
    }


def job_parts(cfg: DictConfig) -> dict[str, Any]:
    """Everything that determines a job's results (the job key hashes this)."""
    parts = {k: v for k, v in _plain(cfg).items() if k not in NOT_IN_JOB_KEY}
    parts.update(
        model=_model_parts(cfg),
        dataset=_dataset_parts(cfg),
        psize=effective_psize(cfg),
        code=code_fingerprint(),
        **_environment(),
    )
    return parts


def job_key(cfg: DictConfig) -> str:
    return config_key("job", job_parts(cfg))


def group_key(cfg: DictConfig) -> str:
    parts = {k: v for k, v in job_parts(cfg).items() if k not in NOT_IN_GROUP_KEY}
    return config_key("group", parts)


def baseline_key(cfg: DictConfig) -> str:
    """Everything that determines a trained baseline, hashed."""
    parts = {
        "model": _model_parts(cfg),
        "dataset": _dataset_parts(cfg),
        "train": _plain(cfg.train),
        "seed": cfg.seed,
        "code": code_fingerprint(),
        **_environment(),
    }
    return config_key(f"{cfg.model.name}-{cfg.dataset.name}-s{cfg.seed}", parts)


def pruned_key(cfg: DictConfig) -> str:
    """The baseline's key plus everything that determines how it was pruned."""
    psize = effective_psize(cfg)
    parts = {"baseline": baseline_key(cfg), "criterion": _plain(cfg.criterion), "psize": psize}
    engine = OmegaConf.select(cfg, "surgery.engine", default="auto")
    parts["surgery_engine"] = str(getattr(engine, "value", engine))
    schedule = cfg.get("schedule")
    if schedule is not None and str(schedule.name) != "oneshot":
        parts["schedule"] = _plain(schedule)  # iterative: its rounds fine-tune too
        if str(schedule.name) == "iterative":
            parts["finetune"] = _plain(cfg.finetune)
    shown = "" if psize is None else f"-p{psize}"
    prefix = f"{cfg.model.name}-{cfg.dataset.name}-{cfg.criterion.name}{shown}-s{cfg.seed}"
    return config_key(prefix, parts)
