"""A sweep with baseline reuse vs the same sweep with `store.reuse=false`, side by side.

    .venv/bin/python benchmarks/bench_reuse.py                    # cnn, 10k MNIST, 2 epochs
    .venv/bin/python benchmarks/bench_reuse.py --model dnn --limit 60000 --epochs 3

Both sweeps are `python run.py -m criterion=l1,random psize=0.1,0.3,0.5` (2 x 3 = 6 jobs)
on one model, each in a fresh MLflow store and a fresh baseline store, run one after the
other through the real command line. Printed per sweep: wall-clock seconds, and from the
MLflow records how many jobs trained their baseline and how many reused a stored one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["criterion=l1,random", "psize=0.1,0.3,0.5"]


def run_sweep(tmp: Path, name: str, common: list[str], reuse: bool) -> dict:
    """Run the sweep in its own stores; return its time and baseline sources."""
    folder = tmp / name
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    args = [
        sys.executable, str(ROOT / "run.py"), "-m", *common, *SWEEP,
        f"store.reuse={str(reuse).lower()}", f"store.dir={folder / 'store'}",
        f"mlflow.tracking_uri={uri}", "mlflow.experiment=bench_reuse",
        f"hydra.sweep.dir={folder / 'runs'}", "verbose=0",
    ]  # fmt: skip
    folder.mkdir(parents=True)
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=folder, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"the {name} sweep failed:\n{proc.stderr[-2000:]}")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bench_reuse")
    runs = client.search_runs([experiment.experiment_id])
    sources = [r.data.tags.get("baseline.source") for r in runs]
    accuracy = [r.data.metrics["finetuned.test_accuracy"] for r in runs]
    return {
        "seconds": seconds,
        "jobs": len(runs),
        "trained": sources.count("trained"),
        "reused": sources.count("reused"),
        "mean_acc": sum(accuracy) / len(accuracy),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--limit", type=int, default=10000, help="training examples")
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2, help="baseline training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    args = parser.parse_args()
    common = [
        f"model={args.model}", f"dataset={args.dataset}", f"dataset.limit={args.limit}",
        f"dataset.test_limit={args.test_limit}", f"train.epochs={args.epochs}",
        f"finetune.epochs={args.finetune_epochs}",
    ]  # fmt: skip
    print(f"sweep: {' '.join(SWEEP)}  with {' '.join(common)}")
    with tempfile.TemporaryDirectory(prefix="avlsi-bench-reuse-") as tmp:
        results = {
            "reuse on": run_sweep(Path(tmp), "reuse", common, reuse=True),
            "reuse off": run_sweep(Path(tmp), "noreuse", common, reuse=False),
        }
    print(f"{'':10} {'seconds':>8} {'jobs':>5} {'trained':>8} {'reused':>7} {'mean acc':>9}")
    for name, r in results.items():
        print(
            f"{name:10} {r['seconds']:8.1f} {r['jobs']:5d} {r['trained']:8d} "
            f"{r['reused']:7d} {r['mean_acc']:9.4f}"
        )
    ratio = results["reuse on"]["seconds"] / results["reuse off"]["seconds"]
    print(f"time with reuse / time without: {ratio:.2f}")


if __name__ == "__main__":
    main()
