"""Bad input and hostile environments (issue 8 items 1, 4, 5; issue 7's terminal checks).

Each case goes through the real command line where it can: one `avlsi: error:` line, no
traceback, and nothing recorded or stored. Checks said to run "before TensorFlow loads" run
with a `tensorflow` package on PYTHONPATH that fails on import.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error

BIG = "9" * 100_000  # a 100 KB token


@pytest.fixture(autouse=True)
def quiet_tensorflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorFlow's C++ log level as users have it (avlsi sets 3): conftest's 2 lets TF's
    own ERROR chatter (e.g. "NodeDef mentions attribute ...") onto stderr of any job."""
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture
def no_tensorflow(tmp_path: Path) -> dict:
    """An environment in which importing TensorFlow fails loudly."""
    fake = tmp_path / "fake_tf" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('TensorFlow loaded before the check')\n")
    return {"PYTHONPATH": str(fake.parent)}


def assert_nothing_recorded(cli) -> None:
    assert cli.runs() == []
    assert not cli.store.exists() or not any(cli.store.rglob("*.keras"))


@contextmanager
def read_only(path: Path):
    """`path` read-only even for root (chmod, plus the immutable flag where root ignores
    modes); skips the test where neither can be had."""
    mode = path.stat().st_mode
    path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    flagged = False
    if os.access(path, os.W_OK) and shutil.which("chattr"):
        flagged = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    try:
        if os.access(path, os.W_OK):
            pytest.skip("cannot make a path read-only here")
        yield path
    finally:
        if flagged:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


# --- settings refused before any work ----------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["train.learning_rate=nan"], ["train.learning_rate=nan", "finite"]),
        (["train.learning_rate=inf"], ["train.learning_rate=inf"]),
        (["finetune.learning_rate=-inf"], ["finetune.learning_rate=-inf"]),
        (["dataset.noise=nan"], ["dataset.noise=nan"]),
        (["criterion=magnitude", "criterion.threshold=nan"], ["criterion.threshold=nan"]),
        (["model.dropout=nan"], ["model.dropout=nan"]),
        (["psize=nan"], ["psize=nan"]),
        (["seed=-1"], ["seed=-1"]),
        (["seed=4294967296"], ["seed=4294967296"]),
        (["mlflow.tracking_uri=sqlite://"], ["in-memory", "sqlite://"]),
        (["mlflow.tracking_uri=sqlite:///"], ["in-memory", "sqlite:///"]),
        (["mlflow.tracking_uri=sqlite:///:memory:"], ["in-memory"]),
        (["mlflow.experiment="], ["mlflow.experiment is empty"]),
        (["mlflow.tracking_uri="], ["mlflow.tracking_uri is empty"]),
        (["+foo=1"], ["unknown key foo"]),
        (["~psize"], ["psize is missing"]),
        (["+train.epoch=5"], ["unknown key train.epoch", "did you mean train.epochs?"]),
        (["+model.conv_filter=[2]"], ["did you mean model.conv_filters?"]),
        (["train.epoch=3"], ["unknown key train.epoch", "did you mean train.epochs?"]),
        (["psise=0.3"], ["unknown key psise", "did you mean psize?"]),
        (["dataset.nosie=0.1"], ["did you mean dataset.noise?"]),
        (["criterion.layer=conv1"], ["criterion.layer=conv1", "add criterion.scope=layer"]),
        (["dataset.test_limit=0"], ["dataset.test_limit"]),
        (["criterion=magnitude", "criterion.threshold=-1"], ["criterion.threshold=-1"]),
        (["dataset=mnist", "dataset.path=/dev/zero"], ["/dev/zero", "character device"]),
    ],
)
def test_bad_setting_is_one_line_before_tensorflow_loads(cli, no_tensorflow, overrides, needles):
    if cli.uri.startswith("sqlite") and any(o.startswith("mlflow.tracking_uri") for o in overrides):
        cli.uri = overrides[-1].partition("=")[2]  # the Cli fixture appends its own URI last
    tiny = not any(o.startswith("dataset=") for o in overrides)  # TINY is synthetic data
    proc = cli(*overrides, env=no_tensorflow, tiny=tiny)
    assert_one_line_error(proc, *needles, code=2)
    assert "TensorFlow loaded" not in proc.stderr


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("dataset", ["mnist", "fer2013"])
def test_a_fifo_or_device_is_named_not_read(cli, no_tensorflow, tmp_path, kind, dataset):
    path = Path("/dev/zero")
    if kind == "fifo":
        path = tmp_path / "data.fifo"
        os.mkfifo(path)  # reading it would block forever: no writer
    proc = cli(f"dataset={dataset}", f"dataset.path={path}", env=no_tensorflow, tiny=False)
    expected = "FIFO" if kind == "fifo" else "character device"
    assert_one_line_error(proc, str(path), expected, code=2)
    assert "does not exist" not in proc.stderr


