"""Conv2D blocks, then Dense layers, then a softmax output: the seed's CNN, DNN and FER CNN."""

from __future__ import annotations

from avlsi.kerasapi import keras_module


def build(input_shape: tuple[int, ...], num_classes: int, cfg):
    """conv0..convN (ReLU, optional BN, 2x2 max-pool every `pool_every`), dense0..denseM, output;
    in tf-keras, or in Keras 3 with `cfg.keras=3`."""
    keras = keras_module(int(cfg.get("keras", 2)))
    layers = keras.layers
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = inputs
    if cfg.conv_filters and len(input_shape) != 3:
        raise ValueError(f"conv layers need (height, width, channels) input, got {input_shape}")
    for i, filters in enumerate(cfg.conv_filters):
        x = layers.Conv2D(filters, cfg.kernel_size, padding="same", name=f"conv{i}")(x)
        if cfg.batch_norm:
            x = layers.BatchNormalization(name=f"conv{i}_bn")(x)
        x = layers.Activation("relu", name=f"conv{i}_relu")(x)
        if cfg.pool_every and (i + 1) % cfg.pool_every == 0:
            x = layers.MaxPooling2D(2, name=f"pool{i // cfg.pool_every}")(x)
            if cfg.dropout:
                x = layers.Dropout(cfg.dropout, name=f"conv{i}_drop")(x)
    if len(x.shape) > 2:
        x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(cfg.dense_units):
        x = layers.Dense(units, name=f"dense{i}")(x)
        if cfg.batch_norm:
            x = layers.BatchNormalization(name=f"dense{i}_bn")(x)
        x = layers.Activation("relu", name=f"dense{i}_relu")(x)
        if cfg.dropout:
            x = layers.Dropout(cfg.dropout, name=f"dense{i}_drop")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs, name=cfg.name)
