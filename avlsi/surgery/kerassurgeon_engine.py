"""The kerassurgeon engine (tf-keras only): every use of kerassurgeon lives here; importing
this module makes it work on TF 2.21.

kerassurgeon 0.2.0 removes a layer's output units, then walks the graph with a boolean mask
of the surviving channels and cuts the matching input weights of the layers that consume
them. The adapter keeps that walk (one `Surgeon` pass, jobs in order of depth) and replaces
the parts that are wrong or missing on real Keras graphs:

- `len()` on KerasTensors in two helpers (TF >= 2.4; upstream issues #57/#61/#69).
- The per-layer rule (`_apply_delete_mask`) is AVLSI's own for every layer type named in
  `_CHANNELWISE`, `_MERGES` and the consumers below: masks are reduced to one channel vector
  and checked, so DepthwiseConv2D, SeparableConv, ConvTranspose, PReLU, ReLU and the merges
  work; merges whose inputs lose different channels raise (kerassurgeon builds that error
  but never raises it); softmax over the cut channel axis, grouped convs, depth multipliers
  and shared layers raise instead of giving a wrong model. Other layer types (Flatten,
  Reshape, RNNs, ...) keep kerassurgeon's rule.
- Producers (`_delete_channel_weights`): SeparableConv loses pointwise filters only and
  ConvTranspose its kernel's axis -2 (kerassurgeon cut axis -1 of every weight).
- Every rebuilt layer is called as its node called it (`_CalledAs`: constants of TF ops,
  keyword arguments), element-wise TF ops (TFOpLambda) pass the mask like merges, and the
  model is copied with `clone_model` (custom layers survive; `Model.from_config` loses them).
- Removed channels may not reach a model output unless that output layer was asked for.
Anything kerassurgeon or the adapter cannot do surfaces as `SurgeryError` naming the layer.
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np

import avlsi  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from avlsi.graph import MERGE
from avlsi.surgery import SurgeryError

_root_level = logging.getLogger().level
import tensorflow as tf  # noqa: E402
from kerassurgeon import Surgeon, utils  # noqa: E402
from kerassurgeon._utils import node as node_utils  # noqa: E402

# kerassurgeon calls logging.basicConfig(INFO) at import; undo its change of level.
logging.getLogger().setLevel(_root_level)
log = logging.getLogger(__name__)


def _single_element(x):
    """Return x[0] for a one-element list/tuple, anything else unchanged."""
    if isinstance(x, list | tuple) and len(x) == 1:
        return x[0]
    return x


def _get_one_tensor(x):
    """Return the only tensor of x (a tensor or a one-element list/tuple)."""
    if isinstance(x, list | tuple):
        if len(x) != 1:
            raise ValueError(f"expected one tensor, got {len(x)}")
        return x[0]
    return x


utils.single_element = _single_element
utils.get_one_tensor = _get_one_tensor

# Layers whose output channel c is a function of input channel c alone (same count).
_CHANNELWISE = {
    "Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Softmax",
    "Dropout", "AlphaDropout", "GaussianDropout", "GaussianNoise", "ActivityRegularization",
    "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "Identity",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D",
}  # fmt: skip
_MERGES = MERGE  # the element-wise merges avlsi.graph couples
# TensorFlow ops in a functional graph (TFOpLambda `symbol`) that act element by element.
ELEMENTWISE_OPS = {
    "__operators__.add", "math.add", "math.subtract", "math.multiply", "math.truediv",
    "math.divide", "math.negative", "math.maximum", "math.minimum", "math.abs",
    "math.square", "math.sqrt", "math.exp", "math.sigmoid", "math.tanh", "nn.relu",
    "nn.relu6", "nn.silu", "nn.swish", "nn.gelu", "nn.elu", "nn.leaky_relu",
}  # fmt: skip
_CONVS = {"Conv1D", "Conv2D", "Conv3D"}
_TRANSPOSED = {"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"}
_SEPARABLE = {"SeparableConv1D", "SeparableConv2D"}
_DEPTHWISE = {"DepthwiseConv1D", "DepthwiseConv2D"}
# Layers `delete_units` removes output units from.
PRODUCERS = _CONVS | _TRANSPOSED | _SEPARABLE | {"Dense"}
# Single-input layers cut by AVLSI's rules below; other layers keep kerassurgeon's.
_OWN_RULES = PRODUCERS | _CHANNELWISE | _DEPTHWISE | {"PReLU", "BatchNormalization"}


def _first_line(exc: BaseException) -> str:
    """An exception's message cut to its first non-empty line (errors are one line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _kind(layer) -> str:
    return f"{type(layer).__name__} '{layer.name}'"