@pytest.mark.parametrize(
    "override", [f"psize={BIG}", f"psize=0.{BIG}", f"train.epochs=x{BIG}", f"dataset.path=/{BIG}"]
)
def test_a_100kb_token_is_cut_in_the_message(cli, override):
    proc = cli(override)
    assert_one_line_error(proc, code=2)
    assert len(proc.stderr) < 600, len(proc.stderr)


# --- tracking and model stores ----------------------------------------------------------------


def test_a_tracking_server_that_is_not_there_is_reported_at_once(cli, no_tensorflow):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cli.uri = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    proc = cli(env=no_tensorflow)
    assert_one_line_error(proc, cli.uri, "make ui", code=2)
    assert time.monotonic() - started < 30


def test_a_tracking_server_that_never_answers_is_reported_within_seconds(cli, no_tensorflow):
    with socket.socket() as silent:  # accepts connections (kernel backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        cli.uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        proc = cli(env=no_tensorflow)
    assert_one_line_error(proc, cli.uri, "within 5 s", "make ui", code=2)
    assert time.monotonic() - started < 30


def test_a_sweep_to_a_silent_server_stops_before_any_job(cli):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        cli.uri = f"http://127.0.0.1:{probe.getsockname()[1]}"
    proc = cli("-m", "psize=0.2,0.4")
    assert_one_line_error(proc, cli.uri, code=2)
    assert not list(cli.tmp.glob("sweep*/0"))


@pytest.mark.parametrize("stage", ["all", "prune"])
def test_a_read_only_database_is_one_line_before_any_work(cli, no_tensorflow, stage):
    cli.db.touch()
    with read_only(cli.db):
        proc = cli(f"stage={stage}", env=no_tensorflow)
    assert_one_line_error(proc, str(cli.db), "read-only", code=2)
    assert cli.db.stat().st_size == 0


