"""Caffe's LeNet-5 (examples/mnist/lenet_train_test.prototxt; Han et al. 2015's Table 3).

conv1 (20 5x5, valid) -> max-pool 2x2 -> conv2 (50 5x5) -> max-pool -> ip1 (500, ReLU) ->
ip2 (softmax): 431,080 parameters on MNIST. As in Caffe, the convolutions have no
non-linearity of their own (the max-pools follow them directly); names follow the prototxt.
"""

from __future__ import annotations

import tensorflow as tf

import avlsi  # noqa: F401

layers = tf.keras.layers


def build(input_shape: tuple[int, ...], num_classes: int, cfg) -> tf.keras.Model:
    """`cfg.conv_filters` ([20, 50]) of `cfg.kernel_size` (5), each then a 2x2 max-pool;
    `cfg.dense_units` ([500]) ReLU layers; the softmax output."""
    if len(input_shape) != 3:
        raise ValueError(f"LeNet-5 needs (height, width, channels) input, got {input_shape}")
    inputs = tf.keras.Input(shape=tuple(input_shape), name="input")
    x = inputs
    for i, filters in enumerate(cfg.conv_filters, start=1):
        x = layers.Conv2D(filters, cfg.kernel_size, name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(cfg.dense_units, start=1):
        x = layers.Dense(units, activation="relu", name=f"ip{i}")(x)
    last = f"ip{len(cfg.dense_units) + 1}"
    outputs = layers.Dense(num_classes, activation="softmax", name=last)(x)
    return tf.keras.Model(inputs, outputs, name=cfg.name)
