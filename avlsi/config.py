"""Config schema: dataclasses registered in Hydra's ConfigStore.

Every YAML option of a group names its schema in its defaults list, so a wrong type or an
unknown key fails when Hydra composes the config, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import shlex
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from avlsi.errors import UserError, clip
from avlsi.units import UNIT_TYPES

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# Which units compete when scores are ranked: `layer` (one named layer, criterion.layer),
# `layerwise` (every prunable layer loses psize of its units), `global` (all prunable units
# ranked together after per-layer scaling, criterion.normalize). Functional form: `global` is
# a keyword.
Scope = Enum("Scope", {"layer": "layer", "layerwise": "layerwise", "global": "global"}, type=str)


class Normalize(StrEnum):
    """How scope=global scales each layer's scores before ranking them together."""

    rms = "rms"  # divide by the root mean square (the original AVLSI code)
    l2 = "l2"  # divide by the L2 norm (Molchanov et al. 2017)
    max = "max"  # divide by the largest |score|
    mean = "mean"  # divide by the mean |score|
    none = "none"  # raw scores


class GroupReduce(StrEnum):
    """How the scores of a group's coupled layers become one score per channel."""

    mean = "mean"  # their mean (Torch-Pruning's default)
    sum = "sum"
    max = "max"
    first = "first"  # the first layer's score alone


class Task(StrEnum):
    job = "job"  # train / prune / fine-tune as the stage says, recorded in MLflow
    report = "report"  # write the report of mlflow.experiment instead (see avlsi/report.py)
    inspect = "inspect"  # print the model's pruning groups, train nothing (avlsi/inspect.py)
    sensitivity = "sensitivity"  # prune each group alone at several psizes (avlsi/sensitivity.py)


class Step(StrEnum):
    train = "train"
    prune = "prune"
    finetune = "finetune"


@dataclass
class ModelConfig:
    """A stack of Conv2D blocks, then Dense layers, then the output layer."""

    _target_: str = "avlsi.models.stack.build"
    name: str = MISSING
    conv_filters: list[int] = field(default_factory=list)
    dense_units: list[int] = field(default_factory=list)
    kernel_size: int = 3
    pool_every: int = 2  # a 2x2 max-pool after every `pool_every` conv layers (0: never)
    batch_norm: bool = False
    dropout: float = 0.0
    keras: int = 2  # 2: tf-keras, 3: Keras 3 (the `keras` package)


@dataclass
class FileModelConfig:
    """A saved Keras model (`.keras`, `.h5`, SavedModel folder): it is the baseline, loaded
    with the Keras that wrote it (tf-keras or Keras 3, read from the file)."""

    _target_: str = "avlsi.models.file.load"
    name: str = "file"
    path: str | None = None  # required; its content (not its place) is in the keys
    # Modules imported before the model is loaded: those defining its custom layers
    # (registered with keras.saving.register_keras_serializable, or any Layer subclass in
    # them); importable from the folder you run in. Their source files are in the keys.
    imports: list[str] = field(default_factory=list)


@dataclass
class KerasAppConfig:
    """Any `keras.applications` constructor, built for the dataset's shape and classes."""

    _target_: str = "avlsi.models.keras_app.build"
    name: str = MISSING  # the constructor, e.g. MobileNetV2
    weights: str | None = None  # a local weights file; default: random initial weights
    kwargs: dict[str, Any] = field(default_factory=dict)  # more arguments, e.g. alpha: 0.35
    keras: int = 2  # 2: tf_keras.applications, 3: keras.applications (Keras 3)


# model=builder: an open node (any key), passed to `_target_` as keyword arguments.
BUILDER_MODEL = {"_target_": MISSING, "name": "builder"}
MODEL_SCHEMAS = (ModelConfig, FileModelConfig, KerasAppConfig)


@dataclass
class DatasetConfig:
    _target_: str = MISSING  # a loader: (cfg, seed) -> avlsi.data.Dataset
    name: str = MISSING
    path: str | None = None
    limit: int | None = None  # at most this many training examples
    test_limit: int | None = None  # at most this many test examples (default: all)
    # Held out of the training data for validation (selection, Pareto marks), with a fixed
    # split that does not depend on `seed`; loaders with their own split (FER2013's Usage
    # column) use theirs.
    val_fraction: float = 0.1
    path_example: ClassVar[str | None] = None  # set: dataset.path is required (an example)
    path_kind: ClassVar[str | None] = None  # "file" or "folder": what dataset.path must be