def test_a_database_in_a_read_only_folder_is_one_line(cli, no_tensorflow, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    cli.db = folder / "mlflow.db"
    cli.uri = f"sqlite:///{cli.db}"
    with read_only(folder):
        proc = cli(env=no_tensorflow)
    assert_one_line_error(proc, str(folder), "read-only", code=2)


@pytest.mark.parametrize("stage", ["all", "train", "prune"])
def test_a_read_only_store_is_one_line_before_any_work(cli, no_tensorflow, tmp_path, stage):
    locked = tmp_path / "locked"
    locked.mkdir()
    cli.store = locked / "store"
    with read_only(locked):
        proc = cli(f"stage={stage}", env=no_tensorflow)
    assert_one_line_error(proc, "store.dir", str(locked), "read-only", code=2)
    assert cli.runs() == []


# --- sweeps: every job checked before the first starts ----------------------------------------


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["psize=0.3,30"], ["psize=30", "(0, 1)"]),
        (["psize=range(0.4,1.3,0.3)"], ["psize=1.0", "(0, 1)"]),
        (["psize=choice(0.3,-1)", "seed=0,1"], ["psize=-1", "(0, 1)"]),
        (["criterion=glob(m*)", "criterion.threshold=null,0.05"], ["criterion.threshold"]),
        (["seed=0,-1"], ["seed=-1"]),
        (["train.learning_rate=0.1,nan"], ["train.learning_rate=nan"]),
        (["train.epoch=1,2"], ["did you mean train.epochs?"]),
        (["+foo=1,2"], ["unknown key foo"]),
        (["psize=0.3,abc"], ["psize=abc"]),
        (["criterion.layer=conv1,conv2"], ["add criterion.scope=layer"]),
    ],
)
def test_every_value_of_a_sweep_is_checked_before_the_first_job(cli, overrides, needles):
    proc = cli("-m", *overrides)
    assert_one_line_error(proc, "sweep job", *needles, code=2)
    assert_nothing_recorded(cli)
    assert not list(cli.tmp.glob("sweep*/0"))


def test_a_named_study_passes_the_sweep_check(cli):
    """The check must not refuse a valid study: every job of cnn_vs_dnn_quick composes."""
    from hydra import compose, initialize_config_dir

    from avlsi.config import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=cnn_vs_dnn_quick"],
                      return_hydra_config=True)  # fmt: skip
    assert cfg.hydra.sweeper.params  # a study: its jobs come from the sweeper's params
    proc = cli("-m", "experiment=cnn_vs_dnn_quick", "psize=2", tiny=False)
    assert_one_line_error(proc, "sweep job 0", "psize=2", code=2)  # the first job, not a crash


# --- data files --------------------------------------------------------------------------------


def idx_header(*shape: int) -> bytes:
    return struct.pack(f">HBB{len(shape)}I", 0, 0x08, len(shape), *shape)


def gzip_member(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9)


def write_bomb(path: Path, header: bytes, zero_mb: int) -> Path:
    """A small .gz that inflates to `header` + `zero_mb` MB of zeros (one member per MB)."""
    member = gzip_member(bytes(1 << 20))
    with open(path, "wb") as f:
        f.write(gzip_member(header))
        for _ in range(zero_mb):
            f.write(member)
    return path