def _known(shape) -> list[int]:
    """A shape without its batch dimension, unknown sizes as 1 (masks broadcast there)."""
    return [1 if d is None else int(d) for d in shape[1:]]


def _removed(keep: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(~keep)]


class _CalledAs:
    """Calls a layer the way `node` called the original: kerassurgeon passes only the input
    tensors, which loses constants and keyword arguments (`x + 3.0` as TFOpLambda,
    `training=False`, a tensor given by keyword)."""

    def __init__(self, node, layer):
        self.node, self.layer = node, layer

    def __call__(self, inputs):
        node = self.node
        if node._single_positional_tensor_passed:
            return self.layer(inputs)
        tensors = iter(inputs if len(node.keras_inputs) > 1 else [inputs])
        flat = list(node._flat_arguments)
        for _, index in node._keras_inputs_ids_and_indices:
            flat[index] = next(tensors)
        args, kwargs = tf.nest.pack_sequence_as(
            (node.call_args, list(node.call_kwargs.values())), flat
        )
        return self.layer(*args, **dict(zip(node.call_kwargs, kwargs, strict=True)))


def _copy(model):
    """A copy of `model` with its own layers and weights. kerassurgeon's `clean_copy` goes
    through `Model.from_config`, which cannot rebuild layers outside Keras' registry (e.g.
    ConvNeXt's LayerScale); `clone_model` builds each layer from its own class."""
    try:
        clone = tf.keras.models.clone_model(model)
    except Exception as exc:  # a layer whose config does not rebuild it
        why = _first_line(exc)
        raise SurgeryError(f"cannot copy model '{model.name}' layer by layer: {why}") from exc
    clone.set_weights(model.get_weights())
    return clone