@dataclass
class MnistConfig(DatasetConfig):
    _target_: str = "avlsi.data.mnist.load"
    name: str = "mnist"


@dataclass
class Fer2013Config(DatasetConfig):
    path_example: ClassVar[str | None] = "/path/to/train.csv"  # required: the user's own file
    _target_: str = "avlsi.data.fer2013.load"
    name: str = "fer2013"
    test_fraction: float = 0.1  # held out when the CSV has no Usage column


@dataclass
class NpzConfig(DatasetConfig):
    """The user's arrays: x_train, y_train, x_test, y_test (optional x_val, y_val)."""

    path_example: ClassVar[str | None] = "/path/to/data.npz"
    path_kind: ClassVar[str | None] = "file"
    _target_: str = "avlsi.data.npz.load"
    name: str = "npz"
    # (N, H, W) arrays are grayscale images and get a channel axis; false keeps them as they
    # are: (N, T, C) sequences for Conv1D models
    add_channel: bool = True


@dataclass
class ImageFolderConfig(DatasetConfig):
    """One sub-folder of images per class, streamed (see avlsi/data/image_folder.py)."""

    path_example: ClassVar[str | None] = "/path/to/images"
    path_kind: ClassVar[str | None] = "folder"
    _target_: str = "avlsi.data.image_folder.load"
    name: str = "image_folder"
    test_path: str | None = None  # a folder of the same classes; else DIR/test/ or a fraction
    image_size: list[int] | None = None  # [height, width]; default: the first image's size
    color_mode: str = "rgb"  # grayscale, rgb or rgba
    test_fraction: float = 0.2  # held out of DIR when there is no test folder


@dataclass
class KerasConfig(DatasetConfig):
    """keras' own datasets and download cache: cifar10, cifar100, fashion_mnist, mnist."""

    _target_: str = "avlsi.data.keras_datasets.load"
    name: str = "cifar10"
    cache_dir: str | None = None  # default ~/.keras (files under <cache_dir>/datasets/)


@dataclass
class SyntheticConfig(DatasetConfig):
    _target_: str = "avlsi.data.synthetic.load"
    name: str = "synthetic"
    shape: list[int] = field(default_factory=lambda: [28, 28, 1])
    num_classes: int = 10
    train_size: int = 512
    test_size: int = 256
    noise: float = 0.3


@dataclass
class CriterionConfig:
    """A unit-scoring function plus how its scores are ranked.

    `layer_types` maps each scope the criterion accepts to the layer classes it can
    prune there; any other combination is refused before work starts.
    """

    _target_: str = MISSING  # a scorer: (model, layer, context) -> one score per unit
    name: str = MISSING
    scope: Scope = Scope.layerwise
    layer: str | None = None  # the layer for scope=layer
    structured: bool = True  # False: zero single weights instead of removing units
    samples: int = 256  # training images shown to data-driven criteria
    threshold: float | None = None  # magnitude only: zero |w| < threshold instead of psize
    ratios: dict[str, float] = field(default_factory=dict)  # layerwise: psize per group
    prunes: bool = True  # False: the `none` control (no unit removed, psize ignored)
    normalize: Normalize = Normalize.rms  # scope=global: per-layer scaling before ranking
    min_units: int = 1  # every layer keeps at least this many units (magnitude: weights)
    group_reduce: GroupReduce = GroupReduce.mean  # coupled layers' scores -> one per channel
    round_to: int = 1  # structured: each group keeps a multiple of this many channels
    layer_types: dict[str, list[str]] = field(
        default_factory=lambda: {
            scope: list(UNIT_TYPES) for scope in ("layer", "layerwise", "global")
        }
    )


@dataclass
class StageConfig:
    name: str = MISSING
    steps: list[Step] = field(default_factory=list)


class Optimizer(StrEnum):
    adam = "adam"
    sgd = "sgd"  # with `momentum`
    adamw = "adamw"  # Adam with decoupled weight decay (Loshchilov & Hutter 2019)


