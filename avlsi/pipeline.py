"""One job: config -> data + model -> train -> score -> select -> surgery -> fine-tune -> record."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path

import mlflow
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

import avlsi  # noqa: F401
from avlsi import kerasjob, masking, memory, record, rewind, runtime, schedules, train
from avlsi.config import check_config, effective_psize, stage_command, steps_of
from avlsi.criteria import ScoringContext, get_scorer
from avlsi.data import Dataset, hold_out_validation
from avlsi.errors import UserError
from avlsi.kerasapi import keras_version
from avlsi.keys import (
    baseline_key,
    code_fingerprint,
    data_fingerprint,
    forget_folders,
    git_commit,
    group_key,
    job_key,
    pruned_key,
)
from avlsi.latency import pin_threads
from avlsi.metrics import relative_metrics, size_metrics
from avlsi.models import build_model
from avlsi.models.file import import_user_modules
from avlsi.schedule_checks import schedule_name
from avlsi.store import ModelStore
from avlsi.targets import (
    Targets,
    check_something_goes,
    describe,
    prune_targets,
    select_group_units,
)

log = logging.getLogger(__name__)

BASELINES, PRUNED = "baselines", "pruned"
EQUIVALENCE_TOLERANCE = 1e-4  # relative; float32 sums in another order differ by ~1e-7


def _command(cfg: DictConfig, stage: str) -> str:
    return stage_command(stage) or (
        f"python run.py stage={stage} model={cfg.model.name} dataset={cfg.dataset.name} "
        f"seed={cfg.seed} (with the same train.* / dataset.* / criterion.* / psize overrides)"
    )


def check_prerequisites(cfg: DictConfig, store: ModelStore) -> None:
    """A stage that needs an earlier stage's model says what to run first."""
    steps = steps_of(cfg)
    if steps[0] == "prune" and store.get(BASELINES, baseline_key(cfg)) is None:
        raise UserError(
            f"no trained baseline for these settings; run first: {_command(cfg, 'train')}"
        )
    if steps[0] == "finetune" and store.get(PRUNED, pruned_key(cfg)) is None:
        raise UserError(f"no pruned model for these settings; run first: {_command(cfg, 'prune')}")


def load_data(cfg: DictConfig) -> Dataset:
    data = get_method(cfg.dataset._target_)(cfg.dataset, seed=cfg.seed)
    return hold_out_validation(data, cfg.dataset.val_fraction)


def _load(path: Path):
    return kerasjob.load_model(path)  # with the Keras that saved it


def _copy(model):
    """A new model with the same architecture and weights (in the model's Keras)."""
    return kerasjob.copy_model(model)


def heading(text: str) -> None:
    """A phase heading, so that the progress bars of one job can be told apart."""
    log.info("== %s ==", text)


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' * (n != 1)}"


