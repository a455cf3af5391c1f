"""Models: built from config (`model._target_`), then checked against the dataset.

Four kinds, one per `conf/model/*.yaml` schema:
- the built-in stacks (`cnn`, `dnn`, `fer_cnn`) and any builder with the signature
  `(input_shape, num_classes, cfg)` given as their `_target_` (`avlsi.models.stack.build`);
- `model=builder`: `_target_` is called the way Hydra's `instantiate` calls it, every other
  key of `model.` but `name` as a keyword argument, plus `input_shape` and `num_classes`;
- `model=file`: a saved Keras model, tf-keras or Keras 3 (`avlsi.models.file`);
- `model=keras_app`: a `keras.applications` constructor (`avlsi.models.keras_app`).

`model.keras` (2 or 3, default 2) picks the Keras of the built-in stacks and of keras_app;
a builder may return a model of either Keras (it gets `model.keras` as a keyword argument
like any other key, and when that key is given the model must be of that Keras); a file's
metadata says which Keras wrote it. The job then uses the Keras of its model throughout.

Nothing depends on layer names: `output_layers` and `ends_in_softmax` read the graph.
Importing this package does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from avlsi.errors import UserError, clip
from avlsi.kerasapi import is_keras3, keras_version, loaded_kerases
from avlsi.models.outputs import activation_layer, ends_in_softmax, output_layers

__all__ = [
    "activation_layer",
    "build_model",
    "check_buildable",
    "check_model_config",
    "ends_in_softmax",
    "output_layers",
]

SUPPLIED = ("input_shape", "num_classes")  # what a builder gets from the dataset


def is_builder(cfg: DictConfig) -> bool:
    """model=builder: an open config (no schema), called with keyword arguments."""
    schema = OmegaConf.get_type(cfg)
    return not (isinstance(schema, type) and dataclasses.is_dataclass(schema))


def describe(cfg: DictConfig) -> str:
    """How the user named the model: model=cnn, model._target_=pkg.fn, model.path=..."""
    from avlsi.config import FileModelConfig, KerasAppConfig

    schema = OmegaConf.get_type(cfg)
    if schema is FileModelConfig:
        return f"model.path={clip(cfg.path)}"
    if schema is KerasAppConfig:
        return f"model=keras_app {clip(cfg.name)}"
    if is_builder(cfg) or cfg._target_ != "avlsi.models.stack.build":
        return f"model._target_={clip(cfg._target_)}"
    return f"model={cfg.name}"


def check_model_config(cfg: DictConfig) -> None:
    """What can be checked before TensorFlow loads: the file, the required keys."""
    from avlsi.config import FileModelConfig, KerasAppConfig

    schema = OmegaConf.get_type(cfg)
    if is_builder(cfg):
        if OmegaConf.is_missing(cfg, "_target_"):
            raise UserError(
                "model=builder needs model._target_=pkg.module.fn, a function that returns a "
                "Keras Model (see examples/my_models.py)"
            )
        given = [key for key in SUPPLIED if key in cfg]
        if given:
            raise UserError(f"model.{given[0]} is supplied by AVLSI from the dataset; remove it")
        if "keras" in cfg:
            check_keras_choice(cfg.keras)
        return
    elif schema is FileModelConfig:
        if cfg.path is None:
            raise UserError(
                "model=file needs model.path=/path/to/model.keras (a .keras or .h5 file saved "
                "by Keras 3 or tf-keras, or a tf-keras SavedModel folder)"
            )
        from avlsi.models.file import check_file

        check_file(Path(str(cfg.path)).expanduser())
    elif schema is KerasAppConfig:
        if OmegaConf.is_missing(cfg, "name"):
            raise UserError(
                "model=keras_app needs model.name=NAME, a keras.applications constructor "
                "such as MobileNetV2 or ResNet50"
            )
        if cfg.weights is not None:
            from avlsi.data.files import require_regular_file

            require_regular_file(Path(str(cfg.weights)).expanduser(), "pass model.weights=FILE")
        from avlsi.models.keras_app import check_kwargs

        check_kwargs(cfg)
    if schema is not FileModelConfig:
        check_keras_choice(cfg.keras)


def check_keras_choice(value) -> None:
    """model.keras is 2 (tf-keras) or 3 (Keras 3)."""
    if value not in (2, 3):
        raise UserError(
            f"model.keras={clip(value)} is not a Keras this job can use; pass model.keras=2 "
            "(tf-keras, the default) or model.keras=3 (Keras 3)"
        )


def keras_choice(cfg: DictConfig) -> int | None:
    """The Keras (2 or 3) the model config asks for, before anything is built: `model.keras`
    (a builder: only when given), a file's metadata; None when the builder decides."""
    from avlsi.config import FileModelConfig

    if OmegaConf.get_type(cfg) is FileModelConfig:
        from avlsi.models.file import keras_version_of

        return keras_version_of(Path(str(cfg.path)).expanduser())
    value = cfg.get("keras")
    return None if value is None else int(value)


def resolve_builder(cfg: DictConfig):
    """The function `model._target_` names; a UserError naming it if it cannot be found."""
    from hydra._internal.utils import _locate  # get_method's own lookup, without its log line

    target = str(cfg._target_)
    try:
        found = _locate(target)
    except Exception as err:  # an import error, from the path or from inside the module
        cause = err.__cause__ or err
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise UserError(
            f"model._target_={clip(target)} cannot be found ({type(cause).__name__}: "
            f"{reason}); pass pkg.module.function, importable from the current folder or "
            "PYTHONPATH"
        ) from None
    if not callable(found):
        raise UserError(
            f"model._target_={clip(target)} is a {type(found).__name__}, not a function"
        )
    return found


