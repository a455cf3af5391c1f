"""Training, fine-tuning and evaluation with Keras' own loop and progress bars."""

from __future__ import annotations

import math
import sys

import tensorflow as tf

import avlsi  # noqa: F401
from avlsi.errors import UserError


def seed_everything(seed: int) -> None:
    """Same config and seed -> same numbers on the same machine."""
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def default_verbosity() -> int:
    """A progress bar on a terminal, one line per epoch in logs."""
    return 1 if sys.stdout.isatty() else 2


def compile_model(model, learning_rate: float) -> None:
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def fit(model, data, cfg, *, callbacks=(), verbose: int | None = None, phase: str = "train"):
    """Train on data's training set for cfg.epochs; returns the Keras History.

    A loss that stops being a finite number ends the job (UserError naming `phase`).
    """
    compile_model(model, cfg.learning_rate)
    if cfg.epochs <= 0:
        return None
    guard = StopOnNonFiniteLoss(phase)
    try:  # arrays as Keras takes them, or a streamed tf.data.Dataset (data.keras_inputs)
        history = model.fit(
            **data.keras_inputs("train", cfg.batch_size, shuffle=True),
            epochs=cfg.epochs,
            callbacks=[guard, *callbacks],
            verbose=default_verbosity() if verbose is None else verbose,
        )
    except tf.errors.InvalidArgumentError as exc:  # e.g. an image file that does not decode
        raise data.read_error(exc, "train") from None
    guard.check()
    return history


def evaluate(model, data, batch_size: int = 512, split: str = "test") -> float:
    """Accuracy in [0, 1] on the test (or `split="val"`: validation) set."""
    if not model.compiled_loss:
        compile_model(model, 1e-3)
    try:
        _, accuracy = model.evaluate(**data.keras_inputs(split, batch_size), verbose=0)
    except tf.errors.InvalidArgumentError as exc:
        raise data.read_error(exc, split) from None
    return float(accuracy)


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
