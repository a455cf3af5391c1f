"""Training, fine-tuning and evaluation with Keras' own loop and progress bars."""

from __future__ import annotations

import sys

import tensorflow as tf

import avlsi  # noqa: F401


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


def fit(model, data, cfg, *, callbacks=(), verbose: int | None = None):
    """Train on data's training set for cfg.epochs; returns the Keras History."""
    compile_model(model, cfg.learning_rate)
    if cfg.epochs <= 0:
        return None
    return model.fit(
        data.x_train,
        data.y_train,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        shuffle=True,
        callbacks=list(callbacks),
        verbose=default_verbosity() if verbose is None else verbose,
    )


def evaluate(model, data, batch_size: int = 512, split: str = "test") -> float:
    """Accuracy in [0, 1] on the test (or `split="val"`: validation) set."""
    if not model.compiled_loss:
        compile_model(model, 1e-3)
    x, y = (data.x_val, data.y_val) if split == "val" else (data.x_test, data.y_test)
    _, accuracy = model.evaluate(x, y, batch_size=batch_size, verbose=0)
    return float(accuracy)


class EpochLogger(tf.keras.callbacks.Callback):
    """Sends `{prefix}.loss`, `{prefix}.accuracy` per epoch to a `log(metrics, step)` function."""

    def __init__(self, prefix: str, log) -> None:
        super().__init__()
        self.prefix, self.log = prefix, log

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.log({f"{self.prefix}.{k}": float(v) for k, v in (logs or {}).items()}, epoch + 1)
