"""Gradient of activation: how strongly the input image drives a unit.

Seed: `grad_activation_rank`. For unit i, m_i is the mean of its post-ReLU output over the
samples (and spatial positions, for a filter); the score is the sum over the whole sample
batch of |dm_i / dx|. The seed ran one forward and one backward pass per unit; here one
forward pass serves all units, and their backward passes run as one vectorised batch
(`tf.vectorized_map`). The scores are the same (`avlsi.criteria.reference` holds the
seed's method, to check and time against).

Fast path (a Conv2D / Dense layer with a linear activation, followed only by element-wise
layers such as BatchNormalization and ReLU up to its unit output): the step through the
layer itself is done per unit in closed form, a depthwise transposed convolution that
touches only unit i's own filter, instead of a full backward pass through the layer with
all but one output channel zero; only the layers below it are back-propagated, vectorised
over units. Any other layer falls back to `GradientTape.batch_jacobian` of the whole part
of the model below its unit output.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from avlsi.criteria import model_input, spatial_mean, unit_output_layer
from avlsi.kerasapi import keras_of

# Samples per vectorised batch are capped so that one batched gradient tensor
# (samples x units x largest activation) holds at most this many floats (256 MB).
MAX_FLOATS = 2**26
ELEMENTWISE = {
    "InputLayer",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "BatchNormalization",
    "Dropout",
}


def _floats(model) -> int:
    """The largest activation of one sample anywhere in `model`."""
    outputs = [t for lyr in model.layers for t in tf.nest.flatten(lyr.output)]
    return max(int(np.prod(t.shape[1:])) for t in outputs)


def _unit_cotangents(layer, slopes, below):
    """d(unit i's spatial mean)/d(layer input), for every unit i: (units, N, *input shape).

    `slopes` is d(unit output)/d(layer output) divided by the number of positions.
    """
    kernel = layer.kernel
    if type(layer).__name__ == "Dense":
        return tf.einsum("nu,du->und", slopes, kernel)
    kh, kw, channels, units = kernel.shape
    # Input channel i*C + c of a depthwise convolution carries unit i's slopes to input
    # channel c through kernel[..., c, i]: one transposed conv per (unit, channel) pair.
    depthwise = tf.reshape(tf.transpose(kernel, [0, 1, 3, 2]), [kh, kw, units * channels, 1])
    shape = tf.shape(below)
    grads = tf.nn.depthwise_conv2d_backprop_input(
        tf.stack([shape[0], shape[1], shape[2], units * channels]),
        depthwise,
        tf.repeat(slopes, channels, axis=-1),
        [1, *layer.strides, 1],
        layer.padding.upper(),
    )
    grads = tf.reshape(grads, [shape[0], shape[1], shape[2], units, channels])
    return tf.transpose(grads, [3, 0, 1, 2, 4])


def _fast_path(model, layer):
    """(sums function, floats per sample and unit) for the closed-form path, else None."""
    out = unit_output_layer(model, layer).output
    if type(layer).__name__ not in ("Conv2D", "Dense") or layer.activation.__name__ != "linear":
        return None
    rank = 2 if type(layer).__name__ == "Dense" else 4
    if len(layer.input.shape) != rank or getattr(layer, "groups", 1) != 1:
        return None
    if tuple(getattr(layer, "dilation_rate", (1, 1))) != (1, 1):  # (gave wrong values)
        return None
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    keras = keras_of(model)
    tail = keras.Model(layer.output, out) if out is not layer.output else None
    if tail is not None and any(
        type(lyr).__name__ not in ELEMENTWISE or "softmax" in str(getattr(lyr, "activation", ""))
        for lyr in tail.layers
    ):
        return None
    first = layer.input is model.inputs[0]
    below = None if first else keras.Model(model_input(model), layer.input)

    def sums(x):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            t = x if first else below(x, training=False)
            z = layer(t)
            a = tail(z, training=False) if tail is not None else z
        positions = tf.cast(tf.reduce_prod(tf.shape(a)[1:-1]), a.dtype)
        slopes = tape.gradient(a, z, output_gradients=tf.ones_like(a)) / positions
        cotangents = _unit_cotangents(layer, slopes, t)
        if first:
            grads = cotangents
        else:
            grads = tf.vectorized_map(lambda c: tape.gradient(t, x, output_gradients=c), cotangents)
        return tf.reduce_sum(tf.reshape(tf.abs(grads), [tf.shape(grads)[0], -1]), axis=1)

    return sums, _floats(below) if below else int(np.prod(layer.input.shape[1:]))


def _jacobian_path(model, layer):
    probe = keras_of(model).Model(model_input(model), unit_output_layer(model, layer).output)

    def sums(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            means = spatial_mean(probe(x, training=False))  # (samples, units)
        jac = tape.batch_jacobian(means, x)  # (samples, units, *input shape)
        jac = tf.reshape(tf.abs(jac), [tf.shape(jac)[0], tf.shape(jac)[1], -1])
        return tf.reduce_sum(jac, axis=[0, 2])

    return sums, _floats(probe)


def input_gradient_sums(model, layer, x: np.ndarray, batch_size: int) -> np.ndarray:
    """For each unit: the sum over x's samples and pixels of |d(spatial mean of a_n)/dx_n|."""
    sums, per_sample = _fast_path(model, layer) or _jacobian_path(model, layer)
    units = int(layer.output.shape[-1])
    chunk = max(1, min(batch_size, MAX_FLOATS // (units * per_sample)))
    x = np.asarray(x, dtype=np.float32)
    run = tf.function(sums, input_signature=[tf.TensorSpec([None, *x.shape[1:]], tf.float32)])
    total = np.zeros(units)
    for start in range(0, len(x), chunk):
        total += run(tf.constant(x[start : start + chunk])).numpy()
    return total


def score(model, layers, context) -> dict[str, np.ndarray]:
    # The seed differentiated the mean over the whole batch: hence the division by N.
    n = len(context.x)
    return {
        layer.name: input_gradient_sums(model, layer, context.x, context.batch_size) / n
        for layer in layers
    }
