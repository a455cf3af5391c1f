import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as users get it (avlsi/__init__)

import atexit  # noqa: E402
import json  # noqa: E402
import select  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Tiny synthetic job: every CLI test starts from these and adds its own overrides.
TINY = [
    "dataset=synthetic",
    "dataset.shape=[12,12,1]",
    "dataset.train_size=96",
    "dataset.test_size=48",
    "model.conv_filters=[4,4,8,8]",
    "model.dense_units=[8]",
    "train.epochs=1",
    "finetune.epochs=1",
    "train.batch_size=32",
    "finetune.batch_size=32",
    "criterion.samples=16",
    "latency.enabled=false",  # measured latency: tests/test_runtime.py
]


def stack_config(name: str, conv_filters: list[int], dense_units: list[int]):
    """A model config with the schema's defaults for everything but the layer sizes."""
    from omegaconf import OmegaConf

    from avlsi.config import ModelConfig

    return OmegaConf.structured(
        ModelConfig(name=name, conv_filters=conv_filters, dense_units=dense_units)
    )


def assert_one_line_error(proc, *needles: str, code: int | None = None) -> None:
    """Failed (with `code`, if given): one `avlsi: error:` line naming every needle."""
    if code is None:
        assert proc.returncode != 0, proc.stdout + proc.stderr
    else:
        assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("avlsi: error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


class Cli:
    """Runs `python run.py ...` in a subprocess with every path under one tmp folder."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = tmp / "mlflow.db"
        self.uri = f"sqlite:///{self.db}"
        self.store = tmp / "store"
        self.count = 0

    def paths(self) -> list[str]:
        self.count += 1
        return [
            f"mlflow.tracking_uri={self.uri}",
            f"store.dir={self.store}",
            f"hydra.run.dir={self.tmp}/run{self.count}",
            f"hydra.sweep.dir={self.tmp}/sweep{self.count}",
        ]

    def __call__(
        self, *overrides: str, tiny: bool = True, env: dict | None = None, fresh: bool = False
    ) -> subprocess.CompletedProcess:
        """`python run.py [TINY] OVERRIDES PATHS`, forked from the zygote (tests/zygote.py);
        a fresh interpreter where `fresh` or `env` asks for what happens at import time."""
        flags = [a for a in overrides if a.startswith("-")]  # argparse wants them first
        rest = [a for a in overrides if not a.startswith("-")]
        args = [*flags, *(TINY if tiny else []), *rest, *self.paths()]
        if not fresh and not env and os.environ.get("AVLSI_TEST_ZYGOTE", "1") == "1":
            return zygote_client().run(args, cwd=self.tmp, timeout=600)
        return subprocess.run(
            [sys.executable, str(ROOT / "run.py"), *args],
            cwd=self.tmp,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=600,
        )

    def runs(self, experiment: str = "avlsi", parents: bool = False):
        """The experiment's job runs (and, with `parents`, the sweeps' parent runs too)."""
        sqlite = self.uri.removeprefix("sqlite:///")
        if sqlite != self.uri and not Path(sqlite).exists():
            return []  # no database file, no runs (opening one would create and migrate it)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        exp = client.get_experiment_by_name(experiment)
        runs = [] if exp is None else client.search_runs([exp.experiment_id])
        return [r for r in runs if parents or r.data.tags.get("avlsi.sweep") != "true"]


class ZygoteClient:
    """Talks to one tests/zygote.py process (started on first use, one per test worker)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="avlsi-zygote-"))  # the children's output
        atexit.register(shutil.rmtree, self.folder, True)
        log = self.folder / "zygote.log"
        with log.open("w") as errors:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "zygote.py")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                text=True, cwd=ROOT,
            )  # fmt: skip
        if not self.proc.stdout.readline().strip():
            raise RuntimeError(f"tests/zygote.py did not start:\n{log.read_text()[-3000:]}")

    def answer(self, deadline: float) -> dict:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
            raise TimeoutError
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the test zygote (tests/zygote.py) died")
        return json.loads(line)

    def run(self, args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        out, err = self.folder / "stdout", self.folder / "stderr"
        request = {"args": args, "cwd": str(cwd), "env": dict(os.environ)}
        request |= {"stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        pid = self.answer(deadline)["pid"]
        try:
            code = self.answer(deadline)["code"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self.answer(time.monotonic() + 60)
            raise subprocess.TimeoutExpired(["run.py", *args], timeout) from None
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
        out.unlink()
        err.unlink()
        return subprocess.CompletedProcess(["run.py", *args], code, stdout, stderr)


_zygote: list[ZygoteClient] = []


def zygote_client() -> ZygoteClient:
    if not _zygote or _zygote[0].proc.poll() is not None:
        _zygote[:] = [ZygoteClient()]
    return _zygote[0]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture(scope="session")
def l1_random_sweep(tmp_path_factory) -> tuple[Cli, subprocess.CompletedProcess]:
    """`-m criterion=l1,random psize=0.5` on TINY, run once for the tests of several modules
    that read it (tests/shared_fixtures.py runs them on one worker): (its Cli, the process)."""
    cli = Cli(tmp_path_factory.mktemp("l1_random_sweep"))
    return cli, cli("-m", "criterion=l1,random", "psize=0.5")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (a stable sort, so each module's order stays): with pytest-xdist the
    long jobs start early and the short tests fill the workers in at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """With `-n` (`make test`): tests sharing a module-scoped fixture run on one worker."""
    if config.getvalue("dist") != "load":
        return None
    from shared_fixtures import SharedFixtureScheduling

    return SharedFixtureScheduling(config, log)