class Job:
    """The state of one job as it moves through its steps."""

    def __init__(self, cfg: DictConfig, output_dir: Path) -> None:
        self.cfg, self.output_dir = cfg, output_dir
        import_user_modules(cfg.model.get("imports"))  # stored models use their layers too
        self.store = ModelStore(cfg.store.dir)
        self.steps = steps_of(cfg)
        self.metrics: dict[str, float] = {}
        self.measured: dict[str, dict[str, float]] = {}  # prefix -> what measure() found
        self.data: Dataset | None = None

    def log(self, metrics: dict[str, float]) -> None:
        self.metrics.update(metrics)
        record.log_metrics(metrics)

    def measure(self, model, prefix: str) -> None:
        """Test and validation accuracy, size, and (after pruning) what was kept."""
        metrics = {f"{prefix}.test_accuracy": train.evaluate(model, self.data)}
        if self.data.y_val is not None and len(self.data.y_val):
            metrics[f"{prefix}.val_accuracy"] = train.evaluate(model, self.data, split="val")
        metrics.update(size_metrics(model, prefix))
        self.record_measured(metrics, prefix)

    def record_measured(self, metrics: dict[str, float], prefix: str) -> None:
        self.measured[prefix] = metrics
        self.log(metrics)
        if prefix != "baseline":
            self.log(relative_metrics(self.metrics, prefix))

    def save(self, model, prefix: str, log_files: bool = True) -> None:
        """Latency and the model's files (latency.*, export.*; see avlsi/runtime.py); a
        reused baseline's files stay in the job's folder (the run that trained it logged them)."""
        metrics, files = runtime.model_files(
            model, prefix, self.cfg, self.data, self.output_dir, self.metrics
        )
        for path in files if log_files else ():
            record.log_model_file(path)
        self.log(metrics)

    def carry_over(self, measured: str, prefix: str) -> None:
        """Log a model that nothing changed since it was measured as `measured` (0 epochs
        of fine-tuning) under `prefix` with those numbers, instead of measuring it again."""
        found = self.measured[measured].items()
        self.record_measured({prefix + k.removeprefix(measured): v for k, v in found}, prefix)

    def log_stored(self, meta: dict, *prefixes: str) -> None:
        """Log an earlier stage's metrics from its store entry (stage-by-stage runs)."""
        found = meta.get("metrics", {})
        self.log({k: v for k, v in found.items() if k.split(".")[0] in prefixes})

    def baseline(self):
        """Train the baseline, or load the stored one with the same key."""
        cfg, key = self.cfg, baseline_key(self.cfg)
        mlflow.set_tag("baseline.key", key)
        if "train" not in self.steps:
            path, meta = self.store.get(BASELINES, key)
            mlflow.set_tag("baseline.source", "reused")
            self.log_stored(meta, "baseline")
            model = _load(path)
            self.save(model, "baseline", log_files=False)  # measured again, beside the pruned
            return model
        with self.store.lock(BASELINES, key):
            found = self.store.get(BASELINES, key) if cfg.store.reuse else None
            epoch = rewind.wanted_epoch(cfg)
            if (
                found
                and epoch is not None
                and not rewind.has_point(self.store, key, found[1], epoch)
            ):
                log.info(
                    "the stored baseline %s has no weights of epoch %d to rewind to; "
                    "training it again to keep them", key, epoch,
                )  # fmt: skip
                found = None
            if found is not None:
                path, meta = found
                log.info("reusing the stored baseline %s", key)
                mlflow.set_tag("baseline.source", "reused")
                model = _load(path)
                self.log_stored(meta, "baseline")
                self.save(model, "baseline", log_files=False)  # measured again, beside the pruned
                return model
            memory.check_model_fits(cfg, self.data)  # before building: one line, not an OOM
            model = build_model(cfg.model, self.data.input_shape, self.data.num_classes)
            self.check_prunable(model)  # a bad layer name fails before any training
            mlflow.set_tag("baseline.source", "trained")
            if cfg.train.epochs > 0:
                heading(f"training the baseline {cfg.model.name} ({_epochs(cfg.train.epochs)})")
            else:
                heading(f"measuring the baseline {cfg.model.name} (train.epochs=0: not trained)")
            keep = rewind.KeepWeights(model, [] if epoch is None else [epoch])
            self.fit_and_record(model, "train", "baseline", callbacks=[keep] if keep.epochs else [])
            self.store.put(BASELINES, key, model, {"metrics": self.metrics, **keep.meta()})
            rewind.store_points(self.store, key, model, keep)
            return model

    def check_prunable(self, model) -> Targets | None:
        """What the criterion will prune; a layer or model it cannot prune fails here."""
        if "prune" not in self.steps or not self.cfg.criterion.prunes:
            return None
        kerasjob.check_engine(self.cfg, keras_version(model))  # kerassurgeon / tfmot on Keras 3
        targets = prune_targets(model, self.cfg.criterion)
        check_something_goes(targets, self.cfg.criterion, self.cfg.psize)
        return targets

    def prune(self, model):
        """Score, select and remove units (or zero weights), as the schedule says (all
        rounds of `iterative`; `gradual` only its initial sparsity); store the result."""
        cfg = self.cfg
        targets = self.check_prunable(model)
        if schedule_name(cfg) == "iterative":
            pruned, masked = schedules.prune_iteratively(self, model, targets)
        else:
            pruned, masked = self.prune_once(model, targets, schedules.first_psize(cfg))
        self.measure(pruned, "pruned")
        self.save(pruned, "pruned")
        meta = {"masked_layers": masked, "metrics": self.metrics}
        self.store.put(PRUNED, pruned_key(cfg), pruned, meta)
        return pruned, masked

    def prune_once(self, model, targets, psize: float | None):
        """(pruned copy, masked layer names): psize of the units (or weights) removed at once;
        psize None: nothing removed."""
        cfg = self.cfg
        criterion = cfg.criterion
        masked: list[str] = []
        if psize is None:
            heading(f"no pruning before fine-tuning (schedule={schedule_name(cfg)})")
            pruned = _copy(model)
        elif not criterion.prunes:
            heading("no pruning (criterion=none): the baseline goes on to fine-tuning")
            pruned = _copy(model)
        elif criterion.structured:
            heading(f"scoring units with {criterion.name}: {describe(targets)}")
            scores = get_scorer(criterion)(model, targets.layers, self.scoring_context())
            units = select_group_units(scores, targets, criterion, psize)
            mlflow.log_dict(units, "pruned_units.json")
            removed = sum(len(v) for v in units.values())
            what = f"removing {removed} units from {len(units)} layers"
            pruned = self.surgery(model, units, what)
        else:
            heading(f"zeroing weights by magnitude ({len(targets.layers)} layers)")
            pruned = _copy(model)
            masks = masking.magnitude_masks(
                [pruned.get_layer(lyr.name) for lyr in targets.layers],
                criterion.scope,
                psize,
                criterion.threshold,
                criterion.normalize,
                criterion.min_units,
            )
            masking.apply_masks(pruned, masks)
            masked = list(masks)
        return pruned, masked

    def surgery(self, model, units: dict[str, list[int]], what: str):
        """Remove the units with `surgery.engine` (the engine used is logged), then prove it:
        the pruned model must compute what the original computes with the removed channels'
        outgoing weights zeroed (else SurgeryError)."""
        from avlsi.graph import equivalence_error
        from avlsi.surgery import SurgeryError, delete_units, resolve_engine

        engine = kerasjob.engine_setting(self.cfg)
        used = resolve_engine(model, engine)
        mlflow.log_param("surgery.engine_used", used)
        heading(f"surgery with the {used} engine: {what}")
        pruned = delete_units(model, units, engine=engine)
        error = equivalence_error(model, pruned, units, samples=2, seed=self.cfg.seed)
        self.log({"pruned.equivalence_error": error})
        if not error <= EQUIVALENCE_TOLERANCE:
            raise SurgeryError(
                f"the pruned model does not compute what the original does without the "
                f"removed units (relative difference {error:.2g}); please report this model"
            )
        return pruned

    def scoring_context(self) -> ScoringContext:
        """`criterion.samples` training images (decoded from the stream for streamed data),
        the same for the same seed."""
        x, y = self.data.sample(self.cfg.criterion.samples, self.cfg.seed)
        return ScoringContext(x=x, y=y, seed=self.cfg.seed)

    def load_pruned(self):
        path, meta = self.store.get(PRUNED, pruned_key(self.cfg))
        self.log_stored(meta, "baseline", "pruned")
        model = _load(path)
        masked = meta.get("masked_layers", [])
        return model, masked

    def finetune(self, model, masked: list[str]) -> None:
        cfg = self.cfg
        masks = masking.masks_from_zeros(model, masked) if masked else {}
        unchanged = None
        if str(cfg.finetune.init) == "scratch":
            epochs = cfg.train.epochs + cfg.finetune.epochs
            heading(f"training the pruned architecture from scratch ({_epochs(epochs)})")
            model = kerasjob.copy_model(model, weights=False)  # fresh initial weights
            if masks:
                masking.apply_masks(model, masks)
            settings = OmegaConf.merge(cfg.train, {"epochs": epochs})
        else:
            heading(f"fine-tuning ({_epochs(cfg.finetune.epochs)})")
            if masks:
                masking.apply_masks(model, masks)  # zeros already: the weights stay as they are
            if str(cfg.finetune.init) == "rewind":
                rewind.rewind(self, model, masks)
            elif cfg.finetune.epochs == 0 and "pruned" in self.measured:
                unchanged = "pruned"  # not trained: the model this job measured after pruning
            settings = cfg.finetune
        if str(cfg.finetune.lr_schedule) == "rewind":
            settings = rewind.lr_rewind_settings(cfg, len(self.data.y_train))
        name = schedule_name(cfg)
        if name == "tfmot":
            from avlsi.tfmot_schedule import finetune_with_tfmot

            kerasjob.check_engine(cfg, keras_version(model))  # tf-keras only (a stored model)
            finetune_with_tfmot(self, model, settings)
            self.measure(model, "finetuned")
            self.save(model, "finetuned")
        else:
            extra = [schedules.gradual_callback(self, model)] if name == "gradual" else []
            self.fit_and_record(model, settings, "finetuned", callbacks=extra, unchanged=unchanged)
        if name == "iterative":
            schedules.log_round(self, model, cfg.schedule.rounds, float(cfg.psize), "tuned")
        run_name = mlflow.active_run().info.run_name or "finetuned"
        record.log_keras_model(model, name=re.sub(r"[^A-Za-z0-9_-]", "-", run_name))

    def fit_and_record(
        self,
        model,
        settings: DictConfig | str,
        prefix: str,
        callbacks=(),
        unchanged: str | None = None,
    ) -> None:
        """Train with `settings` (or the config section of that name); log curves, size, file.
        With `unchanged` (a prefix measured before; 0 epochs), that measurement carries over."""
        phase = settings if isinstance(settings, str) else "finetune"
        section = self.cfg[settings] if isinstance(settings, str) else settings
        self.fit(model, section, phase, callbacks)
        if unchanged is None:
            self.measure(model, prefix)
        else:
            self.carry_over(unchanged, prefix)
        self.save(model, prefix)

    def fit(self, model, settings: DictConfig, phase: str, callbacks=()) -> None:
        """Train with `settings`, seeded; per-epoch curves `{phase}.*`, `{phase}.seconds`."""
        kerasjob.set_seed(model, self.cfg.seed)
        start = time.perf_counter()
        train.fit(
            model,
            self.data,
            settings,
            verbose=self.cfg.verbose,
            callbacks=[train.EpochLogger(phase, record.log_metrics), *callbacks],
            phase=phase,
        )
        self.log({f"{phase}.seconds": time.perf_counter() - start})

    def run(self) -> dict[str, float]:
        self.data = load_data(self.cfg)
        record.log_dataset(self.data, self.cfg.dataset.name, data_fingerprint(self.cfg.dataset))
        model = masked = None
        if "train" in self.steps or "prune" in self.steps:
            model = self.baseline()
        if "prune" in self.steps:
            model, masked = self.prune(model)
        if "finetune" in self.steps:
            if model is None:
                model, masked = self.load_pruned()
            self.finetune(model, masked)
        return self.metrics