class LrSchedule(StrEnum):
    constant = "constant"
    cosine = "cosine"  # from learning_rate down to 0 over the phase's steps
    rewind = "rewind"  # finetune only: train's rates of its last finetune.epochs (Renda 2020)


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 128
    learning_rate: float = 1e-3
    optimizer: Optimizer = Optimizer.adam
    momentum: float = 0.9  # sgd only
    # Decoupled decay (w -= lr * weight_decay * w each step), for sgd and adamw; None: the
    # optimizer's default (adamw 0.004, as tf-keras; sgd 0). Adam with decay is adamw.
    weight_decay: float | None = None
    lr_schedule: LrSchedule = LrSchedule.constant
    # true: every layer is trainable in this phase, whatever the model says (a frozen
    # transfer-learning backbone then fine-tunes after pruning); false: as the model says
    unfreeze: bool = False


class FinetuneInit(StrEnum):
    pruned = "pruned"  # fine-tune the pruned model's kept weights
    scratch = "scratch"  # re-initialise the pruned architecture, train epochs + train.epochs
    rewind = "rewind"  # kept weights reset to baseline training's epoch rewind_epoch (magnitude)


@dataclass
class FinetuneConfig(TrainConfig):
    epochs: int = 1
    init: FinetuneInit = FinetuneInit.pruned
    rewind_epoch: int = 0  # init=rewind: 0 = the initial weights, k = after k training epochs


class ScheduleName(StrEnum):
    oneshot = "oneshot"  # prune once, fine-tune once
    iterative = "iterative"  # rounds of prune + fine-tune (Han et al. 2015)
    gradual = "gradual"  # magnitude: sparsity rises during fine-tuning (Zhu & Gupta 2017)
    tfmot = "tfmot"  # the same with TF Model Optimization's prune_low_magnitude (a reference)


class Steps(StrEnum):
    linear = "linear"  # round r of R removes r/R x psize in all
    geometric = "geometric"  # every round removes the same share of what is left


@dataclass
class ScheduleConfig:
    """How pruning is spread out (avlsi/schedules.py); psize is the final fraction."""

    name: ScheduleName = ScheduleName.oneshot
    rounds: int = 1  # iterative: prune + fine-tune rounds (the last one's is finetune.*)
    steps: Steps = Steps.geometric  # iterative: how the rounds approach psize
    epochs_per_round: int = 1  # iterative: fine-tune epochs after each round but the last
    initial_sparsity: float = 0.0  # gradual: sparsity at begin_step (final sparsity = psize)
    begin_step: int = 0  # gradual: the fine-tuning step (batch) at which pruning starts
    end_step: int | None = None  # gradual: the step at which psize is reached (null: the last)
    frequency: int = 100  # gradual: masks are recomputed every `frequency` steps


@dataclass
class SensitivityConfig:
    """task=sensitivity: each prunable group pruned alone, no fine-tuning (Li et al. 2017)."""

    psizes: list[float] = field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    )
    max_drop: float = 1.0  # percentage points of validation accuracy a group may lose
    out: str | None = None  # default: <the job's output folder>


class SurgeryEngine(StrEnum):
    """What removes the units (avlsi.surgery.delete_units)."""

    auto = "auto"  # kerassurgeon for tf-keras models, native for Keras 3 ones
    kerassurgeon = "kerassurgeon"  # tf-keras models only
    native = "native"  # AVLSI's own engine: rebuilds the model from its config, both Kerases


@dataclass
class SurgeryConfig:
    engine: SurgeryEngine = SurgeryEngine.auto


@dataclass
class MlflowConfig:
    tracking_uri: str = MISSING
    experiment: str = "avlsi"


@dataclass
class StoreConfig:
    dir: str = MISSING  # trained baselines and pruned models, shared by all jobs
    reuse: bool = True  # False: always train the baseline, never read the store


@dataclass
class ReportConfig:
    after_sweep: bool = False  # write the comparison report when a multirun ends
    out: str | None = None  # default: <sweep dir>/report, or <project>/reports/<experiment>
    filter: str = ""  # an MLflow search filter picking the runs, e.g. params.model = 'cnn'
    log: bool = True  # log the report's files to MLflow (the sweep's run, or a `report` run)


class ExportFormat(StrEnum):
    keras = "keras"  # the .keras file, without optimizer state
    saved_model = "saved_model"  # the inference graph (model.export), for TF Serving
    tflite = "tflite"  # TFLite float32, via the SavedModel


class Quantize(StrEnum):
    dynamic = "dynamic"  # int8 weights, float activations
    float16 = "float16"  # half-precision weights
    int8 = "int8"  # int8 weights and activations, calibrated on training images


