"""One job: config -> data + model -> train -> score -> select -> surgery -> fine-tune -> record."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import mlflow
import numpy as np
import tensorflow as tf
import tf_keras
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

import avlsi  # noqa: F401
from avlsi import masking, memory, record, train
from avlsi.config import check_config, stage_command, steps_of
from avlsi.criteria import ScoringContext, get_scorer
from avlsi.data import Dataset
from avlsi.errors import UserError, clip
from avlsi.metrics import size_metrics
from avlsi.models import build_model
from avlsi.select import check_something_goes, prunable_layers, select_units
from avlsi.store import ModelStore, config_key

log = logging.getLogger(__name__)

STEPS = ("train", "prune", "finetune")
BASELINES, PRUNED = "baselines", "pruned"


def _plain(node) -> object:
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def baseline_key(cfg: DictConfig) -> str:
    """Everything that determines a trained baseline, hashed."""
    parts = {
        "model": _plain(cfg.model),
        "dataset": _plain(cfg.dataset),
        "train": _plain(cfg.train),
        "seed": cfg.seed,
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
    }
    return config_key(f"{cfg.model.name}-{cfg.dataset.name}-s{cfg.seed}", parts)


def pruned_key(cfg: DictConfig) -> str:
    """The baseline's key plus everything that determines how it was pruned."""
    parts = {"baseline": baseline_key(cfg), "criterion": _plain(cfg.criterion), "psize": cfg.psize}
    prefix = f"{cfg.model.name}-{cfg.dataset.name}-{cfg.criterion.name}-p{cfg.psize}-s{cfg.seed}"
    return config_key(prefix, parts)


# Config sections that say where results go or how they look, not what is computed.
NOT_IN_JOB_KEY = ("mlflow", "store", "report", "verbose", "rerun")


def job_key(cfg: DictConfig) -> str:
    """Everything that determines a job's results, hashed: equal keys, equal runs."""
    parts = {k: v for k, v in _plain(cfg).items() if k not in NOT_IN_JOB_KEY}
    parts.update(tensorflow=tf.__version__, tf_keras=tf_keras.__version__, avlsi=avlsi.__version__)
    return config_key("job", parts)


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
    return get_method(cfg.dataset._target_)(cfg.dataset, seed=cfg.seed)


def _load(path: Path):
    return tf.keras.models.load_model(path, compile=False)


def _save(model, output_dir: Path, name: str) -> Path:
    path = output_dir / f"{name}.keras"
    model.save(path)
    return path


