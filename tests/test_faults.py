"""Faults: signals, orphaned runs, parallel jobs on a new store, and a store under races."""

import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY

from avlsi.store import META_FILE, MODEL_FILE, ModelStore

# ---------------------------------------------------------------- the store


class FakeModel:
    """Anything with `.save(path)` can be stored; a payload big enough to take time to write."""

    def __init__(self, tag: str, size: int = 1 << 20) -> None:
        self.payload = (tag.encode() + b"\n") * (size // (len(tag) + 1))

    def save(self, path) -> None:
        Path(path).write_bytes(self.payload)


def test_edited_meta_is_detected_and_not_reused(tmp_path):
    store = ModelStore(tmp_path)
    meta = {"metrics": {"baseline.test_accuracy": 0.9123}, "from": tmp_path}  # a path: as str
    store.put("baselines", "k-1", FakeModel("a"), meta)
    assert store.get("baselines", "k-1")[1]["metrics"]["baseline.test_accuracy"] == 0.9123
    meta_file = tmp_path / "baselines" / "k-1" / META_FILE
    meta_file.write_text(meta_file.read_text().replace("0.9123", "0.9124"))  # one digit

    assert store.get("baselines", "k-1") is None
    assert not (tmp_path / "baselines" / "k-1").exists()  # removed, to be rebuilt
    store.put("baselines", "k-1", FakeModel("a"), {"metrics": {"baseline.test_accuracy": 0.9}})
    meta_file.write_text(meta_file.read_text().replace('"k-1"', '"k-1" '))  # layout only: fine
    assert store.verify("baselines", "k-1") is None
    meta_file.write_text(meta_file.read_text().replace("0.9", "0.8"))
    assert store.verify("baselines", "k-1") == "meta.json was changed after it was written"


def test_entry_copied_under_another_key_is_refused(tmp_path):
    store = ModelStore(tmp_path)
    store.put("baselines", "cnn-s0-1111", FakeModel("cnn"), {})
    shutil.copytree(tmp_path / "baselines" / "cnn-s0-1111", tmp_path / "baselines" / "mlp-s0-2222")

    assert store.get("baselines", "mlp-s0-2222") is None
    assert store.get("baselines", "cnn-s0-1111") is not None
    # Nor under another kind.
    shutil.copytree(tmp_path / "baselines" / "cnn-s0-1111", tmp_path / "pruned" / "cnn-s0-1111")
    assert store.get("pruned", "cnn-s0-1111") is None
    shutil.copytree(tmp_path / "baselines" / "cnn-s0-1111", tmp_path / "baselines" / "x-3333")
    assert store.verify("baselines", "x-3333") == "it was written for baselines/cnn-s0-1111"


def test_entries_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        ModelStore(tmp_path).put("baselines", "k-1", FakeModel("a"), {})
    finally:
        os.umask(old)
    folder = tmp_path / "baselines" / "k-1"
    assert folder.stat().st_mode & 0o777 == 0o775
    assert (folder / MODEL_FILE).stat().st_mode & 0o777 == 0o664
    assert (folder / META_FILE).stat().st_mode & 0o777 == 0o664


def store_listing(root: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "avlsi.store", "--dir", str(root), *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_stale_temp_folders_are_cleaned_and_not_listed(tmp_path):
    from filelock import FileLock

    store = ModelStore(tmp_path)
    store.put("pruned", "cnn-p0.3-s0-abcd", FakeModel("a"), {})
    stale = tmp_path / "pruned" / ".cnn-p0.3-s0-abcd.k1l2m3n4"  # a writer killed mid-put
    stale.mkdir()
    (stale / MODEL_FILE).write_bytes(b"x" * 1000)
    busy = tmp_path / "pruned" / ".cnn-p0.6-s0-ef01.q9r8s7t6"  # a writer at work
    busy.mkdir()
    (busy / MODEL_FILE).write_bytes(b"y" * 1000)

    with FileLock(str(tmp_path / "pruned" / "cnn-p0.6-s0-ef01.lock")):
        proc = store_listing(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["pruned/cnn-p0.3-s0-abcd"]
    assert not stale.exists()
    assert busy.exists()  # its key's lock was held: not stale
    # A writer of a key cleans that key's leftovers too.
    stale.mkdir()
    store.put("pruned", "cnn-p0.3-s0-abcd", FakeModel("b"), {})
    assert not stale.exists() and not busy.exists()


def test_store_listing_flags_corrupt_entries(tmp_path):
    store = ModelStore(tmp_path)
    store.put("baselines", "k-1", FakeModel("a"), {})
    store.put("baselines", "k-2", FakeModel("b"), {})
    model = tmp_path / "baselines" / "k-2" / MODEL_FILE
    model.write_bytes(model.read_bytes()[:100])
    proc = store_listing(tmp_path, "--verify")
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "baselines/k-1",
        "baselines/k-2  CORRUPT: model.keras does not match its checksum",
    ]


def _writer(root: str, key: str, number: int, rounds: int, errors) -> None:
    store = ModelStore(root)
    for i in range(rounds):
        try:
            store.put("pruned", key, FakeModel(f"w{number}-{i}"), {"writer": number, "round": i})
        except Exception as err:  # reported, not raised: the parent counts them
            errors.put(f"writer {number}: {type(err).__name__}: {err}")


def _reader(root: str, key: str, stop, errors, seen) -> None:
    store = ModelStore(root)
    counts = {"intact": 0, "none": 0}
    while not stop.is_set():
        try:
            found = store.get("pruned", key)
        except Exception as err:
            errors.put(f"reader: {type(err).__name__}: {err}")
            continue
        if found is None:
            counts["none"] += 1
        else:
            path, meta = found
            assert path.name == MODEL_FILE and "writer" in meta
            counts["intact"] += 1
    seen.put(counts)


def test_four_writers_and_two_readers_on_one_key(tmp_path):
    """Writers never fail, readers never raise and, the entry existing, never miss it."""
    key, root = "cnn-synthetic-l1-p0.3-s0-0123456789abcdef", str(tmp_path)
    store = ModelStore(root)
    store.put("pruned", key, FakeModel("first"), {"writer": -1, "round": 0})
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold TF threads
    errors, seen, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    readers = [ctx.Process(target=_reader, args=(root, key, stop, errors, seen)) for _ in range(2)]
    writers = [ctx.Process(target=_writer, args=(root, key, n, 8, errors)) for n in range(4)]
    for proc in readers + writers:
        proc.start()
    for proc in writers:
        proc.join(timeout=240)
    stop.set()
    counts = [seen.get(timeout=60) for _ in readers]
    for proc in readers:
        proc.join(timeout=60)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == []
    assert all(proc.exitcode == 0 for proc in readers + writers)
    assert all(c["none"] == 0 and c["intact"] > 0 for c in counts), counts
    assert store.verify("pruned", key) is None
    assert [p.name for p in (tmp_path / "pruned").iterdir() if p.is_dir()] == [key]  # no temps


# ---------------------------------------------------------------- MLflow runs


def run_cfg(uri: str):
    from omegaconf import OmegaConf

    return OmegaConf.create({"mlflow": {"tracking_uri": uri, "experiment": "avlsi"}})


@pytest.mark.parametrize(
    ("exception", "status", "error"),
    [
        (RuntimeError("boom\nsecond line"), "FAILED", "RuntimeError: boom"),
        (KeyboardInterrupt(), "KILLED", "interrupted (SIGINT)"),
    ],
)
def test_a_failed_run_carries_a_one_line_error_tag(tmp_path, exception, status, error):
    from mlflow.tracking import MlflowClient

    from avlsi import record

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(type(exception)), record.mlflow_run(run_cfg(uri), "job", {}) as run:
        raise exception
    found = MlflowClient(uri).get_run(run.info.run_id)
    assert found.info.status == status
    assert found.data.tags["error"] == error
    assert found.data.tags["avlsi.host"] == socket.gethostname()
    assert found.data.tags["avlsi.pid"] == str(os.getpid())


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_the_next_job_marks_runs_whose_process_is_gone_as_orphaned(cli):
    from mlflow.tracking import MlflowClient

    from avlsi import record

    client = MlflowClient(cli.uri)
    experiment = record.ensure_experiment(cli.uri, "avlsi")
    here, me = socket.gethostname(), str(os.getpid())
    start = record.process_start(os.getpid())
    made = {
        "orphan": {"avlsi.host": here, "avlsi.pid": str(dead_pid())},
        "pid reused": {"avlsi.host": here, "avlsi.pid": me, "avlsi.process_start": "boot:1"},
        "alive": {"avlsi.host": here, "avlsi.pid": me, "avlsi.process_start": start},
        "other host": {"avlsi.host": "elsewhere.example", "avlsi.pid": str(dead_pid())},
    }
    ids = {
        name: client.create_run(experiment, tags=tags).info.run_id for name, tags in made.items()
    }

    proc = cli("stage=train")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {r.info.run_id: r for r in cli.runs()}
    for name in ("orphan", "pid reused"):
        assert runs[ids[name]].info.status == "FAILED", name
        assert runs[ids[name]].data.tags["avlsi.orphaned"] == "true"
        assert "ended without closing the run" in runs[ids[name]].data.tags["error"]
    for name in ("alive", "other host"):
        assert runs[ids[name]].info.status == "RUNNING", name
        assert "avlsi.orphaned" not in runs[ids[name]].data.tags
    (job,) = [r for r in runs.values() if r.info.run_id not in ids.values()]
    assert job.info.status == "FINISHED"
    assert job.data.tags["avlsi.host"] == here and int(job.data.tags["avlsi.pid"]) > 0


def _default_sigint() -> None:
    """A child inherits an ignored SIGINT (pytest-xdist's workers ignore it), and Python
    then installs no KeyboardInterrupt handler: give the job Ctrl-C as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_job(cli, *overrides: str) -> subprocess.Popen:
    args = [*TINY, *overrides, *cli.paths()]
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cli.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code", "line", "error"),
    [
        (signal.SIGTERM, 143, "avlsi: terminated (SIGTERM)", "terminated (SIGTERM)"),
        (signal.SIGINT, 130, "avlsi: interrupted", "interrupted (SIGINT)"),
    ],
)
def test_a_signal_ends_the_run_killed_with_one_line(cli, signum, code, line, error):
    proc = start_job(cli, "stage=train", "train.epochs=500")
    config = cli.tmp / f"run{cli.count}" / "config.yaml"  # written once the run has started
    deadline = time.monotonic() + 300
    while not config.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # into training
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.kill(proc.pid, signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-3000:]
    assert [ln for ln in stderr.splitlines() if ln.strip()] == [line]
    (run,) = cli.runs()
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == error


@pytest.mark.slow
def test_four_jobs_started_at_once_on_a_new_sqlite_file_all_finish(cli):
    cli.uri = f"sqlite:///{cli.tmp}/new/folder/mlflow.db"  # neither the file nor its folder exist
    procs = [start_job(cli, "stage=train", f"seed={seed}") for seed in range(4)]
    results = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr[-3000:]
    runs = cli.runs()
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2", "3"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_signal_inside_keras_loops_waits_for_a_safe_point(monkeypatch):
    """Inside `deferred()` (Keras' fit / evaluate) SIGTERM is only noted; it is raised between
    two batches (or on leaving), never inside C code that TensorFlow called Python from."""
    from avlsi import stopping
    from avlsi.errors import Terminated

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(stopping, "_state", {"deferring": 0, "pending": None})
    signal.signal(signal.SIGTERM, stopping._on_signal)
    try:
        with pytest.raises(Terminated), stopping.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler has run: nothing raised yet
            reached = True
        assert reached
        signal.signal(signal.SIGTERM, stopping._on_signal)
        with stopping.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            with pytest.raises(Terminated):
                stopping.raise_if_pending()  # what StopOnSignal calls at a batch's end
        with pytest.raises(Terminated):  # outside Keras' loops: raised at once
            signal.signal(signal.SIGTERM, stopping._on_signal)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_terminated_job_reaches_the_sweep_through_pickling():
    """A joblib worker stopped by SIGTERM sends `Terminated` back to the sweep, pickled."""
    import pickle

    from avlsi.errors import Terminated

    back = pickle.loads(pickle.dumps(Terminated(signal.SIGTERM)))
    assert isinstance(back, KeyboardInterrupt) and back.signal_name == "SIGTERM"


def test_a_new_store_is_a_copy_of_an_empty_migrated_one(tmp_path, monkeypatch):
    """MLflow migrates a new sqlite database (about a second); AVLSI copies one it migrated
    once per MLflow version instead, and the copy works as a store."""
    import mlflow

    from avlsi import record

    monkeypatch.setenv("AVLSI_CACHE_DIR", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path}/new/folder/mlflow.db"
    record.open_client(uri)
    template = tmp_path / "cache" / f"mlflow-{mlflow.__version__}-empty.db"
    assert (tmp_path / "new" / "folder" / "mlflow.db").read_bytes() == template.read_bytes()
    experiment = record.ensure_experiment(uri, "study")
    client = record.open_client(uri)
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    assert not list((tmp_path / "new" / "folder").glob(".*.tmp"))  # no partial copy left
