"""A process that imports TensorFlow, MLflow and AVLSI once, then forks one child per
`python run.py ...` of the tests (the "zygote" of Android and Chromium).

Each child is a real process: it sets the test's folder, environment, argv and sys.path as
`python run.py` would have them, writes stdout / stderr to files, runs run.py as `__main__`
and leaves as the interpreter would (threads joined, atexit handlers run, the exit code).
What it skips is the 4-5 s of imports (2 cores, idle) that a fresh interpreter pays before
the first line of a job: with about 150 command lines that is a fifth of the suite.

A test about what happens *before* TensorFlow loads, or with another environment at import
time, runs a fresh interpreter instead (tests/conftest.py: `Cli(..., fresh=True)` or `env=`).

Protocol (stdin / stdout, one JSON object a line): request {"args", "cwd", "env", "stdout",
"stderr"}; answers {"pid"} once forked, then {"code"} (a subprocess-style return code).
"""

from __future__ import annotations

import atexit
import io
import json
import os
import runpy
import signal
import sys
import threading
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_PY = ROOT / "run.py"


def warm_up() -> None:
    """Import what every job imports, without running a TensorFlow op (no thread pools yet:
    a fork copies only the calling thread)."""
    sys.path[0] = str(ROOT)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from avlsi.cli import quiet_tensorflow_import

    quiet_tensorflow_import()
    import mlflow.tensorflow  # noqa: F401

    import avlsi.pipeline  # noqa: F401
    import avlsi.record  # noqa: F401


def run_child(request: dict) -> None:
    """In the forked child: become `python run.py ARGS` in the test's folder; never returns."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        raw_err = open(2, "wb", closefd=False)  # noqa: SIM115
        sys.stderr = io.TextIOWrapper(raw_err, errors="backslashreplace", line_buffering=True)
        sys.argv = [str(RUN_PY), *request["args"]]
        sys.path[0] = str(ROOT)
        try:
            runpy.run_path(str(RUN_PY), run_name="__main__")
            code = 0
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                code = exit_.code or 0
            else:
                print(exit_.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            traceback.print_exc()
            code = -signal.SIGINT
        except BaseException:
            traceback.print_exc()
            code = 1
        threading._shutdown()  # as the interpreter does at exit: wait for non-daemon threads
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code & 0xFF)


def return_code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def serve() -> None:
    warm_up()
    answer = sys.stdout
    print(json.dumps({"ready": True}), file=answer, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_child(request)
        print(json.dumps({"pid": pid}), file=answer, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"code": return_code(status)}), file=answer, flush=True)


if __name__ == "__main__":
    serve()
