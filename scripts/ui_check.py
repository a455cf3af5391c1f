"""Check what the MLflow UI shows of an experiment, and take screenshots of it.

    python scripts/ui_check.py [--db mlflow.db] [--experiment avlsi] [--out outputs/ui-check]

Starts `mlflow server` on a free local port against the sqlite store, opens the experiment's
runs table in headless Chromium (driven over the DevTools protocol through a pipe, standard
library only), and writes ui_runs_table.png, ui_run_page.png, ui_models.png and ui_chart.png.
Exits 1 with one `avlsi: error:` line when the runs table does not list the experiment's runs
(for instance when the UI shows the GenAI overview instead). The server and the browser are
always stopped, on errors and Ctrl-C too.

What makes the pictures useful is MLflow 3.17's own view state, which this script presets in
the browser's localStorage (nothing is written to the store):
- the runs table shows the metric / param columns listed in `selectedColumns`;
- the chart view (`compareRunsMode=CHART`) shows the charts in `compareRunCharts`, here a
  scatter of fine-tuned test accuracy against the fraction of parameters kept.
The same JSON, stored as the experiment tag `mlflow.sharedViewState.<key>`, is what the UI's
own "share view" reads from `...runs?workflowType=machine_learning&viewStateShareKey=<key>`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
WIDTH, HEIGHT = 1600, 1000
GENAI_OVERVIEW_TEXT = "Token usage"


class CheckFailed(Exception):
    """The UI does not show what it should (exit 1, one line)."""


@dataclass
class Experiment:
    id: str
    name: str
    run_names: list[str]  # in the runs table's default order (newest top-level run first)
    run_id: str  # the run whose page is photographed
    run_name: str
    metric_keys: set[str] = field(default_factory=set)
    param_keys: set[str] = field(default_factory=set)
    parent_ids: list[str] = field(default_factory=list)
    model_names: list[str] = field(default_factory=list)  # logged models (the Models tab)


def fail(message: str, code: int = 1) -> None:
    print(f"avlsi: error: {message}", file=sys.stderr)
    sys.exit(code)


def read_experiment(db: Path, name: str, max_names: int = 20) -> Experiment:
    """The experiment's id, the run names its runs table must list, and its metric keys."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise CheckFailed(f"no experiment {name!r} in {db} (experiments there: {names})")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    if not runs:
        raise CheckFailed(
            f"experiment {name!r} in {db} has no runs: nothing for the runs table to show"
        )
    parent = "mlflow.parentRunId"
    top = [r for r in runs if parent not in r.data.tags]
    children = [r for r in runs if parent in r.data.tags]
    # Children sit under their (expanded) parent; a virtualised table renders only the first
    # rows, so a big experiment is judged by its newest top-level runs.
    shown = runs if len(runs) <= max_names else top[: max_names // 2]
    subject = max(runs, key=lambda r: (len(r.data.metrics), r.info.start_time or 0))
    return Experiment(
        id=exp.experiment_id,
        name=name,
        run_names=[r.info.run_name for r in shown],
        run_id=subject.info.run_id,
        run_name=subject.info.run_name,
        metric_keys={k for r in runs for k in r.data.metrics},
        param_keys={k for r in runs for k in r.data.params},
        parent_ids=sorted({r.data.tags[parent] for r in children}),
        model_names=sorted({m.name for m in client.search_logged_models([exp.experiment_id])}),
    )


def view_state(exp: Experiment) -> dict:
    """MLflow 3.17's runs-page state for this experiment (see avlsi.record.runs_view_state).

    Valid as localStorage `MLflowLocalStorage-1.1-ExperimentPage-["<id>"]-ReactComponentState`.
    """
    from avlsi.record import runs_view_state

    return runs_view_state(exp.metric_keys, exp.param_keys, exp.parent_ids)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """`mlflow server` on a free local port, in its own process group, stopped on exit."""

    def __init__(self, db: Path, log: Path) -> None:
        self.db, self.log_path = db, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> MlflowServer:
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.db}",
            "--artifacts-destination", str(self.db.parent / "mlartifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:]
                raise CheckFailed(f"mlflow server exited: {' '.join(tail) or 'no output'}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise CheckFailed(f"mlflow server did not answer on {self.url} within {timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        stop_group(self.proc)


def stop_group(proc: subprocess.Popen | None) -> None:
    """Stop a process started with start_new_session=True, and everything it started."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, binary: str, profile: Path, init_script: str) -> None:
        # Chromium reads commands from fd 3 and answers on fd 4: a tiny Python trampoline puts
        # the pipe ends there (fds >= 10 first, so that dup2 cannot clobber one with the other).
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        child_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)
        trampoline = (
            "import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); "
            "os.dup2(r, 3); os.dup2(w, 4); os.close(r); os.close(w); "
            "os.execv(sys.argv[3], sys.argv[3:])"
        )
        cmd = [
            sys.executable, "-c", trampoline, str(child_r), str(child_w),
            binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}", "--remote-debugging-pipe", "about:blank",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            pass_fds=(child_r, child_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(child_r)
        os.close(child_w)
        self._buffer = b""
        self._next_id = 0
        try:
            self._open_page(init_script)
        except BaseException:
            self.__exit__()
            raise

    def _open_page(self, init_script: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        self.session = attached["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Page.addScriptToEvaluateOnNewDocument", {"source": init_script}, True)
        metrics = {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", metrics, True)

    def send(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read(timeout=60)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CheckFailed(f"chromium: {method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def _read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise CheckFailed("chromium did not answer within 60 s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise CheckFailed("chromium exited unexpectedly")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def open(self, url: str) -> None:
        self.send("Page.navigate", {"url": "about:blank"}, True)  # a fresh document each time
        self.send("Page.navigate", {"url": url}, True)

    def evaluate(self, expression: str):
        params = {"expression": expression, "returnByValue": True}
        return self.send("Runtime.evaluate", params, True).get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float, settle: float = 1.5) -> bool:
        """Poll a JS expression until it is true; then let the page settle. False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(f"Boolean({expression})"):
                time.sleep(settle)
                return True
            time.sleep(0.5)
        return False

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"}, True)["data"]
        path.write_bytes(base64.b64decode(data))

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(OSError):
            os.write(self._to_browser, b'{"id": 0, "method": "Browser.close"}\0')
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        stop_group(self.proc)


def js_text_has(*needles: str) -> str:
    text = "(document.body ? document.body.innerText : '')"
    return " && ".join(f"{text}.includes({json.dumps(n)})" for n in needles) or "true"


def init_script(exp: Experiment) -> str:
    """Runs before the UI's own scripts on every page: our view, no auto-opened assistant."""
    items = {
        f'MLflowLocalStorage-1.1-ExperimentPage-["{exp.id}"]-ReactComponentState': view_state(exp),
        "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,
        "mlflow.assistant.panelOpen_v1": False,
        "mlflow.workflowType_v1": "machine_learning",
    }
    return "".join(
        f"localStorage.setItem({json.dumps(k)}, {json.dumps(json.dumps(v))});"
        for k, v in items.items()
    )


def runs_table_problem(text: str, run_names: list[str]) -> str | None:
    """What is wrong with the runs table page's text, or None when it lists every run."""
    missing = [n for n in run_names if n not in text]
    if not missing:
        return None
    what = f"does not list run(s) {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
    if GENAI_OVERVIEW_TEXT in text:
        what += f" and shows the GenAI overview ({GENAI_OVERVIEW_TEXT!r}) instead"
    return what


def find_chromium(explicit: str | None) -> str:
    for candidate in [explicit] if explicit else ["chromium", "/usr/bin/chromium", "google-chrome"]:
        found = shutil.which(candidate)
        if found:
            return found
    raise CheckFailed(
        f"{explicit or 'chromium'} not found: install Debian's chromium "
        "(apt-get install chromium) or pass --chromium PATH"
    )


def check_runs_table(browser: Chromium, url: str, exp: Experiment, args) -> None:
    """Fail unless the runs table lists the runs (and shows the first preset metric column)."""
    browser.open(url)
    listed = js_text_has(*exp.run_names)
    browser.wait_for(f"({listed}) || ({js_text_has(GENAI_OVERVIEW_TEXT)})", args.timeout)
    text = browser.evaluate("document.body.innerText") or ""
    if args.dom:
        args.dom.write_text(browser.evaluate("document.documentElement.outerHTML") or "")
    problem = runs_table_problem(text, exp.run_names)
    columns = [c for c in view_state(exp)["selectedColumns"] if c.startswith("metrics.")]
    if not problem and columns:
        selector = json.dumps(f'[col-id="{columns[0]}"]')
        if not browser.evaluate(f"Boolean(document.querySelector({selector}))"):
            problem = f"does not show the column {columns[0]} (has MLflow's view state changed?)"
    if problem:
        browser.screenshot(args.out / "ui_runs_table.png")
        raise CheckFailed(f"the runs table at {url} {problem}")


def take_screenshots(browser: Chromium, base: str, exp: Experiment, args) -> list[Path]:
    runs_url = f"{base}/#/experiments/{exp.id}/runs?workflowType=machine_learning"
    ml = "?workflowType=machine_learning"
    empty_models = "Track and compare versions of your models"
    has_scatter = "compareRunCharts" in view_state(exp)
    pages = [  # (file, URL, JS condition that says the page has rendered)
        ("ui_runs_table.png", runs_url, "true"),  # already waited for by check_runs_table
        (
            "ui_run_page.png",
            f"{base}/#/experiments/{exp.id}/runs/{exp.run_id}{ml}",
            js_text_has(exp.run_name, "Parameters"),
        ),
        (
            "ui_models.png",
            f"{base}/#/experiments/{exp.id}/models{ml}",
            " || ".join(f"({js_text_has(n)})" for n in [*exp.model_names[:3], empty_models]),
        ),
        (
            "ui_chart.png",
            f"{runs_url}&compareRunsMode=CHART",
            "document.querySelector('.js-plotly-plot %s')" % (".point" if has_scatter else ""),
        ),
    ]
    shots = []
    check_runs_table(browser, runs_url, exp, args)
    for name, url, rendered in pages:
        if shots:  # the runs table is still open from the check
            browser.open(url)
        if not browser.wait_for(rendered, args.timeout):
            print(f"ui-check: warning: {url} did not finish rendering in {args.timeout:.0f} s")
        shots.append(args.out / name)
        browser.screenshot(shots[-1])
    return shots


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=Path("mlflow.db"), help="sqlite store")
    parser.add_argument("--experiment", default="avlsi", help="experiment name")
    parser.add_argument("--out", type=Path, default=Path("outputs/ui-check"), help="PNG folder")
    parser.add_argument("--dom", type=Path, help="also write the runs table's DOM here")
    parser.add_argument("--chromium", help="browser binary (default: chromium on PATH)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per page")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the `finally` blocks
    db = args.db.expanduser().resolve()
    try:
        if not db.is_file():
            raise CheckFailed(f"no MLflow store at {db}: pass --db PATH (make ui-check DB=PATH)")
        exp = read_experiment(db, args.experiment)
        chromium = find_chromium(args.chromium)
        args.out.mkdir(parents=True, exist_ok=True)
        with (
            tempfile.TemporaryDirectory(prefix="avlsi-ui-check-") as tmp,
            MlflowServer(db, Path(tmp) / "server.log") as server,
        ):
            server.wait_ready(args.timeout)
            with Chromium(chromium, Path(tmp) / "profile", init_script(exp)) as browser:
                shots = take_screenshots(browser, server.url, exp, args)
    except CheckFailed as error:
        fail(f"ui-check: {error}")
    except KeyboardInterrupt:
        fail("ui-check: interrupted", code=130)
    for shot in shots:
        print(shot)
    print(f"ui-check: OK: the runs table lists the runs of experiment {exp.name!r} (id {exp.id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