@dataclass
class LatencyConfig:
    """Measured inference time of every stage's model (avlsi/latency.py)."""

    enabled: bool = True
    batch_sizes: list[int] = field(default_factory=lambda: [1, 128])  # smallest: latency
    warmup: int = 3  # untimed calls first
    runs: int = 20  # timed calls per batch size (median, 90th percentile)
    threads: int | None = None  # TensorFlow's and TFLite's threads; None: every usable core


@dataclass
class ExportConfig:
    """Deployable files of every stage's model, with their sizes (avlsi/export.py)."""

    formats: list[ExportFormat] = field(default_factory=lambda: [ExportFormat.keras])
    quantize: Quantize | None = None  # also a quantized TFLite file (needs tflite)
    calibration_samples: int = 128  # training images that calibrate int8


@dataclass
class Config:
    task: Task = Task.job
    # One of MODEL_SCHEMAS, or an open node for model=builder (hence Any; "schemas" is read by
    # schema_keys for suggestions).
    model: Any = field(default=MISSING, metadata={"schemas": MODEL_SCHEMAS})
    dataset: DatasetConfig = MISSING
    criterion: CriterionConfig = MISSING
    stage: StageConfig = MISSING
    schedule: ScheduleConfig = MISSING
    psize: float = 0.3
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    surgery: SurgeryConfig = field(default_factory=SurgeryConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    verbose: int | None = None  # Keras verbosity; default: progress bar on a terminal
    rerun: bool = False  # a sweep skips jobs already FINISHED with this config; True: run again


def register_resolvers() -> None:
    """`${avlsi_root:}`: the project folder, for paths in conf/ (idempotent)."""
    if not OmegaConf.has_resolver("avlsi_root"):
        OmegaConf.register_new_resolver("avlsi_root", lambda: str(PROJECT_ROOT))


def configured_default(key: str) -> str:
    """A value of conf/config.yaml, resolved: the one source of the helper tools' defaults."""
    register_resolvers()
    return str(OmegaConf.select(OmegaConf.load(PROJECT_ROOT / "conf" / "config.yaml"), key))


def register() -> None:
    """Put the schemas into Hydra's ConfigStore (idempotent)."""
    register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="schema/model", name="stack", node=ModelConfig)
    cs.store(group="schema/model", name="file", node=FileModelConfig)
    app = OmegaConf.structured(KerasAppConfig)
    OmegaConf.set_struct(app.kwargs, False)  # model.kwargs.alpha=0.35 without a leading +
    cs.store(group="schema/model", name="keras_app", node=app)
    builder = OmegaConf.create(BUILDER_MODEL)
    OmegaConf.set_struct(builder, False)  # model.width=8: any key, no leading + needed
    cs.store(group="schema/model", name="builder", node=builder)
    cs.store(group="schema/dataset", name="mnist", node=MnistConfig)
    cs.store(group="schema/dataset", name="fer2013", node=Fer2013Config)
    cs.store(group="schema/dataset", name="synthetic", node=SyntheticConfig)
    cs.store(group="schema/dataset", name="npz", node=NpzConfig)
    cs.store(group="schema/dataset", name="image_folder", node=ImageFolderConfig)
    cs.store(group="schema/dataset", name="keras", node=KerasConfig)
    criterion = OmegaConf.structured(CriterionConfig)
    OmegaConf.set_struct(criterion.ratios, False)  # criterion.ratios={conv1:0.5}: any group
    cs.store(group="schema/criterion", name="criterion", node=criterion)
    cs.store(group="schema/stage", name="stage", node=StageConfig)
    cs.store(group="schema/schedule", name="schedule", node=ScheduleConfig)


def steps_of(cfg: DictConfig) -> list[str]:
    return [str(getattr(s, "value", s)) for s in cfg.stage.steps]


def effective_psize(cfg: DictConfig) -> float | None:
    """The psize the job uses; None where psize means nothing.

    None for a criterion that does not prune (`prunes: false`: the `none` control) and for
    criterion.threshold (magnitude zeroes every |w| below it, whatever psize says); keys, run
    names and params use this, not cfg.psize.
    """
    criterion = cfg.criterion
    if OmegaConf.select(criterion, "prunes", default=True) is False:
        return None
    if OmegaConf.select(criterion, "threshold", default=None) is not None:
        return None
    return float(cfg.psize)


