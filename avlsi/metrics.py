"""Size and cost of a model: parameters, non-zero parameters, multiply-adds.

Multiply-adds (MACs) of one forward pass for one input, per call of every layer with weights;
the conventions, checked against TensorFlow's profiler in tests/test_metrics.py:

- Conv1D/2D/3D: output positions x kernel size (`prod(kernel.shape)`, whose input-channel
  axis is already `cin / groups`: groups divide once). Dilation changes nothing per output.
- DepthwiseConv1D/2D: output positions x kh x kw x cin x depth_multiplier.
- SeparableConv1D/2D: the depthwise part plus the pointwise part (1x1, cin x dm -> cout), both
  at the output positions.
- Conv1D/2D/3DTranspose: INPUT positions x kernel size: every input value is multiplied by the
  whole kernel (kh x kw x cout per input channel) and scattered into the output, including the
  products that `padding="same"` later crops. The profiler's `Conv2DBackpropInput` formula
  (output positions / stride product x kernel size) gives the same number for `same` padding
  and a larger one for `valid` padding with kernel > stride.
- Dense: cin x cout per position of an N-d input (a (batch, t, cin) input costs t x cin x cout).
- BatchNormalization, LayerNormalization, GroupNormalization, Normalization, PReLU and
  keras.applications' ConvNeXt LayerScale: one multiply-add per output element (the affine
  form x * a + b used at inference; the statistics of Layer/GroupNormalization are not
  counted). Folding a BatchNormalization into the preceding conv would remove it; the profiler
  counts nothing for `FusedBatchNormV3`, so the comparison leaves these out.
- Embedding: 0 (a lookup). Bias adds are not counted (the profiler counts `BiasAdd` apart,
  one flop per output element); nor are activations, pooling or merges (no weights).
- A nested model is counted layer by layer at the shapes of each call; a layer called several
  times counts once per call. Any other layer with weights (LSTM, EinsumDense, a custom layer,
  a subclassed model) is named in a warning and counts 0; `macs_coverage` is the fraction of
  the model's parameters that sit in counted layers, so 1.0 means every weight was counted.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import numpy as np

from avlsi.kerasapi import is_keras3, keras_of, keras_version

log = logging.getLogger(__name__)


def count_params(model) -> int:
    """All weights, trainable or not (what `model.count_params()` reports)."""
    return int(model.count_params())


def count_nonzero_params(model) -> int:
    """Weights that are not exactly zero: falls when single weights are zeroed."""
    return int(sum(np.count_nonzero(w) for w in model.get_weights()))


def _size(shape) -> int:
    """Elements of a shape; an unknown (None) size counts as 1: per position."""
    return int(np.prod([int(d or 1) for d in shape], dtype=np.int64))


def _spatial(layer, shape) -> int:
    """Positions of a conv's input or output shape (batch and channel axes left out)."""
    dims = shape[2:] if getattr(layer, "data_format", None) == "channels_first" else shape[1:-1]
    return _size(dims)


def _separable(layer, i, o) -> int:
    pointwise = _size(layer.pointwise_kernel.shape)
    return _spatial(layer, o) * (_size(layer.depthwise_kernel.shape) + pointwise)


def _depthwise(layer, i, o) -> int:
    kernel = layer.kernel if is_keras3(layer) else layer.depthwise_kernel  # Keras 3's name
    return _spatial(layer, o) * _size(kernel.shape)


def _transposed(layer, i, o) -> int:
    return _spatial(layer, i) * _size(layer.kernel.shape)


def _conv(layer, i, o) -> int:
    return _spatial(layer, o) * _size(layer.kernel.shape)


def _dense(layer, i, o) -> int:
    return _size(i[1:-1]) * _size(layer.kernel.shape)


def _per_element(layer, i, o) -> int:
    return _size(o[1:])


def _lookup(layer, i, o) -> int:
    return 0


def _layer_kinds(version: int = 2):
    """(layer classes, macs(layer, input shape, output shape)), most specific first, for the
    layers of tf-keras (version 2) or Keras 3."""
    from avlsi.kerasapi import keras_module
    from avlsi.models import application_layers

    L = keras_module(version).layers
    affine = [L.BatchNormalization, L.LayerNormalization, L.GroupNormalization]
    affine += [L.Normalization, L.PReLU]
    # keras.applications' ConvNeXt scales every channel by a learned gamma (LayerScale)
    affine += list(application_layers(version).values())
    return [
        ((L.SeparableConv1D, L.SeparableConv2D), _separable),
        ((L.DepthwiseConv1D, L.DepthwiseConv2D), _depthwise),
        ((L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose), _transposed),
        ((L.Conv1D, L.Conv2D, L.Conv3D), _conv),
        (L.Dense, _dense),
        (tuple(affine), _per_element),
        (L.Embedding, _lookup),
    ]


@functools.cache
def _kinds(version: int = 2):
    return _layer_kinds(version)


def call_macs(layer, input_shape, output_shape) -> int:
    """Multiply-adds of one call of `layer` (0 for a kind the counter does not know)."""
    kinds = _kinds(keras_version(layer))
    rule = next((macs for classes, macs in kinds if isinstance(layer, classes)), None)
    return int(rule(layer, tuple(input_shape), tuple(output_shape))) if rule else 0


@dataclass
class MacsCount:
    """Multiply-adds of a model: in total, per layer (all its calls), and what was not counted.

    `by_layer` and `uncounted` are keyed by layer name, `outer::inner` inside nested models;
    `uncounted` maps each layer with weights that the counter does not know to its parameters.
    """

    total: int = 0
    params: int = 0
    by_layer: dict[str, int] = field(default_factory=dict)
    uncounted: dict[str, int] = field(default_factory=dict)

    @property
    def coverage(self) -> float:
        """Fraction of the parameters in counted layers (1.0 for a model without weights)."""
        if not self.params:
            return 1.0
        return 1.0 - sum(self.uncounted.values()) / self.params


