"""Chaos: kill a small sweep's jobs at random moments, rerun it, check nothing is lost or wrong.

    .venv/bin/python benchmarks/chaos.py --faults 20
    .venv/bin/python benchmarks/chaos.py --faults 4 --seed 1 --keep

The sweep is the tiny synthetic job of tests/conftest.py (`criterion=l1,random
psize=0.3,0.6 seed=0,1`: 8 jobs). First it runs once undisturbed, in its own stores: the
reference. Then, in other stores, the same sweep is started again and again (`rerun=true`,
so every start runs jobs), each time on a randomly chosen launcher (serial, or joblib with
two workers), and after a random delay one random process of it (the sweep itself, or one
of its joblib workers) gets SIGKILL, SIGTERM or SIGINT; until `--faults` signals have hit a
live process. Last, the sweep is run once more, undisturbed, to completion (`rerun=false`:
it runs what is missing). Printed: faults injected, runs left RUNNING, store entries that
fail verification, jobs whose final metrics differ from the reference. Goal: 0 / 0 / 0.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = [
    "dataset=synthetic", "dataset.shape=[12,12,1]", "dataset.train_size=96",
    "dataset.test_size=48", "model.conv_filters=[4,4,8,8]", "model.dense_units=[8]",
    "train.epochs=1", "finetune.epochs=1", "train.batch_size=32", "finetune.batch_size=32",
    "criterion.samples=16", "verbose=0",
]  # fmt: skip
SWEEP = ["criterion=l1,random", "psize=0.3,0.6", "seed=0,1"]
JOBS = 8
EXPERIMENT = "chaos"
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
RESULT_PREFIXES = ("baseline.", "pruned.", "finetuned.")


class Stores:
    """One MLflow database and one model store under a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.store = folder / "store"
        self.starts = 0
        folder.mkdir(parents=True, exist_ok=True)

    def start(self, launcher: str, rerun: bool) -> subprocess.Popen:
        """Start the sweep in a new session (its own process group); output to a log file."""
        self.starts += 1
        parallel = (
            ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
        )
        args = [
            sys.executable, str(ROOT / "run.py"), "-m", *parallel, *TINY, *SWEEP,
            f"rerun={str(rerun).lower()}", f"mlflow.tracking_uri={self.uri}",
            f"mlflow.experiment={EXPERIMENT}", f"store.dir={self.store}",
            f"hydra.sweep.dir={self.folder / f'sweep{self.starts}'}",
        ]  # fmt: skip
        log = open(self.folder / f"sweep{self.starts}.log", "w")  # noqa: SIM115 (closed by the OS)
        return subprocess.Popen(
            args, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def runs(self):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        return [] if experiment is None else client.search_runs([experiment.experiment_id])


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def is_worker(pid: int) -> bool:
    try:
        return b"popen_loky" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def settle(proc: subprocess.Popen, grace: float) -> str:
    """Wait for the sweep and every process of its group; kill what outlives `grace` seconds."""
    try:
        proc.wait(timeout=grace)
        outcome = f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        outcome = "HUNG, killed"
    deadline = time.monotonic() + grace
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
        outcome += ", stray processes killed"
    proc.wait()
    return outcome


def inject(stores: Stores, rng: random.Random, max_delay: float, grace: float) -> str | None:
    """Start the sweep, signal one random process of it after a random delay; None if missed."""
    launcher = rng.choice(["serial", "joblib"])
    signum = rng.choice(SIGNALS)
    delay = rng.uniform(0.5, max_delay)
    proc = stores.start(launcher, rerun=True)
    time.sleep(delay)
    workers = [p for p in descendants(proc.pid) if is_worker(p)]
    target = rng.choice([proc.pid, *workers])
    what = "the sweep" if target == proc.pid else "a joblib worker"
    try:
        if proc.poll() is not None:
            raise ProcessLookupError
        os.kill(target, signum)
    except ProcessLookupError:
        settle(proc, grace)
        return None
    outcome = settle(proc, grace)
    name = signal.Signals(signum).name
    return f"{name} to {what} ({launcher}) after {delay:.1f} s: {outcome}"


def results(run) -> dict[str, float]:
    return {k: v for k, v in run.data.metrics.items() if k.startswith(RESULT_PREFIXES)}


def compare(reference: Stores, chaos: Stores) -> tuple[int, list[str]]:
    """Job keys whose FINISHED runs (every one of them) differ from the reference, or are none."""
    expected = {
        r.data.tags["avlsi.job_key"]: results(r)
        for r in reference.runs()
        if r.info.status == "FINISHED"
    }
    finished: dict[str, list] = {}
    for run in chaos.runs():
        if run.info.status == "FINISHED" and "avlsi.job_key" in run.data.tags:
            finished.setdefault(run.data.tags["avlsi.job_key"], []).append(run)
    wrong = []
    for key, metrics in sorted(expected.items()):
        runs = finished.get(key, [])
        if not runs:
            wrong.append(f"{key}: no FINISHED run")
        for run in runs:
            if results(run) != metrics:
                diff = sorted(k for k in metrics.keys() | results(run).keys()
                              if metrics.get(k) != results(run).get(k))  # fmt: skip
                wrong.append(f"{key}: run {run.info.run_id} differs in {', '.join(diff)}")
    return len(expected), wrong


def check_store(folder: Path) -> tuple[int, list[str], int]:
    """(entries, those failing verification, temporary folders left)."""
    from avlsi.store import ModelStore, temp_key

    store = ModelStore(folder)
    entries = list(store.entries())
    bad = [f"{k}/{key}: {p}" for k, key in entries if (p := store.verify(k, key)) is not None]
    temps = [t for t in folder.glob("*/.*") if t.is_dir() and temp_key(t.name)]
    return len(entries), bad, len(temps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=20, help="signals to deliver (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="of the random choices")
    parser.add_argument("--max-delay", type=float, help="default: 0.8 x the reference sweep")
    parser.add_argument(
        "--grace", type=float, default=180.0, help="seconds a sweep may take to end"
    )
    parser.add_argument("--dir", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.dir or Path(tempfile.mkdtemp(prefix="avlsi-chaos-"))
    print(f"work folder: {work}", flush=True)

    reference = Stores(work / "reference")
    start = time.perf_counter()
    proc = reference.start("serial", rerun=False)
    if proc.wait() != 0:
        sys.exit(f"the reference sweep failed; see {reference.folder}/sweep1.log")
    took = time.perf_counter() - start
    print(f"reference sweep: {JOBS} jobs in {took:.0f} s", flush=True)
    max_delay = args.max_delay or 0.8 * took

    chaos = Stores(work / "chaos")
    injected: list[str] = []
    missed = 0
    while len(injected) < args.faults:
        line = inject(chaos, rng, max_delay, args.grace)
        if line is None:
            missed += 1
            continue
        injected.append(line)
        print(f"fault {len(injected)}: {line}", flush=True)
    proc = chaos.start("serial", rerun=False)
    final = settle(proc, 10 * args.grace)
    print(f"undisturbed rerun: {final}", flush=True)

    runs = chaos.runs()
    running = [r for r in runs if r.info.status == "RUNNING"]
    orphaned = sum(r.data.tags.get("avlsi.orphaned") == "true" for r in runs)
    statuses = Counter(r.info.status for r in runs)
    entries, bad, temps = check_store(chaos.store)
    jobs, wrong = compare(reference, chaos)
    kinds = Counter(line.split()[0] for line in injected)
    print()
    by_signal = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    print(f"faults injected: {len(injected)} ({by_signal}; {missed} more missed a finished sweep)")
    print(f"runs: {dict(statuses)}; closed as orphans: {orphaned}")
    print(f"runs left RUNNING: {len(running)}")
    print(f"store entries that fail verification: {len(bad)} (of {entries}; temp folders: {temps})")
    print(f"jobs whose final metrics differ from the undisturbed sweep: {len(wrong)} (of {jobs})")
    for line in [*bad, *wrong]:
        print("  " + line)
    if not args.keep and args.dir is None:
        shutil.rmtree(work, ignore_errors=True)
    ok = final.startswith("exit 0") and not running and not bad and not wrong
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
