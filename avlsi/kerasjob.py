"""What a job does with its model in the model's own Keras (tf-keras or Keras 3).

A job never uses `tf.keras` on the user's model: it loads, copies, seeds and prunes with the
Keras the model belongs to (`avlsi.kerasapi.keras_of`). Which surgery engine removes units
is config (`surgery.engine`): `auto` is kerassurgeon for tf-keras models and the native
engine for Keras 3 ones, and kerassurgeon on a Keras 3 model is refused in one line, before
TensorFlow loads where the config already says the model's Keras (`model.keras`, a file's
metadata), else as soon as the model is built.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from avlsi.errors import UserError
from avlsi.kerasapi import keras_of, keras_version

KERASSURGEON_ON_KERAS3 = (
    "surgery.engine=kerassurgeon works on tf-keras models only, and this model is a Keras 3 "
    "one; pass surgery.engine=native (or auto)"
)
TFMOT_ON_KERAS3 = (
    "schedule=tfmot wraps tf-keras layers (TF Model Optimization 0.8 has no Keras 3 support), "
    "and this model is a Keras 3 one; pass schedule=gradual (AVLSI's own gradual magnitude "
    "pruning, the same schedule)"
)


def engine_setting(cfg: DictConfig) -> str:
    """`surgery.engine` as a plain string."""
    engine = cfg.surgery.engine
    return str(getattr(engine, "value", engine))


def does_surgery(cfg: DictConfig) -> bool:
    """Whether the job removes units (a structured criterion that prunes, a prune step)."""
    from avlsi.config import steps_of

    criterion = cfg.criterion
    return "prune" in steps_of(cfg) and bool(criterion.prunes) and bool(criterion.structured)


def tf_keras_only(cfg: DictConfig) -> str | None:
    """Why this job needs a tf-keras model (kerassurgeon, TF Model Optimization), or None."""
    from avlsi.schedule_checks import schedule_name

    if engine_setting(cfg) == "kerassurgeon" and does_surgery(cfg):
        return KERASSURGEON_ON_KERAS3
    if schedule_name(cfg) == "tfmot":
        return TFMOT_ON_KERAS3
    return None


def check_engine(cfg: DictConfig, version: int | None) -> None:
    """A UserError for kerassurgeon or schedule=tfmot on a Keras 3 model (version 3)."""
    reason = tf_keras_only(cfg) if version == 3 else None
    if reason:
        raise UserError(reason)


def check_engine_early(cfg: DictConfig) -> None:
    """`check_engine` before TensorFlow loads, where the config says the model's Keras."""
    if tf_keras_only(cfg) is None:
        return
    from avlsi.models import keras_choice

    check_engine(cfg, keras_choice(cfg.model))


def load_model(path: Path):
    """A stored or saved model, loaded with the Keras that wrote it, not compiled."""
    from avlsi.models.file import load_saved

    return load_saved(Path(path))


def copy_model(model, weights: bool = True):
    """A new model of the same architecture in the same Keras: with `model`'s weights, or
    (weights=False) freshly initialised ones."""
    twin = keras_of(model).models.clone_model(model)
    if weights:
        twin.set_weights(model.get_weights())
    return twin


def set_seed(model, seed: int) -> None:
    """Seed Python, NumPy, TensorFlow and the model's Keras (Keras 3 has its own global
    seed generator, used by dropout and by initialisers without a seed)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    if keras_version(model) == 3:
        keras_of(model).utils.set_random_seed(seed)