def _first(shapes):
    """The single shape of a node's input or output (the first of several)."""
    if isinstance(shapes, list | tuple) and shapes and not isinstance(shapes[0], int | None):
        return tuple(shapes[0])
    return tuple(shapes)


def _calls(model):
    """(layer, input shape, output shape) for every call of a layer inside `model`'s graph.

    tf-keras keys the graph's nodes `<layer name>_ib-<index>` in `model._network_nodes` and
    gives each node's shapes; Keras 3 keys them `<id(layer)>_ib-<index>` in `_nodes` (of a
    Sequential's `_functional`) and its nodes hold the tensors, whose shapes are read."""
    if is_keras3(model):
        graph = getattr(model, "_functional", None) or model
        for layer in model.layers:
            for index, node in enumerate(layer._inbound_nodes):
                if f"{id(layer)}_ib-{index}" in graph._nodes:
                    outputs = node.output_tensors
                    inputs = node.input_tensors or outputs  # an InputLayer has none
                    yield layer, tuple(inputs[0].shape), tuple(outputs[0].shape)
        return
    from tf_keras.src.engine.functional import _make_node_key

    for layer in model.layers:
        for index, node in enumerate(layer._inbound_nodes):
            if _make_node_key(layer.name, index) in model._network_nodes:
                yield layer, _first(node.input_shapes), _first(node.output_shapes)


def _at_shape(inner, shape):
    """`inner`, or a copy of it built for `shape` when its own graph leaves sizes undefined."""
    from avlsi.models import is_graph_model

    if not is_graph_model(inner) or len(inner.inputs) != 1:
        return inner
    if None not in tuple(inner.inputs[0].shape)[1:] or None in shape[1:]:
        return inner
    keras = keras_of(inner)
    return keras.models.clone_model(inner, input_tensors=keras.Input(batch_shape=shape))


def _is_model(layer) -> bool:
    return isinstance(layer, keras_of(layer).Model)


def _count(model, kinds, out: MacsCount, prefix: str, seen: set[int]) -> None:
    from avlsi.models import is_graph_model

    if not is_graph_model(model):
        out.uncounted[prefix.removesuffix("::") or model.name] = model.count_params()
        return
    for layer, in_shape, out_shape in _calls(model):
        name = prefix + layer.name
        first_visit = id(layer) not in seen
        seen.add(id(layer))
        if _is_model(layer):
            inner = MacsCount()
            _count(_at_shape(layer, in_shape), kinds, inner, name + "::", set() | seen)
            out.total += inner.total
            for key, value in inner.by_layer.items():
                out.by_layer[key] = out.by_layer.get(key, 0) + value
            if first_visit:
                out.uncounted.update(inner.uncounted)
            continue
        if not layer.weights:
            continue
        rule = next((macs for classes, macs in kinds if isinstance(layer, classes)), None)
        if rule is None:
            if first_visit:
                out.uncounted[name] = layer.count_params()
            continue
        macs = int(rule(layer, in_shape, out_shape))
        out.total += macs
        out.by_layer[name] = out.by_layer.get(name, 0) + macs


def macs_report(model) -> MacsCount:
    """Count `model`'s multiply-adds (see the module's conventions); warn about what is not."""
    out = MacsCount(params=count_params(model))
    _count(model, _kinds(keras_version(model)), out, "", set())
    for name, params in out.uncounted.items():
        log.warning(
            "multiply-adds: layer '%s' (%s parameters) is of a kind the counter does not know; "
            "it counts 0 and lowers macs_coverage",
            name,
            f"{params:,}",
        )
    return out


def count_macs(model) -> int:
    """Multiply-adds of one forward pass for one input (see the module's conventions)."""
    return macs_report(model).total


def macs_coverage(model) -> float:
    """Fraction of `model`'s parameters in layers whose multiply-adds are counted."""
    return macs_report(model).coverage


def size_metrics(model, prefix: str) -> dict[str, float]:
    """`{prefix}.params`, `.nonzero_params`, `.macs` and `.macs_coverage` of a model."""
    macs = macs_report(model)
    return {
        f"{prefix}.params": count_params(model),
        f"{prefix}.nonzero_params": count_nonzero_params(model),
        f"{prefix}.macs": macs.total,
        f"{prefix}.macs_coverage": macs.coverage,
    }


def relative_metrics(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """What a pruned stage kept of the baseline, as metrics the MLflow chart view can plot.

    `{prefix}.kept_params` / `.kept_macs`: fractions of the baseline's non-zero parameters /
    multiply-adds; `.compression`: baseline parameters / non-zero parameters kept (Blalock et
    al. 2020); `.accuracy_drop`: baseline minus this stage's test accuracy, percentage points.
    """
    base, this = "baseline.", f"{prefix}."
    out = {}
    if metrics.get(base + "nonzero_params") and this + "nonzero_params" in metrics:
        kept = metrics[this + "nonzero_params"]
        out[this + "kept_params"] = kept / metrics[base + "nonzero_params"]
        out[this + "compression"] = metrics[base + "params"] / max(1, kept)
    if metrics.get(base + "macs") and this + "macs" in metrics:
        out[this + "kept_macs"] = metrics[this + "macs"] / metrics[base + "macs"]
    if base + "test_accuracy" in metrics and this + "test_accuracy" in metrics:
        drop = metrics[base + "test_accuracy"] - metrics[this + "test_accuracy"]
        out[this + "accuracy_drop"] = 100.0 * drop
    return out