class _Surgeon(Surgeon):
    """kerassurgeon's Surgeon with AVLSI's per-layer rules (see the module docstring)."""

    def __init__(self, model):
        super().__init__(_copy(model))
        self._copy = True  # jobs name layers of `model`: find them in the copy
        self.at = None  # the layer being worked on, named when something fails
        self.producers: set[str] = set()

    # -- the pass ---------------------------------------------------------------------
    def operate(self):
        """kerassurgeon's `operate`, recording the current layer and checking the outputs."""
        nodes = sorted(self.nodes, reverse=True, key=lambda n: utils.get_node_depth(self.model, n))
        for node in nodes:
            self.at = node.outbound_layer
            outputs, masks = self._rebuild_graph(self.model.inputs, node_utils.parent_nodes(node))
            self._mod_func_map[node](node, outputs, masks, **self._kwargs_map[node])
        output_nodes = []
        for output in self.model.outputs:
            layer, node_index, _ = output._keras_history
            output_nodes.append(layer.inbound_nodes[node_index])
        new_outputs, masks = self._rebuild_graph(self.model.inputs, output_nodes)
        for node, mask in zip(output_nodes, masks, strict=True):
            layer = node.outbound_layer
            if mask is not None and not mask.all() and layer.name not in self.producers:
                raise SurgeryError(
                    f"the removed units reach the model output {_kind(layer)}: the "
                    "model's outputs would change; leave the units that reach them alone"
                )
        new_model = tf.keras.Model(self.model.inputs, new_outputs, name=self.model.name)
        return _copy(new_model)

    def _make_delete_mask(self, layer, channel_indices):
        keep = np.ones(_known(layer.output_shape), dtype=bool)
        keep[..., channel_indices] = False
        return keep

    # -- consumers and pass-through layers ----------------------------------------------
    def _apply_delete_mask(self, node, inbound_masks):
        """The layer to call in place of `node`'s (called as `node` called it) and its
        output mask."""
        layer, mask = self._rule(node, inbound_masks)
        return _CalledAs(node, layer), mask

    def _rule(self, node, inbound_masks):
        """The layer with the weights of cut input channels removed, and its output mask."""
        layer = node.outbound_layer
        self.at = layer
        if all(mask is None for mask in inbound_masks):
            return layer, None
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise SurgeryError(f"{_kind(layer)} is channels_first, which AVLSI cannot prune")
        # one mask per tensor input, in the order of kerassurgeon's parent nodes
        input_shapes = [tuple(t.shape) for t in node.keras_inputs]
        masks = [
            np.ones(_known(shape), bool)
            if mask is None
            else np.broadcast_to(mask, _known(shape)).copy()
            for mask, shape in zip(inbound_masks, input_shapes, strict=True)
        ]
        if all(mask.all() for mask in masks):
            return layer, None
        output_shape = _known(utils.single_element(node.output_shapes))
        name = type(layer).__name__
        if name in _MERGES:
            return layer, self._merged(node, masks, output_shape)
        if name == "TFOpLambda" and layer.symbol in ELEMENTWISE_OPS:  # `x + 3.0`, `x * y`
            self._check_constants(node)
            return layer, self._merged(node, masks, output_shape)
        if name == "Concatenate":
            axis = layer.axis % len(input_shapes[0])
            return layer, np.concatenate(masks, axis=axis - 1)
        (mask,) = masks
        if name == "Flatten":
            return layer, mask.reshape(-1)
        if name == "Reshape":  # one that keeps the channel axis (squeeze-excite's (1, 1, C))
            return self._reshaped(layer, self._channels(layer, mask), output_shape)
        if name not in _OWN_RULES:
            try:
                return super()._apply_delete_mask(node, masks)  # kerassurgeon's rule
            except ValueError as exc:
                why = _first_line(exc)
                raise SurgeryError(
                    f"the cut channels reach {_kind(layer)}, which AVLSI cannot cut ({why})"
                ) from exc
        keep = self._channels(layer, mask)
        if len(layer.inbound_nodes) > 1 and layer.weights:
            raise SurgeryError(
                f"{_kind(layer)} is shared by {len(layer.inbound_nodes)} calls: "
                "AVLSI cannot cut the channels that reach it"
            )
        if name in _CHANNELWISE:
            self._check_softmax(layer, keep)
            return layer, np.broadcast_to(keep, output_shape).copy()
        if name in ("PReLU", "BatchNormalization", *_DEPTHWISE):
            return self._cut_channelwise_weights(layer, keep), np.broadcast_to(
                keep, output_shape
            ).copy()
        return self._cut_inputs(layer, keep), None

    @staticmethod
    def _reshaped(layer, keep: np.ndarray, output_shape):
        """A Reshape whose last axis is the channel axis, rebuilt for the kept channels."""
        target = list(layer.target_shape)
        if not target or target[-1] != len(keep):
            raise SurgeryError(
                f"Reshape {layer.name!r} moves the channel axis ({len(keep)} channels into "
                f"{tuple(target)}): AVLSI cannot cut the channels that reach it"
            )
        config = layer.get_config()
        config["target_shape"] = (*target[:-1], int(keep.sum()))
        return type(layer).from_config(config), np.broadcast_to(keep, output_shape).copy()

    def _channels(self, layer, mask: np.ndarray) -> np.ndarray:
        """The channel vector of a mask (last axis), checked to be the same at every position."""
        rows = mask.reshape(-1, mask.shape[-1])
        if not (rows == rows[0]).all():
            raise SurgeryError(
                f"the channels cut before {_kind(layer)} are not whole channels of its "
                "input (a Reshape / Permute upstream?): AVLSI cannot prune them"
            )
        return rows[0]

    def _merged(self, node, masks, output_shape):
        """Element-wise inputs must lose the same channels (one-channel inputs broadcast)."""
        layer = node.outbound_layer
        keeps = [self._channels(layer, mask) for mask in masks]
        wide = [keep for keep in keeps if len(keep) > 1 or not keep.all()]
        if any(not np.array_equal(wide[0], keep) for keep in wide[1:]):
            inputs = [t._keras_history.layer for t in node.keras_inputs]
            lost = ", ".join(
                f"'{inp.name}' loses {_removed(keep)}"
                for inp, keep in zip(inputs, keeps, strict=True)
            )
            raise SurgeryError(
                f"inputs of {_kind(layer)} lose different channels: {lost}; "
                "prune every input of a merge with the same indices"
            )
        return np.broadcast_to(wide[0], output_shape).copy()

    @staticmethod
    def _check_constants(node):
        """An element-wise TF op may take scalar constants only (a per-channel one would
        need cutting too)."""
        for arg in (*node.call_args, *node.call_kwargs.values()):
            if tf.is_tensor(arg) or arg is None or isinstance(arg, str | bool):
                continue
            if np.ndim(arg) != 0:
                raise SurgeryError(
                    f"{_kind(node.outbound_layer)} takes a constant of shape "
                    f"{np.shape(arg)}: AVLSI cannot cut the channels that reach it"
                )

    @staticmethod
    def _check_softmax(layer, keep):
        name = type(layer).__name__
        if name == "Softmax":
            axes = layer.axis if isinstance(layer.axis, list | tuple) else [layer.axis]
        elif name == "Activation" and getattr(layer.activation, "__name__", "") in (
            "softmax",
            "log_softmax",
        ):
            axes = [-1]
        else:
            return
        rank = len(layer.input_shape)
        if any(a % rank == rank - 1 for a in axes):
            raise SurgeryError(
                f"{_kind(layer)} normalizes over the channels being cut ({_removed(keep)}): "
                "removing them would change every other channel"
            )

    @staticmethod
    def _rebuilt(layer, weights):
        config = layer.get_config()
        config["weights"] = weights
        return type(layer).from_config(config)

    def _cut_channelwise_weights(self, layer, keep):
        """PReLU alpha, BatchNormalization and depthwise weights: keep channels `keep`."""
        name = type(layer).__name__
        gone = np.flatnonzero(~keep)
        if name in _DEPTHWISE:
            if layer.depth_multiplier != 1:
                raise SurgeryError(
                    f"{_kind(layer)} has depth_multiplier={layer.depth_multiplier}: AVLSI "
                    "cannot prune the channels that reach it (only depth_multiplier=1)"
                )
            kernel, *bias = layer.get_weights()  # kernel: (*k, in, multiplier)
            return self._rebuilt(layer, [np.delete(kernel, gone, axis=-2)] + [
                np.delete(b, gone) for b in bias
            ])  # fmt: skip
        if name == "BatchNormalization":
            rank = len(layer.input_shape)
            if [a % rank for a in layer.axis] != [rank - 1]:
                raise SurgeryError(
                    f"{_kind(layer)} normalizes axis {list(layer.axis)}, not the channel "
                    "axis: AVLSI cannot prune the channels that reach it"
                )
            return self._rebuilt(layer, [np.delete(w, gone) for w in layer.get_weights()])
        (alpha,) = layer.get_weights()  # PReLU: input shape with shared axes as 1
        if alpha.shape[-1] == 1:
            return layer
        return self._rebuilt(layer, [np.delete(alpha, gone, axis=-1)])

    def _cut_inputs(self, layer, keep):
        """Conv / Dense / SeparableConv / ConvTranspose: drop the weights of cut inputs."""
        name = type(layer).__name__
        gone = np.flatnonzero(~keep)
        weights = layer.get_weights()
        if getattr(layer, "groups", 1) != 1:
            raise SurgeryError(
                f"{_kind(layer)} is a grouped conv (groups={layer.groups}): AVLSI cannot "
                "prune the channels that reach it"
            )
        if name == "Dense" or name in _CONVS:  # kernel (*k, in, out) / (in, out)
            weights[0] = np.delete(weights[0], gone, axis=-2)
        elif name in _TRANSPOSED:  # kernel (*k, out, in)
            weights[0] = np.delete(weights[0], gone, axis=-1)
        else:  # separable: depthwise (*k, in, m), pointwise (*1, in * m, out)
            m = layer.depth_multiplier
            weights[0] = np.delete(weights[0], gone, axis=-2)
            weights[1] = np.delete(weights[1], [c * m + q for c in gone for q in range(m)], axis=-2)
        return self._rebuilt(layer, weights)

    # -- producers ----------------------------------------------------------------------
    def _delete_channels(self, node, inputs, input_masks, channels=None, layer_name=None):
        """kerassurgeon's `_delete_channels` for a producer: cut its inputs, then its units."""
        layer = node.outbound_layer
        self.at = layer
        self.producers.add(layer.name)
        cut, _ = self._rule(node, input_masks)
        _CalledAs(node, cut)(inputs)  # builds `cut`, so that its weights can be read
        new_layer = self._delete_channel_weights(cut, channels)
        output = _CalledAs(node, new_layer)(inputs)
        mask = self._make_delete_mask(layer, channels)
        self._replace_tensors[utils.single_element(node.output_tensors)] = (output, mask)

    def _delete_channel_weights(self, layer, channel_indices):
        name = type(layer).__name__
        if name not in _SEPARABLE | _TRANSPOSED:
            return super()._delete_channel_weights(layer, channel_indices)
        print(f"Deleting {len(channel_indices)}/{layer.filters} channels from layer: {layer.name}")
        weights = layer.get_weights()
        if name in _SEPARABLE:  # depthwise (untouched), pointwise (*1, in * m, out), bias
            weights[1:] = [np.delete(w, channel_indices, axis=-1) for w in weights[1:]]
        else:  # kernel (*k, out, in), bias
            weights[0] = np.delete(weights[0], channel_indices, axis=-2)
            weights[1:] = [np.delete(w, channel_indices) for w in weights[1:]]
        config = layer.get_config()
        config["filters"] -= len(channel_indices)
        config["weights"] = weights
        return type(layer).from_config(config)