def check_buildable(cfg: DictConfig) -> None:
    """The builder (and, for keras_app, the application) exists: TensorFlow may load."""
    from avlsi.config import KerasAppConfig

    resolve_builder(cfg)
    if OmegaConf.get_type(cfg) is KerasAppConfig:
        from avlsi.models.keras_app import constructor

        constructor(str(cfg.name), int(cfg.keras))


def _keyword_arguments(cfg: DictConfig) -> dict:
    return {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "name"}


def _shape(input_shape) -> str:
    return "x".join(str(d) for d in input_shape)


def build_model(cfg, input_shape: tuple[int, ...], num_classes: int):
    """Build (or load) the model that `cfg` names for the data, checked to fit the data."""
    from hydra.utils import instantiate

    from avlsi.config import FileModelConfig
    from avlsi.models.flatten import flatten_nested

    builder = resolve_builder(cfg)
    what = describe(cfg)
    shape = tuple(int(d) for d in input_shape)
    try:
        if is_builder(cfg):
            model = instantiate(
                _keyword_arguments(cfg), input_shape=shape, num_classes=num_classes,
                _convert_="all",
            )  # fmt: skip
        else:
            model = builder(shape, num_classes, cfg)
    except UserError:
        raise
    except Exception as err:
        cause = err.__cause__ if type(err).__name__ == "InstantiationException" else None
        err = cause or err
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(
            f"{what} failed to build a model for input {_shape(shape)} and {num_classes} "
            f"classes: {type(err).__name__}: {text} (HYDRA_FULL_ERROR=1 shows the traceback)"
        ) from err
    model = flatten_nested(check_classifier(model, shape, num_classes, what), what)
    report_frozen(model, what)
    wanted = None if OmegaConf.get_type(cfg) is FileModelConfig else cfg.get("keras")
    if wanted is not None and keras_version(model) != int(wanted):
        raise UserError(
            f"{what} returned a {keras_name(keras_version(model))} model, but model.keras="
            f"{wanted} asks for {keras_name(int(wanted))}; build it with that Keras or drop "
            "model.keras"
        )
    return model


def report_frozen(model, what: str) -> None:
    """Say so when layers with weights are frozen (`trainable=False` as built or saved, e.g.
    a transfer-learning backbone): training and fine-tuning leave their weights as they are."""
    with_weights = [layer for layer in model.layers if layer.weights]
    frozen = [layer.name for layer in with_weights if not layer.trainable]
    if frozen:
        logging.getLogger("avlsi.models").info(
            "%s: %d of %d layers with weights are frozen (trainable=False, as the model says; "
            "training and fine-tuning leave them, unless train / finetune.unfreeze=true): %s",
            what, len(frozen),
            len(with_weights), clip(", ".join(frozen[:8]) + (", ..." if len(frozen) > 8 else "")),
        )  # fmt: skip


def keras_name(version: int) -> str:
    return "Keras 3" if version == 3 else "tf-keras"


def is_graph_model(model) -> bool:
    """A functional or Sequential model (a graph AVLSI can read), not a subclassed one."""
    if is_keras3(model):
        from keras import Sequential
        from keras.src.models.functional import Functional

        return isinstance(model, Functional) or (
            isinstance(model, Sequential) and getattr(model, "_functional", None) is not None
        )
    return bool(getattr(model, "_is_graph_network", False))


def check_classifier(model, input_shape: tuple[int, ...], num_classes: int, what: str):
    """A UserError unless `model` is a built single-output classifier for this data."""
    if not any(isinstance(model, keras.Model) for keras in loaded_kerases()):
        raise UserError(
            f"{what} returned {type(model).__name__}, not a Keras Model (tf-keras or Keras 3)"
        )
    if not model.built:
        model.build((None, *input_shape))
    if not is_graph_model(model):
        raise UserError(
            f"{what} returned a subclassed {type(model).__name__}; AVLSI reads the model's graph "
            "to prune it: build it with the functional API or keras.Sequential"
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UserError(
            f"{what} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; AVLSI "
            "prunes classifiers with one input and one output"
        )
    expected = tuple(model.inputs[0].shape[1:])
    fits = len(expected) == len(input_shape) and all(
        e is None or e == g for e, g in zip(expected, input_shape, strict=False)
    )
    if not fits:
        given = _shape(d if d is not None else "?" for d in expected)
        added = len(input_shape) == len(expected) + 1 == 3 and input_shape[-1] == 1
        hint = (
            " (a channel axis added to (N, T, C) arrays: for sequences, not grayscale images, "
            "pass dataset.add_channel=false)"
            if added
            and all(e is None or e == g for e, g in zip(expected, input_shape[:-1], strict=True))
            else ""
        )
        raise UserError(
            f"{what} takes inputs of shape {given}, but the dataset gives "
            f"{_shape(input_shape)}{hint}"
        )
    units = model.outputs[0].shape[-1]
    if len(model.outputs[0].shape) != 2 or units != num_classes:
        raise UserError(
            f"{what} outputs {units} classes (output shape {tuple(model.outputs[0].shape[1:])}), "
            f"but the dataset has {num_classes}"
        )
    return model


def application_layers(version: int = 2) -> dict:
    """Custom layer classes of keras.applications that Keras (2: tf-keras, 3: Keras 3)
    cannot find when it loads a saved model (ConvNeXt's LayerScale), for
    `load_model(custom_objects=...)`."""
    try:
        if version == 3:
            from keras.src.applications.convnext import LayerScale
        else:
            from tf_keras.src.applications.convnext import LayerScale
    except ImportError:  # pragma: no cover - a Keras without ConvNeXt
        return {}
    return {"LayerScale": LayerScale}
