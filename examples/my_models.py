"""An example of your own model builder for `model=builder`.

    python run.py model=builder model._target_=examples.my_models.residual_cnn \\
        model.width=16 model.depth=2 dataset=synthetic dataset.shape=[32,32,3]

AVLSI calls `residual_cnn(input_shape=..., num_classes=..., width=16, depth=2)`: every key
under `model.` but `name` becomes a keyword argument, and `input_shape` / `num_classes`
come from the dataset. Any importable `pkg.module.fn` works the same way (run from the
folder that holds `pkg`, or put it on PYTHONPATH). Layer names are optional: AVLSI finds the
output layer and the activations from the graph; names only let you pick a layer with
`criterion.scope=layer criterion.layer=NAME`.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf-keras, as AVLSI uses

import tensorflow as tf  # noqa: E402

layers = tf.keras.layers


def residual_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: int = 16,
    depth: int = 2,
    dropout: float = 0.0,
) -> tf.keras.Model:
    """A conv stem, `depth` residual blocks of two 3x3 convs (`width` filters) with identity
    shortcuts, global average pooling and a Dense layer that outputs logits (no softmax)."""
    if width < 1 or depth < 0:
        raise ValueError(f"width must be >= 1 and depth >= 0, got width={width}, depth={depth}")
    inputs = tf.keras.Input(shape=input_shape)
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    for block in range(depth):
        y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_a")(x)
        y = layers.BatchNormalization()(y)
        y = layers.Activation("relu")(y)
        y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_b")(y)
        y = layers.BatchNormalization()(y)
        x = layers.Activation("relu")(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes)(x)  # logits: AVLSI trains with from_logits=True
    return tf.keras.Model(inputs, outputs, name="residual_cnn")
