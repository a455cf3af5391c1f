"""Where a model's classes and a layer's activations are, found from the graph, never by name.

- `output_layers(model)`: the layers with weights whose units are the model's outputs,
  walking back from `model.outputs` through layers without weights (activations, dropout,
  pooling, merges) and per-channel ones (batch / layer normalisation, PReLU).
- `ends_in_softmax(model)`: whether the output is a probability vector (softmax) or logits.
- `activation_layer(model, layer)`: the layer whose output is `layer`'s units after their
  non-linearity (what activation-based criteria look at).

Functional graphs of tf-keras and Keras 3 (`_keras_history`, `_inbound_nodes`,
`_outbound_nodes`; a node's layer and inputs are `layer` / `keras_inputs` in tf-keras,
`operation` / `input_tensors` in Keras 3); nothing here imports TensorFlow.
"""

from __future__ import annotations

# Layers with weights that act on each channel apart: a unit passes through them unchanged.
PER_CHANNEL = ("BatchNormalization", "LayerNormalization", "GroupNormalization", "PReLU")
# Identity at inference: walked through when looking for the softmax.
INFERENCE_IDENTITY = (
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianDropout",
    "GaussianNoise",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
)
ACTIVATION_LAYERS = ("ReLU", "LeakyReLU", "ELU", "PReLU", "ThresholdedReLU", "Softmax")


def _kind(layer) -> str:
    return type(layer).__name__


def _producer(tensor):
    """(layer, node index) that produced a symbolic tensor (KerasHistory: tf-keras names its
    first field `layer`, Keras 3 `operation`)."""
    history = tensor._keras_history
    return history[0], history[1]


def _inputs(layer, node_index: int) -> list:
    node = layer._inbound_nodes[node_index]
    found = node.keras_inputs if hasattr(node, "keras_inputs") else node.input_tensors
    return list(found)


def _node_layer(node):
    """The layer (Keras 3: operation) a node is a call of."""
    found = getattr(node, "operation", None)
    return found if found is not None else node.layer


def _in_model(model, layer, node) -> bool:
    """Whether `node` (a call of `layer`) is part of `model`'s graph."""
    index = next((i for i, n in enumerate(layer._inbound_nodes) if n is node), None)
    keys = getattr(model, "_network_nodes", None)  # tf-keras: "<layer name>_ib-<index>"
    if keys is not None:
        return f"{layer.name}_ib-{index}" in keys
    graph = getattr(model, "_functional", None) or model  # a Keras 3 Sequential's graph
    keys = getattr(graph, "_nodes", None)  # Keras 3: "<id(layer)>_ib-<index>"
    return keys is None or f"{id(layer)}_ib-{index}" in keys


def consumers(model, layer) -> list:
    """The layers of `model` that take `layer`'s output as an input (one per call)."""
    found = []
    for node in layer._outbound_nodes:
        consumer = _node_layer(node)
        if _in_model(model, consumer, node):
            found.append(consumer)
    return found


def _activation_name(activation) -> str:
    """'relu', 'softmax', 'linear', ... for a Keras activation function (or layer)."""
    if activation is None:
        return "linear"
    name = getattr(activation, "__name__", None)
    return str(name if name is not None else _kind(activation)).lower()


def has_nonlinear_activation(layer) -> bool:
    """A layer with an `activation` other than linear (Dense(relu), Activation('tanh'))."""
    return hasattr(layer, "activation") and _activation_name(layer.activation) != "linear"


def output_layers(model) -> list:
    """The layers with weights whose units are the model's outputs, in the model's order."""
    found, seen = set(), set()
    stack = [_producer(tensor) for tensor in model.outputs]
    while stack:
        layer, node_index = stack.pop()
        if (id(layer), node_index) in seen:
            continue
        seen.add((id(layer), node_index))
        if getattr(layer, "weights", None) and _kind(layer) not in PER_CHANNEL:
            found.add(id(layer))
            continue
        stack += [_producer(t) for t in _inputs(layer, node_index)]
    return [layer for layer in model.layers if id(layer) in found]


def _is_softmax(layer) -> bool:
    if _kind(layer) == "Softmax":
        return True
    if hasattr(layer, "activation"):
        return _activation_name(layer.activation) == "softmax"
    return str(getattr(layer, "symbol", "")).endswith("softmax")  # tf.nn.softmax(x) in a graph


def ends_in_softmax(model) -> bool:
    """True when the (first) output is a softmax: probabilities; False: logits."""
    layer, node_index = _producer(model.outputs[0])
    while True:
        if _is_softmax(layer):
            return True
        identity = _kind(layer) in INFERENCE_IDENTITY or (
            _kind(layer) == "Activation" and not has_nonlinear_activation(layer)
        )
        inputs = _inputs(layer, node_index) if identity else []
        if len(inputs) != 1:
            return False
        layer, node_index = _producer(inputs[0])


def activation_layer(model, layer):
    """The layer whose output is `layer`'s units after their non-linearity.

    `layer` itself when it has a non-linear `activation`; else the first activation layer
    (Activation, ReLU, LeakyReLU, ...) it feeds through a chain of batch normalisation /
    dropout layers, each the only consumer of the one before; else `layer`.
    """
    if has_nonlinear_activation(layer):
        return layer
    current = layer
    while True:
        following = consumers(model, current)
        if len(following) != 1:
            return layer
        after = following[0]
        kind = _kind(after)
        if kind in ACTIVATION_LAYERS or (kind == "Activation" and has_nonlinear_activation(after)):
            return after
        if kind not in ("BatchNormalization", *INFERENCE_IDENTITY):
            return layer
        current = after