def check_dataset(dataset: DictConfig) -> None:
    """A dataset that needs a file has one, and a given dataset.path (and dataset.test_path)
    is a file or folder, of the kind the loader reads (found by `stat` alone: a FIFO or a
    device is refused without being opened)."""
    from avlsi.data.files import require_file_or_folder  # numpy only: no TensorFlow yet

    schema = OmegaConf.get_type(dataset)
    if schema is KerasConfig:
        from avlsi.data.keras_datasets import check_name  # no TensorFlow yet either

        check_name(str(dataset.name))
        if dataset.path is not None:
            raise UserError(
                "dataset=keras reads keras' own cache, not dataset.path; drop it (or pass "
                "dataset.cache_dir=FOLDER whose datasets/ holds the files)"
            )
    path = dataset.path
    if path is None:
        example = getattr(schema, "path_example", None)
        if example:
            raise UserError(f"dataset={dataset.name} needs dataset.path={example}")
        return
    wanted = getattr(schema, "path_kind", None)
    for key in ("path", "test_path"):
        value = dataset.get(key)
        if value is None:
            continue
        kind = require_file_or_folder(Path(str(value)).expanduser(), f"dataset.{key}")
        if wanted and kind != wanted:
            hint = "an .npz file" if wanted == "file" else "a folder of class folders"
            raise UserError(
                f"dataset.{key}={clip(value)} is a {kind}; dataset={dataset.name} reads {hint}"
            )
    if schema is NpzConfig:  # its headers: layout mistakes before TensorFlow loads
        from avlsi.data.npz import check_file

        check_file(Path(str(path)).expanduser(), dataset.limit, dataset.test_limit)
    if schema is ImageFolderConfig:
        from avlsi.data.image_folder import check_settings

        check_settings(dataset)


MAX_SEED = 2**32 - 1  # the largest seed numpy and TensorFlow accept
IN_MEMORY_SQLITE = ("sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite://:memory:")


def check_config(cfg: DictConfig) -> None:
    """Refuse values the schema cannot express, before any work starts."""
    check_known_keys(cfg)
    check_finite(cfg)
    check_dataset(cfg.dataset)
    if not 0 <= cfg.seed <= MAX_SEED:
        raise UserError(f"seed={cfg.seed} is outside 0..{MAX_SEED}; pass e.g. seed=0")
    check_tracking_settings(cfg.mlflow)
    layer = cfg.criterion.layer
    scope = str(getattr(cfg.criterion.scope, "value", cfg.criterion.scope))
    if layer is not None and scope != "layer":
        raise UserError(
            f"criterion.layer={clip(layer)} applies to criterion.scope=layer only (the scope is "
            f"{scope}); add criterion.scope=layer to prune that one layer"
        )
    if not 0 < cfg.psize < 1:
        raise UserError(f"psize={cfg.psize} is outside (0, 1); pass a fraction such as psize=0.3")
    steps = steps_of(cfg)
    if not steps or "".join(s[0] for s in steps) not in "tpf":
        raise UserError(
            f"stage.steps={steps} must be a run of train, prune, finetune in that order"
        )
    for name in ("train", "finetune"):
        section = cfg[name]
        if section.epochs < 0 or section.batch_size < 1 or section.learning_rate <= 0:
            raise UserError(
                f"{name}.epochs must be >= 0, {name}.batch_size >= 1 and {name}.learning_rate > 0"
            )
        check_optimizer(section, name)
    from avlsi.models import check_model_config  # no TensorFlow yet

    check_model_config(cfg.model)
    from avlsi.kerasjob import check_engine_early  # no TensorFlow yet

    check_engine_early(cfg)
    if "prune" in steps:
        from avlsi.select import accepted_layer_types  # numpy only: no TensorFlow yet

        accepted_layer_types(cfg.criterion)  # a scope the criterion refuses: before any work
    if not 0 <= cfg.dataset.val_fraction < 1:
        raise UserError(
            f"dataset.val_fraction={cfg.dataset.val_fraction} must be in [0, 1), e.g. 0.1"
        )
    if cfg.criterion.samples < 1:
        raise UserError("criterion.samples must be at least 1")
    check_round_to(cfg.criterion)
    check_runtime(cfg)
    if cfg.criterion.min_units < 1:
        raise UserError(
            f"criterion.min_units={cfg.criterion.min_units} must be at least 1 "
            "(no layer may lose all its units)"
        )
    if cfg.dataset.limit is not None and cfg.dataset.limit < 1:
        raise UserError("dataset.limit must be at least 1 (or null for the whole training set)")
    if cfg.dataset.test_limit is not None and cfg.dataset.test_limit < 1:
        raise UserError("dataset.test_limit must be at least 1 (or null for the whole test set)")
    if cfg.criterion.threshold is not None and cfg.criterion.threshold <= 0:
        raise UserError(f"criterion.threshold={cfg.criterion.threshold} must be above 0, e.g. 0.05")
    if cfg.criterion.threshold is not None and cfg.criterion.structured:
        raise UserError(
            f"criterion.threshold applies to criterion=magnitude only, not {cfg.criterion.name}"
        )
    from avlsi.schedule_checks import check_schedule  # no TensorFlow yet

    check_schedule(cfg)