def model_label(cfg: DictConfig, choice: str | None) -> str:
    """The model as a run name shows it: the application, builder function or file's name."""
    if choice == "keras_app":
        return str(cfg.model.name)
    if choice == "builder":
        return str(cfg.model._target_).rsplit(".", 1)[-1]
    if choice == "file":
        return Path(str(cfg.model.path)).stem
    return choice or str(cfg.model.name)


def run_name(cfg: DictConfig, choices: dict[str, str], overrides: list[str]) -> str:
    """Distinct names for distinct configs: model, criterion, scope (and layer), psize (or
    threshold), seed; the stage unless `all`; scratch; a short hash of the overrides of
    model / dataset / train / finetune / other criterion settings."""
    criterion, psize = cfg.criterion, effective_psize(cfg)
    parts = [model_label(cfg, choices.get("model")), criterion.name]
    if criterion.prunes:
        scope = str(getattr(criterion.scope, "value", criterion.scope))
        parts.append(f"{scope}:{criterion.layer}" if scope == "layer" else scope)
    if psize is not None:
        parts.append(f"p{psize:g}")
    elif criterion.threshold is not None:
        parts.append(f"th{criterion.threshold:g}")
    parts.append(f"s{cfg.seed}")
    if cfg.stage.name != "all":
        parts.append(cfg.stage.name)
    if str(cfg.finetune.init) != "pruned":
        parts.append(str(cfg.finetune.init))
    if schedule_name(cfg) != "oneshot":
        parts.append(schedule_name(cfg))
    shown = ("criterion.scope", "criterion.layer", "criterion.threshold")
    hashed = sorted(
        o.lstrip("+~")
        for o in overrides
        if o.lstrip("+~").startswith(
            ("model.", "dataset.", "train.", "finetune.", "criterion.", "schedule.")
        )
        and not o.lstrip("+~").startswith(shown)
        and not o.lstrip("+~").startswith(
            (
                "dataset.path",
                "dataset.test_path",
                "dataset.cache_dir",
                "model.path",
                "model.weights",
            )
        )
    )
    if hashed:
        parts.append(hashlib.sha256("\n".join(hashed).encode()).hexdigest()[:6])
    return "-".join(parts)