def peak_rss_mb_of(code: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run `code` in a fresh interpreter; its peak RSS growth (MB) after imports."""
    script = (
        "import resource, sys\n"
        "from avlsi.data import mnist\n"
        "from avlsi.errors import UserError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"try:\n    {code}\nexcept UserError as err:\n    print('error:', err)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print('grew', (after - before) / 1024)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    grew = float(proc.stdout.rsplit("grew", 1)[1])
    return proc, grew


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        (b"", "not an MNIST IDX file"),  # all zeros: the magic number is wrong
        (idx_header(60_000, 28, 28), "trailing bytes"),  # right header, then a flood
    ],
)
def test_a_gzip_bomb_is_stopped_by_its_header(tmp_path, header, needle):
    bomb = write_bomb(tmp_path / "train-images-idx3-ubyte.gz", header, zero_mb=512)
    assert bomb.stat().st_size < 2 << 20  # about 1 MB that inflates to 512 MB
    proc, grew = peak_rss_mb_of(f"mnist.read_idx(__import__('pathlib').Path({str(bomb)!r}), 3)")
    assert needle in proc.stdout, proc.stdout + proc.stderr
    assert grew < 150, f"the process grew by {grew:.0f} MB"


@pytest.mark.parametrize(
    ("shape", "needle"),
    [
        ((1, 2**32 - 1, 2**32 - 1), "28x28"),  # sizes whose product overflows 64 bits
        ((2**31, 28, 28), "more than a"),  # promises far more than the gzip can hold
    ],
)
def test_idx_header_sizes_are_refused_from_the_header(tmp_path, shape, needle):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip_member(idx_header(*shape) + bytes(784)))
    proc, grew = peak_rss_mb_of(f"mnist.read_idx(__import__('pathlib').Path({str(path)!r}), 3)")
    assert needle in proc.stdout, proc.stdout + proc.stderr
    assert grew < 50


def test_a_plain_idx_file_whose_header_disagrees_with_its_size_is_not_read(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    with open(path, "wb") as f:  # 10 labels promised, 1 GB there (sparse: no disk used)
        f.write(idx_header(10))
        f.truncate(1 << 30)
    proc, grew = peak_rss_mb_of(f"mnist.read_idx(__import__('pathlib').Path({str(path)!r}), 1)")
    assert "has trailing bytes: its header promises 10 bytes" in proc.stdout, proc.stdout
    assert grew < 50, f"the process grew by {grew:.0f} MB"


@pytest.mark.slow
def test_a_gzip_bomb_in_an_mnist_folder_is_one_line(cli, tmp_path):
    folder = tmp_path / "idx"
    folder.mkdir()
    write_bomb(folder / "train-images-idx3-ubyte.gz", idx_header(60_000, 28, 28), zero_mb=64)
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(idx_header(1))
    proc = cli("dataset=mnist", f"dataset.path={folder}", "model=dnn", tiny=False)
    assert_one_line_error(proc, "train-images-idx3-ubyte.gz", "trailing bytes")
    assert not cli.store.exists() or not any(cli.store.rglob("*.keras"))


def test_an_npz_whose_array_header_lies_is_one_error(tmp_path):
    """A .npy header promising 784 TiB: a UserError, not a MemoryError crash."""
    import io
    import zipfile

    from numpy.lib import format as npy

    from avlsi.data import mnist
    from avlsi.errors import UserError

    def member(shape: tuple[int, ...]) -> bytes:
        buf = io.BytesIO()
        npy.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
        return buf.getvalue() + bytes(100)

    path = tmp_path / "mnist.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x_train.npy", member((2**40, 28, 28)))
        for key in ("y_train", "x_test", "y_test"):
            z.writestr(f"{key}.npy", member((1,)))
    with pytest.raises(UserError, match="not a readable .npz file"):
        mnist.read_npz(path)


def test_synthetic_data_too_big_for_memory_is_refused_before_drawing():
    from omegaconf import OmegaConf

    from avlsi.data import synthetic
    from avlsi.errors import UserError

    cfg = OmegaConf.create(
        {"shape": [4096, 4096, 3], "num_classes": 10, "train_size": 10**6, "test_size": 1}
    )
    with pytest.raises(UserError, match="dataset.shape=.* needs about .* of memory"):
        synthetic.load(cfg, seed=0)


def test_a_fifo_inside_an_idx_folder_is_named(tmp_path):
    from avlsi.data import mnist
    from avlsi.errors import UserError

    os.mkfifo(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(UserError, match="is a FIFO"):
        mnist.resolve_source(type("Cfg", (), {"path": str(tmp_path)})())


@pytest.mark.slow
@pytest.mark.parametrize("empty", ["train", "test"])
def test_an_empty_training_or_test_set_is_refused_before_training(cli, tmp_path, empty):
    rng = np.random.default_rng(0)
    sizes = {"train": 0 if empty == "train" else 20, "test": 0 if empty == "test" else 10}
    arrays = {}
    for split, n in sizes.items():
        arrays[f"x_{split}"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"y_{split}"] = rng.integers(0, 10, n).astype(np.uint8)
    np.savez(tmp_path / "mnist.npz", **arrays)
    proc = cli("dataset=mnist", f"dataset.path={tmp_path / 'mnist.npz'}", "model=dnn",
               "model.dense_units=[8]", tiny=False)  # fmt: skip
    label = "training" if empty == "train" else "test"
    assert_one_line_error(proc, f"empty {label} set")
    for run in cli.runs():
        assert run.info.status == "FAILED" and "baseline.test_accuracy" not in run.data.metrics
    assert not cli.store.exists() or not any(cli.store.rglob("*.keras"))


# --- inside the job: memory, non-finite loss, psize, prerequisites -----------------------------


@pytest.mark.slow
def test_a_model_that_cannot_fit_in_memory_is_refused_before_it_is_built(cli):
    proc = cli("model.conv_filters=[100000000]")
    assert_one_line_error(proc, "model=cnn", "memory", "model.conv_filters")
    assert "ResourceExhausted" not in proc.stderr
    (run,) = cli.runs()
    assert run.info.status == "FAILED" and "memory" in run.data.tags["error"]
    assert not cli.store.exists() or not any(cli.store.rglob("*.keras"))


def test_the_memory_estimate_matches_the_built_model():
    from conftest import stack_config

    from avlsi.memory import model_estimate, stack_estimate
    from avlsi.models.stack import build

    configs = [
        stack_config("cnn", [32, 32, 64, 64], [128]),
        stack_config("dnn", [], [64, 32]),
        stack_config("bn", [8, 8, 16], [16]),
    ]
    configs[2].batch_norm, configs[2].dropout = True, 0.25
    for cfg in configs:
        for shape in [(28, 28, 1), (13, 11, 3)]:
            model = build(shape, 7, cfg)
            assert stack_estimate(cfg, shape, 7) == model_estimate(model)


def test_the_memory_check_compares_with_what_is_available():
    from avlsi.errors import UserError
    from avlsi.memory import Estimate, check_fits

    estimate = Estimate(params=1_000_000, activations=10_000)  # 16 MB + 80 KB per example
    check_fits(estimate, 100, "model=x", available=100 << 20)
    with pytest.raises(UserError, match="model=x needs at least .* more than the"):
        check_fits(estimate, 100, "model=x", available=10 << 20)


@pytest.mark.slow
def test_a_non_finite_training_loss_fails_the_run(cli):
    proc = cli("train.learning_rate=1e30", "train.epochs=2")
    assert_one_line_error(proc, "train:", "loss", "epoch 1")
    (run,) = cli.runs()
    assert run.info.status == "FAILED" and "loss" in run.data.tags["error"]
    assert "baseline.test_accuracy" not in run.data.metrics
    assert not cli.store.exists() or not any(cli.store.rglob("*.keras"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["psize=0.01"], ["psize=0.01 removes no unit", "8 units"]),
        # scope=global and magnitude give their own messages: tests/test_targets.py
    ],
)
def test_a_psize_that_removes_nothing_is_refused_before_training(cli, overrides, needles):
    proc = cli(*overrides)
    assert_one_line_error(proc, *needles)
    (run,) = cli.runs()
    assert run.info.status == "FAILED" and "baseline.test_accuracy" not in run.data.metrics


@pytest.mark.slow
def test_the_prerequisite_hint_names_every_override_that_matters(cli):
    proc = cli("stage=finetune", "criterion=random", "psize=0.5", "train.learning_rate=0.01")
    assert_one_line_error(proc, "run first: python run.py stage=prune")
    line = proc.stderr.strip()
    needles = ["criterion=random", "psize=0.5", "train.learning_rate=0.01", "store.dir="]
    for needle in [*needles, "'model.conv_filters=[4,4,8,8]'", "dataset=synthetic"]:
        assert needle in line, needle
    assert "stage=finetune" not in line and "hydra.run.dir" not in line


@pytest.mark.slow
def test_a_run_that_crashes_carries_an_error_tag(cli):
    """Not only UserErrors: a scorer that returns no scores ends the run FAILED, saying why."""
    proc = cli("criterion._target_=builtins.print")
    assert proc.returncode == 1 and "avlsi: failed: TypeError" in proc.stderr
    (run,) = cli.runs()
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("TypeError: ")