def check_round_to(criterion: DictConfig) -> None:
    """criterion.round_to: a whole number of channels, for structured criteria only."""
    round_to = criterion.round_to
    if round_to < 1:
        raise UserError(
            f"criterion.round_to={round_to} must be at least 1 (1: no rounding; e.g. 8 keeps "
            "each layer's channels a multiple of 8)"
        )
    if round_to != 1 and not criterion.structured:
        raise UserError(
            f"criterion.round_to={round_to} applies to criteria that remove channels; "
            f"criterion={criterion.name} zeroes single weights (drop criterion.round_to)"
        )


def check_runtime(cfg: DictConfig) -> None:
    """latency.* and export.* in range; a quantized export is a TFLite file."""
    timing, export = cfg.latency, cfg.export
    if not timing.batch_sizes or min(timing.batch_sizes) < 1:
        raise UserError(
            f"latency.batch_sizes={list(timing.batch_sizes)} must list batch sizes >= 1, "
            "e.g. [1,128]"
        )
    if timing.warmup < 0 or timing.runs < 1:
        raise UserError("latency.warmup must be >= 0 and latency.runs >= 1 (e.g. 3 and 20)")
    if timing.threads is not None and timing.threads < 1:
        raise UserError(
            f"latency.threads={timing.threads} must be at least 1 (or null: every usable core)"
        )
    formats = [str(getattr(f, "value", f)) for f in export.formats]
    if export.quantize is not None and "tflite" not in formats:
        quantize = getattr(export.quantize, "value", export.quantize)
        raise UserError(
            f"export.quantize={quantize} makes a TFLite file: add tflite to export.formats, "
            "e.g. export.formats=[keras,tflite]"
        )
    if export.calibration_samples < 1:
        raise UserError("export.calibration_samples must be at least 1")


def check_optimizer(section: DictConfig, name: str) -> None:
    """momentum and weight_decay in range; Adam's weight decay is spelled adamw."""
    optimizer = str(getattr(section.optimizer, "value", section.optimizer))
    decay = section.weight_decay
    if decay is not None and decay < 0:
        raise UserError(
            f"{name}.weight_decay={decay} must be >= 0 (or null: the optimizer's default)"
        )
    if optimizer == "adam" and decay:
        raise UserError(
            f"{name}.weight_decay={decay} with {name}.optimizer=adam: Adam with decoupled "
            f"weight decay is AdamW; pass {name}.optimizer=adamw"
        )
    if not 0 <= section.momentum < 1:
        raise UserError(f"{name}.momentum={section.momentum} must be in [0, 1), e.g. 0.9")


def check_tracking_settings(mlflow_cfg: DictConfig) -> None:
    """A tracking URI that keeps what it records, and an experiment with a name."""
    uri = str(mlflow_cfg.tracking_uri).strip()
    if not uri:
        raise UserError("mlflow.tracking_uri is empty; pass e.g. sqlite:////abs/path/mlflow.db")
    if uri in IN_MEMORY_SQLITE or uri.endswith(":memory:"):
        raise UserError(
            f"mlflow.tracking_uri={uri} is an in-memory database: the runs would vanish when "
            "the job ends; pass a file, e.g. mlflow.tracking_uri=sqlite:////abs/path/mlflow.db"
        )
    if not str(mlflow_cfg.experiment).strip():
        raise UserError("mlflow.experiment is empty; name it, e.g. mlflow.experiment=avlsi")


# --- keys the schema does not know, and non-finite numbers -----------------------------------


