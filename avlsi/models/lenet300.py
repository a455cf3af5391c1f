"""LeNet-300-100 (LeCun et al. 1998; Han et al. 2015's Table 2): the flattened image,
Dense 300 and 100 (ReLU), a softmax output.

Layer names follow Caffe's prototxt (ip1, ip2, ip3), as Han et al.'s per-layer tables do.
"""

from __future__ import annotations

import tensorflow as tf

import avlsi  # noqa: F401

layers = tf.keras.layers


def build(input_shape: tuple[int, ...], num_classes: int, cfg) -> tf.keras.Model:
    """Flatten, then one ReLU Dense layer per `cfg.dense_units` ([300, 100]), softmax output."""
    inputs = tf.keras.Input(shape=tuple(input_shape), name="input")
    x = layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
    for i, units in enumerate(cfg.dense_units, start=1):
        x = layers.Dense(units, activation="relu", name=f"ip{i}")(x)
    last = f"ip{len(cfg.dense_units) + 1}"
    outputs = layers.Dense(num_classes, activation="softmax", name=last)(x)
    return tf.keras.Model(inputs, outputs, name=cfg.name)
