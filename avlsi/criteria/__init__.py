"""Pruning criteria: each scores the units (filters / neurons) of the layers it is given.

A scorer is a function `(model, layers, context) -> {layer name: scores}` with one float
per output unit; the lowest scores are removed first. Its YAML file under
`conf/criterion/` names it in `_target_` and says which scopes and layer types it takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf  # (importing avlsi.criteria ran avlsi/__init__: tf-keras is set up)
from hydra.utils import get_method

from avlsi.kerasapi import keras_of
from avlsi.models import activation_layer, ends_in_softmax


@dataclass
class ScoringContext:
    """What a criterion may look at besides the model: sample data and the run's seed."""

    x: np.ndarray  # sample inputs from the training set
    y: np.ndarray  # their labels
    seed: int
    batch_size: int = 128


Scorer = Callable[..., dict[str, np.ndarray]]


def get_scorer(cfg) -> Scorer:
    """The scoring function that `criterion._target_` names."""
    return get_method(cfg._target_)


def unit_output_layer(model, layer):
    """The layer whose output is `layer`'s activation, found by following the graph: `layer`
    itself if it has a non-linear activation, else the activation / ReLU-type layer it feeds
    through a single-consumer chain of BatchNormalization / Dropout, else `layer`."""
    return activation_layer(model, layer)


def model_input(model):
    """The model's input tensor (the list of them for several): a probe built on it takes
    what the model takes (Keras 3 warns when a one-input probe built on a list gets a tensor)."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


# Shared helpers of the data-driven criteria (mean_activation, apoz, gradient, taylor).


def spatial_mean(values):
    """Mean over every axis but the first (samples) and the last (units): (N, ..., U) -> (N, U)."""
    axes = list(range(1, len(values.shape) - 1))
    return tf.reduce_mean(values, axis=axes) if axes else values


def spatial_sum(values):
    """Sum over every axis but the first (samples) and the last (units): (N, ..., U) -> (N, U)."""
    axes = list(range(1, len(values.shape) - 1))
    return tf.reduce_sum(values, axis=axes) if axes else values


def sample_means(
    model, layers, context: ScoringContext, per_sample: Callable, *, gradients: bool = False
) -> dict[str, np.ndarray]:
    """Mean over the samples `context.x` of `per_sample(a, g)` for every layer's units.

    One forward pass (and, with `gradients`, one backward pass) per batch of
    `context.batch_size` serves all `layers`. `a` is a batch of the unit outputs of a layer
    (its post-activation, see `unit_output_layer`), shape (N, ..., units); `g` is the
    gradient of each sample's own cross-entropy loss with respect to `a` (the model's
    output is read as class probabilities if it ends in softmax, else as logits; the batch's
    losses are summed, not averaged, so a sample's gradient does not depend on the batch
    it falls in), else None. `per_sample` returns (N, units).
    """
    outputs = [unit_output_layer(model, layer).output for layer in layers]
    probe = keras_of(model).Model(model_input(model), [*outputs, model.outputs[0]])
    x = np.asarray(context.x, dtype=np.float32)
    totals = [np.zeros(int(out.shape[-1])) for out in outputs]
    from_logits = not ends_in_softmax(model)
    for start in range(0, len(x), context.batch_size):
        stop = start + context.batch_size
        batch_y = context.y[start:stop]
        acts, grads = _outputs_and_gradients(probe, x[start:stop], batch_y, gradients, from_logits)
        for total, act, grad in zip(totals, acts, grads, strict=True):
            total += tf.reduce_sum(per_sample(act, grad), axis=0).numpy()
    return {layer.name: total / len(x) for layer, total in zip(layers, totals, strict=True)}


def _outputs_and_gradients(probe, x, y, gradients: bool, from_logits: bool = False):
    """The probe's unit outputs for x and, if asked, d(sum of per-sample losses)/d(output)
    (the model's output read as logits with `from_logits`, else as probabilities)."""
    if not gradients:
        *acts, _ = probe(x, training=False)
        return acts, [None] * len(acts)
    with tf.GradientTape() as tape:
        *acts, out = probe(x, training=False)
        losses = tf.keras.losses.sparse_categorical_crossentropy(y, out, from_logits=from_logits)
        loss = tf.reduce_sum(losses)
    return acts, tape.gradient(loss, acts)