def _dataclass_of(hint: object) -> type | None:
    """The dataclass a field's type hint names (`X`, `X | None`), else None."""
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _with_subclasses(cls: type) -> list[type]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _with_subclasses(sub)
    return found


def schema_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (each group's schema and its variants, e.g. the
    dataset loaders' own keys), for suggestions."""
    keys: list[str] = []
    for variant in _with_subclasses(cls or Config):
        hints = typing.get_type_hints(variant)
        for f in dataclasses.fields(variant):
            keys.append(prefix + f.name)
            nested = _dataclass_of(hints.get(f.name))
            for schema in (nested,) if nested else f.metadata.get("schemas", ()):
                keys += schema_keys(schema, f"{prefix}{f.name}.")
    return sorted(set(keys))


def suggest(key: str) -> str:
    """'; did you mean train.epochs?' for a key close to a schema key, else ''."""
    key = key.lstrip("+~")
    close = difflib.get_close_matches(key, schema_keys(), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def unknown_keys(node: DictConfig, prefix: str = "", missing: bool = False) -> list[str]:
    """Keys of `node` its schema has no field for (`+key=value` bypasses Hydra's struct
    check); with `missing`, the schema's fields that `node` lacks (`~key` deletes one)."""
    schema = OmegaConf.get_type(node)
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        return []  # a free-form dict (criterion.layer_types): any key goes
    known = [f.name for f in dataclasses.fields(schema)]
    if missing:
        present = set(node.keys())  # `key in node` is False for a ??? value, which is there
        found = [f"{prefix}{key}" for key in known if key not in present]
    else:
        found = [f"{prefix}{key}" for key in node if key not in known]
    for key in node:
        child = node._get_node(key)
        nested = isinstance(child, DictConfig) and not (child._is_none() or child._is_missing())
        if key in known and nested:
            found += unknown_keys(child, f"{prefix}{key}.", missing)
    return found


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse keys the schema does not know, including those added with a leading `+`, and
    schema keys removed with a leading `~`."""
    removed = unknown_keys(cfg, missing=True)
    if removed:
        raise UserError(
            f"{removed[0]} is missing from the config (removed with ~{removed[0]}?); "
            "every key of the schema needs a value"
        )
    unknown = unknown_keys(cfg)
    if unknown:
        key = unknown[0]
        raise UserError(
            f"unknown key {clip(key)}: the config schema has no such key (a leading + does not "
            f"add one){suggest(key) or '; python run.py --cfg job shows every key'}"
        )


def non_finite(node: object, key: str = "") -> list[tuple[str, float]]:
    """(key, value) of every nan / inf number in a plain container (lists included)."""
    if isinstance(node, dict):
        return [hit for k, v in node.items() for hit in non_finite(v, f"{key}.{k}" if key else k)]
    if isinstance(node, list):
        return [hit for i, v in enumerate(node) for hit in non_finite(v, f"{key}[{i}]")]
    return [(key, node)] if isinstance(node, float) and not math.isfinite(node) else []


def check_finite(cfg: DictConfig) -> None:
    """nan and inf are never a meaningful setting: refuse them whatever the key."""
    plain = OmegaConf.to_container(cfg, resolve=False)  # numbers are literals: fast
    bad = non_finite(plain)
    if bad:
        key, value = bad[0]
        raise UserError(f"{key}={value} is not a finite number; pass a real value")


# Overrides that change neither which models a stage needs nor where they are kept.
NOT_IN_STAGE_COMMAND = ("stage", "hydra", "verbose", "rerun", "report")


def job_command(
    first: list[str], drop_groups: tuple[str, ...], drop_keys: tuple[str, ...] = ()
) -> str | None:
    """`python run.py FIRST ...` with the running job's overrides but those under
    `drop_groups` (hydra.run.dir, ...) or named in `drop_keys`; None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    kept = []
    for override in map(str, HydraConfig.get().overrides.task):
        key = override.lstrip("+~").split("=")[0]
        if key.split(".")[0] not in drop_groups and key not in drop_keys:
            kept.append(override)
    return " ".join(["python run.py", *(shlex.quote(o) for o in [*first, *kept])])


def stage_command(stage: str) -> str | None:
    """`python run.py stage=STAGE ...` with every override of the running job that matters
    (model, dataset, criterion, psize, train.*, store.dir, mlflow.*, ...); None outside Hydra."""
    return job_command([f"stage={stage}"], NOT_IN_STAGE_COMMAND)