class Job:
    """The state of one job as it moves through its steps."""

    def __init__(self, cfg: DictConfig, output_dir: Path) -> None:
        self.cfg, self.output_dir = cfg, output_dir
        self.store = ModelStore(cfg.store.dir)
        self.steps = steps_of(cfg)
        self.metrics: dict[str, float] = {}
        self.data: Dataset | None = None

    def log(self, metrics: dict[str, float]) -> None:
        self.metrics.update(metrics)
        record.log_metrics(metrics)

    def measure(self, model, prefix: str) -> None:
        self.log(
            {
                f"{prefix}.test_accuracy": train.evaluate(model, self.data),
                **size_metrics(model, prefix),
            }
        )

    def baseline(self):
        """Train the baseline, or load the stored one with the same key."""
        cfg, key = self.cfg, baseline_key(self.cfg)
        mlflow.set_tag("baseline.key", key)
        if "train" not in self.steps:
            path, meta = self.store.get(BASELINES, key)
            mlflow.set_tag("baseline.source", "reused")
            return _load(path)
        with self.store.lock(BASELINES, key):
            found = self.store.get(BASELINES, key) if cfg.store.reuse else None
            if found is not None:
                path, meta = found
                log.info("reusing the stored baseline %s", key)
                mlflow.set_tag("baseline.source", "reused")
                model = _load(path)
                shutil.copyfile(path, self.output_dir / "baseline.keras")
                self.log({k: v for k, v in meta["metrics"].items() if k.startswith("baseline.")})
                return model
            memory.check_model_fits(cfg, self.data)  # before building: one line, not an OOM
            model = build_model(cfg.model, self.data.input_shape, self.data.num_classes)
            self.check_prunable(model)  # a bad layer name fails before any training
            mlflow.set_tag("baseline.source", "trained")
            self.fit_and_record(model, "train", "baseline")
            self.store.put(BASELINES, key, model, {"metrics": self.metrics})
            return model

    def check_prunable(self, model) -> list:
        if "prune" not in self.steps:
            return []
        layers = prunable_layers(model, self.cfg.criterion)
        check_something_goes(layers, self.cfg.criterion, self.cfg.psize)
        return layers

    def prune(self, model):
        """Score, select and remove units (or zero weights); store the result."""
        cfg = self.cfg
        layers = self.check_prunable(model)
        criterion = cfg.criterion
        if criterion.structured:
            context = self.scoring_context()
            scores = get_scorer(criterion)(model, layers, context)
            units = select_units(scores, criterion.scope, cfg.psize)
            mlflow.log_dict({k: v for k, v in units.items()}, "pruned_units.json")
            from avlsi.surgery import delete_units

            pruned = delete_units(model, units)
            masked: list[str] = []
        else:
            pruned = tf.keras.models.clone_model(model)
            pruned.set_weights(model.get_weights())
            masks = masking.magnitude_masks(
                [pruned.get_layer(lyr.name) for lyr in layers],
                criterion.scope,
                cfg.psize,
                criterion.threshold,
            )
            masking.apply_masks(pruned, masks)
            masked = list(masks)
        self.measure(pruned, "pruned")
        record.log_model_file(_save(pruned, self.output_dir, "pruned"))
        self.store.put(PRUNED, pruned_key(cfg), pruned, {"masked_layers": masked})
        return pruned, masked

    def scoring_context(self) -> ScoringContext:
        x, y = self.data.x_train, self.data.y_train
        count = min(self.cfg.criterion.samples, len(x))
        pick = np.sort(np.random.default_rng(self.cfg.seed).choice(len(x), count, replace=False))
        return ScoringContext(x=x[pick], y=y[pick], seed=self.cfg.seed)

    def load_pruned(self):
        path, meta = self.store.get(PRUNED, pruned_key(self.cfg))
        model = _load(path)
        masked = meta.get("masked_layers", [])
        return model, masked

    def finetune(self, model, masked: list[str]) -> None:
        if masked:
            masking.apply_masks(model, masking.masks_from_zeros(model, masked))
        self.fit_and_record(model, "finetune", "finetuned")

    def fit_and_record(self, model, phase: str, prefix: str) -> None:
        """Train with the `phase` section's settings; log its curves, size and model file."""
        tf.keras.utils.set_random_seed(self.cfg.seed)
        train.fit(
            model,
            self.data,
            self.cfg[phase],
            verbose=self.cfg.verbose,
            callbacks=[train.EpochLogger(phase, record.log_metrics)],
            phase=phase,
        )
        self.measure(model, prefix)
        record.log_model_file(_save(model, self.output_dir, prefix))

    def run(self) -> dict[str, float]:
        self.data = load_data(self.cfg)
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


def run_job(
    cfg: DictConfig, output_dir: Path, choices: dict[str, str], skip_finished: bool = False
) -> dict[str, float]:
    """Check, then run one job inside its own MLflow run; returns its metrics.

    With skip_finished, a job whose identical config already FINISHED in the experiment
    is not run again: its earlier run's metrics are returned.
    """
    check_config(cfg)
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
    train.seed_everything(cfg.seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    scope = cfg.criterion.scope.value
    run_name = f"{cfg.model.name}-{cfg.criterion.name}-{scope}-p{cfg.psize}-s{cfg.seed}"
    tags = {"stage": cfg.stage.name, "output_dir": str(output_dir), record.JOB_KEY_TAG: key}
    with record.mlflow_run(cfg, run_name, tags) as run:
        record.log_config(cfg, {**choices, "scope": scope}, output_dir)
        try:
            metrics = Job(cfg, output_dir).run()
        except Exception as err:  # every failed run says why, not only a UserError's
            what = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            mlflow.set_tag("error", clip(what)[:5000])
            raise
    log.info("%s: %s", run_name, results_line(metrics))
    log.info(
        "recorded as MLflow run %s in experiment '%s' (make ui shows it); models in %s",
        run.info.run_id,
        cfg.mlflow.experiment,
        output_dir,
    )
    return metrics


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