def _checked_jobs(model, units: dict[str, list[int]]) -> dict[str, list[int]]:
    """Producer name -> sorted unique unit indices, every one checked against the model."""
    jobs = {}
    for name, idx in units.items():
        if not len(idx):
            continue
        try:
            layer = model.get_layer(name)
        except ValueError:
            raise SurgeryError(f"the model has no layer named '{name}'") from None
        kind = type(layer).__name__
        if kind not in PRODUCERS:
            raise SurgeryError(
                f"{_kind(layer)} has no output units AVLSI can remove (it removes them from "
                f"{', '.join(sorted(PRODUCERS))}; a depthwise conv's channels follow its input)"
            )
        if getattr(layer, "groups", 1) != 1:
            raise SurgeryError(f"{_kind(layer)} is a grouped conv: AVLSI cannot prune it")
        if len(utils.find_nodes_in_model(model, layer)) > 1:
            raise SurgeryError(f"{_kind(layer)} is called more than once: AVLSI cannot prune it")
        count = layer.units if kind == "Dense" else layer.filters
        channels = sorted(set(map(int, idx)))
        if channels[0] < 0 or channels[-1] >= count:
            raise SurgeryError(f"{_kind(layer)} has units 0..{count - 1}, not {channels}")
        if len(channels) == count:
            raise SurgeryError(f"removing all {count} units of {_kind(layer)} is not allowed")
        jobs[name] = channels
    return jobs


def delete_units(model, units: dict[str, list[int]]):
    """Return a new model without the given output units (filters / neurons) per layer.

    `units` maps a producer layer's name to the indices of its units to remove; layers with
    no indices are left alone. All removals happen in one kerassurgeon pass, and every layer
    the removed channels reach is cut to match. Raises SurgeryError (naming the layer) for
    anything that cannot be removed exactly.
    """
    jobs = _checked_jobs(model, units)
    if not jobs:
        return model
    surgeon = _Surgeon(model)
    printed = io.StringIO()
    try:
        for name, channels in jobs.items():
            surgeon.add_job("delete_channels", model.get_layer(name), channels=channels)
        with contextlib.redirect_stdout(printed):  # kerassurgeon prints a line per layer
            pruned = surgeon.operate()
    except SurgeryError:
        raise
    except (ValueError, TypeError, AssertionError, KeyError, IndexError) as exc:
        where = f" at {_kind(surgeon.at)}" if surgeon.at is not None else ""
        why = _first_line(exc)
        raise SurgeryError(f"kerassurgeon cannot remove the units{where}: {why}") from exc
    for line in printed.getvalue().splitlines():
        log.info("kerassurgeon: %s", line)
    return pruned
