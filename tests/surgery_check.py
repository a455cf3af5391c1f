"""The equivalence check of the surgery tests, written independently of avlsi.surgery.

`masked_copy(model, removed)` copies `model` and zeroes the input weights through which the
removed output channels of each producer reach the layers that consume them (following the
graph through every layer that keeps channels apart, offsets across Concatenate, rows after
Flatten). The pruned model must compute what that copy computes.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

KERNEL_IN_AXIS = {  # the axis of a consumer's first weight that indexes its input channels
    "Conv1D": -2, "Conv2D": -2, "Conv3D": -2, "Dense": 0,
    "SeparableConv1D": -2, "SeparableConv2D": -2,  # depthwise kernel: no depthwise bias
    "Conv1DTranspose": -1, "Conv2DTranspose": -1, "Conv3DTranspose": -1,
}  # fmt: skip


def randomized(model, seed: int = 0):
    """`model` with biases, BatchNorm statistics and PReLU slopes drawn at random, so that
    a channel cut in the wrong place changes the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for w in layer.weights:
            name, value = w.name.split("/")[-1], w.numpy()
            if name.startswith(("gamma", "moving_variance")):
                value = rng.uniform(0.5, 1.5, value.shape)
            elif name.startswith(("beta", "bias", "moving_mean")):
                value = rng.normal(0.0, 0.2, value.shape)
            elif name.startswith("alpha"):
                value = rng.uniform(0.0, 0.5, value.shape)
            values.append(value.astype(np.float32))
        if values:
            layer.set_weights(values)
    return model


def masked_copy(model, removed: dict[str, list[int]]):
    """A copy of `model` whose consumers ignore the `removed` channels of each producer."""
    copy = tf.keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for name, channels in removed.items():
        _silence(copy.get_layer(name), np.asarray(sorted(channels), dtype=int))
    return copy


def _silence(layer, channels: np.ndarray) -> None:
    """Zero the weights through which output `channels` of `layer` reach its consumers."""
    for node in layer.outbound_nodes:
        after = node.outbound_layer
        kind = type(after).__name__
        if kind in KERNEL_IN_AXIS:
            weights = after.get_weights()
            index = [slice(None)] * weights[0].ndim
            index[KERNEL_IN_AXIS[kind]] = channels
            weights[0][tuple(index)] = 0.0
            after.set_weights(weights)
        elif kind == "Concatenate":
            inputs = node.inbound_layers if isinstance(node.inbound_layers, list) else []
            offset = sum(inp.output_shape[-1] for inp in inputs[: inputs.index(layer)])
            _silence(after, channels + offset)
        elif kind == "Flatten":
            width = layer.output_shape[-1]
            cells = int(np.prod(layer.output_shape[1:-1]))
            _silence(after, np.asarray([c + width * i for i in range(cells) for c in channels]))
        else:  # keeps channels apart: BatchNorm, activations, depthwise, pooling, merges
            _silence(after, channels)


def relative_error(model, pruned, removed: dict[str, list[int]], samples=4, seed=0) -> float:
    """max |pruned - masked copy| / max |masked copy| on random inputs."""
    rng = np.random.default_rng(seed)
    shape = (samples, *(7 if d is None else d for d in model.input_shape[1:]))
    x = rng.normal(size=shape).astype(np.float32)
    expected = np.asarray(masked_copy(model, removed)(x, training=False))
    got = np.asarray(pruned(x, training=False))
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def coupled_producers(model) -> list[list[str]]:
    """Producers whose channels meet in an element-wise merge, grouped (union-find); the
    groups whose channels reach a model output or a layer the walk does not know are left
    out. Producers are the layers with a kernel of KERNEL_IN_AXIS (all but the depthwise)."""
    group = {layer.name: layer.name for layer in model.layers if _producer(layer)}

    def root(name):
        while group[name] != name:
            name = group[name]
        return name

    blocked = set()
    outputs = {t._keras_history[0].name for t in model.outputs}
    for name in list(group):
        for layer in [model.get_layer(name), *_reached(model.get_layer(name))]:
            if layer.name in outputs or type(layer).__name__ in ("Reshape", "Permute", "Lambda"):
                blocked.add(name)
            if type(layer).__name__ in ("Add", "Subtract", "Multiply", "Average", "Maximum"):
                for other in group:
                    if layer in _reached(model.get_layer(other)):
                        group[root(other)] = root(name)
    groups: dict[str, list[str]] = {}
    for name in group:
        groups.setdefault(root(name), []).append(name)
    return [g for g in groups.values() if not blocked & set(g)]


def _producer(layer) -> bool:
    return type(layer).__name__ in KERNEL_IN_AXIS and getattr(layer, "groups", 1) == 1


def _reached(layer) -> list:
    """Layers that `layer`'s output channels pass through before a consumer takes them."""
    seen = []
    for node in layer.outbound_nodes:
        after = node.outbound_layer
        if type(after).__name__ in KERNEL_IN_AXIS:
            continue
        seen += [after, *_reached(after)]
    return seen
