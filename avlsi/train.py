"""Training, fine-tuning and evaluation with Keras' own loop and progress bars.

Optimizers, schedules and losses come from the model's own Keras (tf-keras or Keras 3):
`make_optimizer(settings, keras=...)` and `compile_model(model, ...)` ask
`avlsi.kerasapi.keras_of(model)`.
"""

from __future__ import annotations

import math
import sys

import tensorflow as tf

import avlsi  # noqa: F401
from avlsi import stopping
from avlsi.config import TrainConfig
from avlsi.errors import UserError
from avlsi.kerasapi import is_keras3, keras_of
from avlsi.models import ends_in_softmax


def seed_everything(seed: int) -> None:
    """Same config and seed -> same numbers on the same machine (Keras 3 too, if loaded:
    its layer names and global seed generator are its own)."""
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(seed)
    if "keras" in sys.modules:
        keras3 = sys.modules["keras"]
        keras3.backend.clear_session()
        keras3.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def default_verbosity() -> int:
    """A progress bar on a terminal, one line per epoch in logs."""
    return 1 if sys.stdout.isatty() else 2


ADAMW_DEFAULT_DECAY = 0.004  # tf-keras AdamW's own default, when train.weight_decay is null


def _option(settings, key: str):
    """settings[key], else TrainConfig's default (settings: a config section or a dict)."""
    default = getattr(TrainConfig(), key)
    value = settings.get(key, default) if settings is not None else default
    return getattr(value, "value", value)  # an enum member -> its string


def make_optimizer(settings=None, total_steps: int = 0, keras=None):
    """The optimizer a `train` / `finetune` section asks for (`optimizer`, `learning_rate`,
    `momentum`, `weight_decay`, `lr_schedule`); a float means Adam at that learning rate.
    `keras`: the Keras package whose optimizer it is (default tf-keras).

    `cosine` decays the learning rate to 0 over `total_steps` (the phase's batches);
    `weight_decay` is Keras' decoupled decay (w -= lr * weight_decay * w each step)."""
    keras = keras or tf.keras
    if isinstance(settings, int | float):
        settings = {"learning_rate": float(settings)}
    rate = float(_option(settings, "learning_rate"))
    offset = int(settings.get("step_offset", 0) or 0) if settings is not None else 0
    if _option(settings, "lr_schedule") == "cosine" and total_steps > 0:
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=int(total_steps) + offset)
        if offset:  # learning-rate rewinding: the tail of train's cosine (avlsi/rewind.py)
            from avlsi.rewind import shifted

            rate = shifted(rate, offset, keras)
    decay = _option(settings, "weight_decay")
    name = _option(settings, "optimizer")
    if name == "sgd":
        momentum = float(_option(settings, "momentum"))
        return keras.optimizers.SGD(rate, momentum=momentum, weight_decay=decay or None)
    if name == "adamw":
        decay = ADAMW_DEFAULT_DECAY if decay is None else float(decay)
        return keras.optimizers.AdamW(rate, weight_decay=decay)
    return keras.optimizers.Adam(rate)  # config checks refuse adam with weight_decay > 0


def compile_model(model, settings=None, total_steps: int = 0) -> None:
    """Compile for training with `settings` (see `make_optimizer`) and sparse categorical
    cross-entropy, on logits or probabilities as the model's output is (softmax or not)."""
    keras = keras_of(model)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not ends_in_softmax(model))
    optimizer = make_optimizer(settings, total_steps, keras)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])


def fit(model, data, cfg, *, callbacks=(), verbose: int | None = None, phase: str = "train"):
    """Train on data's training set for cfg.epochs; returns the Keras History.

    A loss that stops being a finite number ends the job (UserError naming `phase`).
    """
    steps = cfg.epochs * math.ceil(len(data.y_train) / cfg.batch_size)  # the cosine's length
    if cfg.epochs > 0 and getattr(cfg, "unfreeze", False):
        model.trainable = True  # every layer, nested ones too (before compiling)
    compile_model(model, cfg, total_steps=steps)
    if cfg.epochs <= 0:
        return None
    guard = StopOnNonFiniteLoss(phase)
    try:  # arrays as Keras takes them, or a streamed tf.data.Dataset (data.keras_inputs)
        with stopping.deferred():
            history = model.fit(
                **data.keras_inputs("train", cfg.batch_size, shuffle=True),
                epochs=cfg.epochs,
                callbacks=[guard, StopOnSignal(), *callbacks],
                verbose=default_verbosity() if verbose is None else verbose,
            )
    except tf.errors.InvalidArgumentError as exc:  # e.g. an image file that does not decode
        raise data.read_error(exc, "train") from None
    guard.check()
    return history


def evaluate(model, data, batch_size: int = 512, split: str = "test") -> float:
    """Accuracy in [0, 1] on the test (or `split="val"`: validation) set."""
    if not is_compiled(model):
        compile_model(model)
    try:
        with stopping.deferred():
            _, accuracy = model.evaluate(
                **data.keras_inputs(split, batch_size), callbacks=[StopOnSignal()], verbose=0
            )
    except tf.errors.InvalidArgumentError as exc:
        raise data.read_error(exc, split) from None
    return float(accuracy)


def is_compiled(model) -> bool:
    """Whether `model` was compiled (tf-keras: a compiled loss; Keras 3: `model.compiled`)."""
    return bool(model.compiled if is_keras3(model) else model.compiled_loss)


class StopOnSignal(tf.keras.callbacks.Callback):
    """Raises a SIGTERM / SIGINT noted inside `stopping.deferred()` between two batches."""

    _supports_tf_logs = True  # no per-batch conversion of the logs to numpy

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        stopping.raise_if_pending()

    def on_test_batch_end(self, batch: int, logs=None) -> None:
        stopping.raise_if_pending()


class EpochLogger(tf.keras.callbacks.Callback):
    """Sends `{prefix}.loss`, `{prefix}.accuracy` per epoch to a `log(metrics, step)` function."""

    def __init__(self, prefix: str, log) -> None:
        super().__init__()
        self.prefix, self.log = prefix, log

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.log({f"{self.prefix}.{k}": float(v) for k, v in (logs or {}).items()}, epoch + 1)


class StopOnNonFiniteLoss(tf.keras.callbacks.Callback):
    """Stops training once the loss is nan or inf; `check()` then raises a UserError saying
    where (Keras' own TerminateOnNaN stops silently and the run would look FINISHED).
    Training is stopped, not interrupted by the exception, so Keras ends its loop cleanly."""

    def __init__(self, phase: str) -> None:
        super().__init__()
        self.phase = phase
        self.bad: tuple[int, float] | None = None

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            self.bad = (epoch + 1, loss)
            self.model.stop_training = True

    def check(self) -> None:
        if self.bad is not None:
            epoch, loss = self.bad
            raise UserError(
                f"{self.phase}: the training loss became {loss} in epoch {epoch}; lower "
                f"{self.phase}.learning_rate or check the data for nan / inf values"
            )
