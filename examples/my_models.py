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


def transfer(
    input_shape: tuple[int, ...],
    num_classes: int,
    backbone: str = "MobileNetV2",
    alpha: float = 0.35,
    frozen: bool = True,
) -> tf.keras.Model:
    """Transfer learning's shape, as Keras' guide builds it: a `keras.applications` backbone
    (no top, `weights=None` here: no download; load your own weights into it) nested as one
    layer and called with `training=False`, then a new head. AVLSI flattens the backbone into
    the graph before pruning; with `frozen`, pass `finetune.unfreeze=true` to let the pruned
    backbone recover.

        python run.py model=builder model._target_=examples.my_models.transfer \\
            dataset=synthetic dataset.shape=[32,32,3] criterion=l1 psize=0.3 \\
            finetune.unfreeze=true
    """
    base = getattr(tf.keras.applications, backbone)(
        input_shape=input_shape, include_top=False, weights=None, alpha=alpha
    )
    base.trainable = not frozen
    inputs = tf.keras.Input(shape=input_shape)
    x = base(inputs, training=False)  # its batch normalisation stays in inference mode
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    return tf.keras.Model(inputs, layers.Dense(num_classes)(x), name="transfer")
