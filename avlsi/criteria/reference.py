"""Slow reference implementations, kept to check the fast criteria against (and time them).

`grad_activation_per_unit` is the seed's `grad_activation_rank` scoring: for each unit, one
forward and one backward pass over the whole sample batch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from avlsi.criteria import model_input, unit_output_layer
from avlsi.kerasapi import keras_of


def grad_activation_per_unit(model, layer, x: np.ndarray) -> np.ndarray:
    """sum(|d mean(a[..., i]) / dx|) for each unit i; the mean over samples and positions."""
    probe = keras_of(model).Model(model_input(model), unit_output_layer(model, layer).output)
    x = tf.constant(np.asarray(x, dtype=np.float32))

    @tf.function
    def input_gradient(images, unit):
        with tf.GradientTape() as tape:
            tape.watch(images)
            mean = tf.reduce_mean(probe(images, training=False)[..., unit])
        return tape.gradient(mean, images)

    units = int(probe.output.shape[-1])
    grads = (input_gradient(x, tf.constant(i)).numpy() for i in range(units))
    return np.array([np.abs(g).sum(dtype=np.float64) for g in grads])
