"""Rewinding: weight rewinding (Frankle et al. 2019, `finetune.init=rewind`) and learning-rate
rewinding (Renda et al. 2020, `finetune.lr_schedule=rewind`).

A baseline trained by a job with `finetune.init=rewind` keeps its weights after
`finetune.rewind_epoch` epochs (0: the initial weights) in the store as an entry of kind
`rewind`, key `<baseline key>-e<epoch>`, whose meta names the baseline's key and the sha256
of the baseline's model file; the baseline's own meta lists `rewind_epochs`. A stored
baseline without the epoch asked for (trained before, or by a job without rewinding) is
trained again (training is deterministic: the same baseline) and the points are kept.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from avlsi.errors import UserError

log = logging.getLogger(__name__)

REWIND = "rewind"


def rewind_key(baseline_key: str, epoch: int) -> str:
    return f"{baseline_key}-e{epoch}"


def wanted_epoch(cfg: DictConfig) -> int | None:
    """The epoch a job rewinds to, or None when it does not rewind."""
    if str(getattr(cfg.finetune.init, "value", cfg.finetune.init)) != "rewind":
        return None
    return int(cfg.finetune.rewind_epoch)


def has_point(store, baseline_key: str, baseline_meta: dict, epoch: int) -> bool:
    """The store holds the weights of `epoch` of THIS stored baseline (same model file)."""
    found = store.get(REWIND, rewind_key(baseline_key, epoch))
    return found is not None and found[1].get("baseline_sha256") == baseline_meta.get("sha256")


class KeepWeights(tf.keras.callbacks.Callback):
    """Keeps a copy of the model's weights after each of `epochs` (0: as built, kept now)."""

    def __init__(self, model, epochs) -> None:
        super().__init__()
        self.epochs = sorted(set(epochs))
        self.kept: dict[int, list[np.ndarray]] = {}
        if 0 in self.epochs:
            self.kept[0] = [w.copy() for w in model.get_weights()]

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if epoch + 1 in self.epochs:
            self.kept[epoch + 1] = [w.copy() for w in self.model.get_weights()]

    def meta(self) -> dict:
        """For the baseline's store meta: which epochs' weights are kept (none: nothing)."""
        return {"rewind_epochs": sorted(self.kept)} if self.kept else {}


def store_points(store, baseline_key: str, model, keep: KeepWeights) -> None:
    """Put the kept weights in the store, tied to the stored baseline's model file."""
    from avlsi.pipeline import BASELINES

    found = store.get(BASELINES, baseline_key)
    sha = found[1].get("sha256") if found else None
    from avlsi.kerasjob import copy_model

    for epoch, weights in keep.kept.items():
        twin = copy_model(model, weights=False)
        twin.set_weights(weights)
        meta = {"baseline_key": baseline_key, "epoch": epoch, "baseline_sha256": sha}
        store.put(REWIND, rewind_key(baseline_key, epoch), twin, meta)


def rewind(job, model, masks: dict[str, np.ndarray]) -> None:
    """Set `model`'s weights to the stored baseline's at finetune.rewind_epoch, then zero
    (and hold) the pruned weights again: the kept weights restart from their earlier values."""
    from avlsi import masking
    from avlsi.keys import baseline_key
    from avlsi.pipeline import _load

    cfg, epoch = job.cfg, wanted_epoch(job.cfg)
    found = job.store.get(REWIND, rewind_key(baseline_key(cfg), epoch))
    if found is None:
        raise UserError(
            f"the stored baseline has no weights of epoch {epoch} to rewind to; train it with "
            f"them first: python run.py stage=train finetune.init=rewind "
            f"finetune.rewind_epoch={epoch} (with the same model / dataset / train / seed)"
        )
    stored = _load(found[0])
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(stored.get_layer(layer.name).get_weights())
    if masks:
        masking.apply_masks(model, masks)


@tf.keras.utils.register_keras_serializable(package="avlsi")
class ShiftedSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """`schedule(step + offset)`: the tail of a longer schedule."""

    def __init__(self, schedule, offset: int) -> None:
        self.schedule, self.offset = schedule, int(offset)

    def __call__(self, step):
        return self.schedule(tf.cast(step, tf.float32) + self.offset)

    def get_config(self) -> dict:
        return {
            "schedule": tf.keras.optimizers.schedules.serialize(self.schedule),
            "offset": self.offset,
        }

    @classmethod
    def from_config(cls, config):
        schedule = tf.keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(schedule, config["offset"])


def shifted(schedule, offset: int, keras):
    """`schedule` from step `offset` on (tf-keras; a Keras 3 optimizer is refused)."""
    if keras.__name__ != "tf_keras" and keras is not tf.keras:
        raise UserError(
            "finetune.lr_schedule=rewind after a cosine train schedule works with tf-keras "
            "models only so far; pass train.lr_schedule=constant for a Keras 3 model"
        )
    return ShiftedSchedule(schedule, offset)


def lr_rewind_settings(cfg: DictConfig, train_size: int) -> DictConfig:
    """Fine-tuning settings for learning-rate rewinding: train's optimizer, batch size and
    learning-rate schedule as they were in its last finetune.epochs epochs (for cosine, the
    schedule's tail: `step_offset` steps in)."""
    settings = OmegaConf.to_container(cfg.train, resolve=True, enum_to_str=True)
    epochs = int(cfg.finetune.epochs)
    batches = math.ceil(train_size / int(cfg.train.batch_size))
    settings["epochs"] = epochs
    settings["unfreeze"] = bool(cfg.finetune.get("unfreeze", False))  # fine-tuning's own
    settings["step_offset"] = max(0, int(cfg.train.epochs) - epochs) * batches
    return OmegaConf.create(settings)
