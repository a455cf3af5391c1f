"""The command line: Hydra composes the config, one job runs, mistakes end in one line."""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

import avlsi  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)
from avlsi.config import PROJECT_ROOT, check_config, register, schema_keys, suggest
from avlsi.errors import Terminated, UserError, clip
from avlsi.preflight import check_environment
from avlsi.stopping import install_handlers

log = logging.getLogger("avlsi")
GROUPS = ("model", "dataset", "criterion", "stage", "schedule")
HINT = " (python run.py --help lists the options; --cfg job shows every key)"

register()


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="config")
def hydra_entry(cfg: DictConfig) -> dict[str, float]:
    """Run the composed job (Hydra calls this once per job of a sweep)."""
    install_handlers()  # again: a launcher's worker process did not run main()
    hydra_cfg = HydraConfig.get()
    if str(cfg.task) == "report":  # task=report: no job, no TensorFlow
        return run_report(cfg)
    if str(cfg.task) == "inspect":  # task=inspect: the pruning groups, nothing trained
        return run_inspect(cfg)
    choices = {group: str(hydra_cfg.runtime.choices.get(group)) for group in GROUPS}
    try:
        check_config(cfg)  # before TensorFlow loads: a mistake is reported at once
        check_environment(cfg)  # the stores can be written, a tracking server answers
        quiet_tensorflow_import()
        from avlsi.pipeline import run_job  # TensorFlow loads only when a job really runs
        from avlsi.record import sweep_parent

        sweeping = hydra_cfg.mode == RunMode.MULTIRUN
        output_dir = Path(hydra_cfg.runtime.output_dir)
        if str(cfg.task) == "sensitivity":  # each group pruned alone (avlsi/sensitivity.py)
            from avlsi.sensitivity import run_sensitivity

            print(run_sensitivity(cfg, output_dir, choices))
            return {}
        return run_job(
            cfg,
            output_dir,
            choices,
            skip_finished=sweeping and not cfg.rerun,
            parent_run_id=sweep_parent(Path(hydra_cfg.sweep.dir)) if sweeping else None,
            overrides=list(hydra_cfg.overrides.task),
        )
    except UserError as err:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            print(clip(f"avlsi: error: {err}"), file=sys.stderr)
            sys.exit(2)
        overrides = " ".join(hydra_cfg.overrides.task)
        print(clip(f"avlsi: job {hydra_cfg.job.num} ({overrides}) failed: {err}"), file=sys.stderr)
        raise  # the sweep goes on; Hydra re-raises the first failure when it ends


def run_report(cfg: DictConfig) -> dict[str, float]:
    """`python run.py task=report`: the report of cfg.mlflow.experiment (see avlsi/report.py)."""
    from avlsi.report import report_from_config

    try:
        print(report_from_config(cfg).summary())
    except UserError as err:  # Hydra would add its own "Error executing job" line
        print(f"avlsi: error: {err}", file=sys.stderr)
        sys.exit(2)
    return {}


def run_inspect(cfg: DictConfig) -> dict[str, float]:
    """`python run.py task=inspect`: the model's pruning groups (see avlsi/inspect.py)."""
    from avlsi.inspect import inspect_from_config

    try:
        print(inspect_from_config(cfg))
    except UserError as err:
        print(clip(f"avlsi: error: {err}"), file=sys.stderr)
        sys.exit(2)
    return {}


def quiet_tensorflow_import() -> None:
    """Import TensorFlow with native stderr closed: its C++ start-up chatter is not ours.

    Import errors still surface as Python exceptions once stderr is back.
    """
    if "tensorflow" in sys.modules or os.environ.get("AVLSI_TF_LOGS") == "1":
        return
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()  # device probing logs here, not mid-job
        logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing advice, not ours
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


def describe(err: BaseException) -> str:
    """One line for a mistake made on the command line or in a config file."""
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return f"unknown {group} '{name}'; choose one of: {', '.join(sorted(err.options))}"
    unknown = unknown_override(err)
    if unknown is not None:
        return unknown
    if from_override_parser(err):
        return f"cannot read an override: {str(err).strip() or type(err).__name__}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException):
        lines.append(str(cause).splitlines()[0])
    for line in str(err).splitlines():  # OmegaConf puts the offending key on its own line
        if line.strip().startswith("full_key:"):
            lines.append(line.strip())
    first = lines[0] if lines else type(err).__name__
    extra = [ln for ln in lines[1:] if ln.startswith("full_key") or ln in lines[-1:]]
    return "; ".join(dict.fromkeys([first, *extra]))


def unknown_override(err: BaseException) -> str | None:
    """'unknown key train.epoch; did you mean train.epochs?' for an override of a key the
    schema does not have, else None."""
    text = f"{err}\n{err.__cause__ or ''}"
    found = re.search(r"Could not override '([^']+)'", text)
    if found is None or not re.search(r"Key '[^']+' (is )?not in", text):
        return None
    key = found.group(1)
    if key in schema_keys():
        return None  # a known key with a wrong value: Hydra's own message says which
    return f"unknown key {clip(key)}{suggest(key) or ''}"


def from_override_parser(err: BaseException) -> bool:
    """True when the error was raised while Hydra parsed the command line's overrides
    (e.g. a number of 100,000 digits)."""
    frames = traceback.extract_tb(err.__traceback__)
    return any("override_parser" in frame.filename for frame in frames)


def is_user_mistake(err: BaseException) -> bool:
    from hydra.errors import HydraException

    return isinstance(err, UserError | HydraException | OmegaConfBaseException) or (
        from_override_parser(err)
    )


def importable_from_here() -> None:
    """Modules in the folder the user runs in can be named (`model._target_=my_models.fn`),
    as with `python -m`; also in a sweep's worker processes (PYTHONPATH is inherited)."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths, here])


def main() -> None:
    """Entry point: Hydra's CLI, with every user mistake reported as one line."""
    show_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's printer
    install_handlers()
    importable_from_here()
    try:
        hydra_entry()
    except Terminated as err:
        print(f"avlsi: terminated ({err.signal_name})", file=sys.stderr)
        sys.exit(128 + err.signum)
    except KeyboardInterrupt:
        print("avlsi: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if show_traceback:
            raise
        if is_user_mistake(err):
            hint = "" if isinstance(err, UserError) else HINT
            print(clip(f"avlsi: error: {describe(err)}{hint}"), file=sys.stderr)
            sys.exit(2)
        print(
            clip(
                f"avlsi: failed: {type(err).__name__}: {describe(err)} "
                "(set HYDRA_FULL_ERROR=1 to see the traceback)"
            ),
            file=sys.stderr,
        )
        sys.exit(1)


def module_main(argv: list[str] | None, module: str, example: str, usage, work) -> None:
    """`python -m avlsi.<module> key=value ...`: `usage()` for --help, else print
    `work(composed config)`; every mistake is one line (exit 2)."""
    from avlsi.report import check_overrides, compose_config

    argv = sys.argv[1:] if argv is None else argv
    try:
        if any(arg in ("-h", "--help") for arg in argv):
            print(usage())
            return
        if flags := [arg for arg in argv if arg.startswith("-")]:
            raise UserError(
                f"unknown option {flags[0]}; options are Hydra overrides such as {example} "
                f"(python -m avlsi.{module} --help)"
            )
        check_overrides(argv)
        result = work(compose_config(argv))
    except Exception as err:
        if not is_user_mistake(err):
            raise
        print(f"avlsi: error: {describe(err)}", file=sys.stderr)
        sys.exit(2)
    print(result)