def run_job(
    cfg: DictConfig,
    output_dir: Path,
    choices: dict[str, str],
    skip_finished: bool = False,
    parent_run_id: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict[str, float]:
    """Check, then run one job inside its own MLflow run; returns its metrics.

    With skip_finished, a job whose identical config already FINISHED in the experiment
    is not run again: its earlier run's metrics are returned. With parent_run_id, the run
    is a child of that (sweep) run.
    """
    check_config(cfg)
    forget_folders()  # a data folder is walked once per job (keys.folder_fingerprint)
    key = job_key(cfg)
    if skip_finished:
        done = record.find_finished(cfg.mlflow.tracking_uri, cfg.mlflow.experiment, key)
        if done is not None:
            log.info(
                "skipped: this job FINISHED before as run %s (%s); rerun=true runs it again",
                done.info.run_name,
                done.info.run_id,
            )
            return dict(done.data.metrics)
    store = ModelStore(cfg.store.dir)
    check_prerequisites(cfg, store)
    if "train" in steps_of(cfg):
        from avlsi.models import check_buildable

        check_buildable(cfg.model)  # a builder or application that does not exist: no run
    pin_threads(cfg.latency.threads)  # before TensorFlow's runtime starts, where it has not
    train.seed_everything(cfg.seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    scope = cfg.criterion.scope.value
    name = run_name(cfg, choices, list(overrides))
    tags = {
        "stage": cfg.stage.name,
        "output_dir": str(output_dir),
        record.JOB_KEY_TAG: key,
        "avlsi.group_key": group_key(cfg),
        "avlsi.code": code_fingerprint(),
        "avlsi.data": data_fingerprint(cfg.dataset),
    }
    if git_commit():
        tags["avlsi.git_commit"] = git_commit()
    if parent_run_id:
        tags[record.PARENT_TAG] = parent_run_id
    with record.mlflow_run(cfg, name, tags) as run:
        record.log_config(cfg, {**choices, "scope": scope}, output_dir)
        metrics = Job(cfg, output_dir).run()  # a failure is tagged `error` by mlflow_run
    log.info("%s: %s", name, results_line(metrics))
    url = record.runs_table_url(cfg.mlflow.tracking_uri, run.info.experiment_id)
    log.info(
        "recorded as MLflow run %s in experiment '%s'; models in %s",
        run.info.run_id,
        cfg.mlflow.experiment,
        output_dir,
    )
    log.info("runs table: %s%s", url, _ui_hint(cfg.mlflow.tracking_uri))
    return metrics


def _ui_hint(tracking_uri: str) -> str:
    """How to start the UI that serves `tracking_uri` locally ('' for a server)."""
    if tracking_uri.startswith(("http://", "https://")):
        return ""
    from avlsi.config import PROJECT_ROOT

    if record.sqlite_path(tracking_uri) == PROJECT_ROOT / "mlflow.db":
        return " (after `make ui`)"
    return f" (after `mlflow server --backend-store-uri {tracking_uri}`)"


def results_line(metrics: dict[str, float]) -> str:
    """Test accuracy and size of each stage that ran, in one line."""
    stages = [s for s in ("baseline", "pruned", "finetuned") if f"{s}.test_accuracy" in metrics]
    accuracy = " -> ".join(f"{s} {metrics[f'{s}.test_accuracy']:.2%}" for s in stages)
    line = f"test accuracy {accuracy}"
    if stages and stages[-1] != "baseline" and "baseline.params" in metrics:
        last = stages[-1]
        for what in ("params", "nonzero_params", "macs"):
            before, after = metrics["baseline." + what], metrics[f"{last}.{what}"]
            line += f"; {what} {before:,.0f} -> {after:,.0f} ({after / before:.2f}x)"
    return line
