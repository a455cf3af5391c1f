"""Coupled channels: which units of a Keras model must be pruned together, and a check.

`pruning_groups(model)` walks the functional graph once and returns the pruning groups:
sets of producer layers (Conv*, Dense, SeparableConv's pointwise part, Conv*Transpose) whose
output channels must lose the same indices, with every layer whose weights change when a
channel goes. Channels pass through layers that act on each channel alone (BatchNorm,
element-wise activations, dropout, pooling, padding, DepthwiseConv with depth_multiplier=1,
...); element-wise merges (Add, Multiply, ...) couple their inputs into one group (union-find);
Concatenate on the channel axis keeps each input's group at an offset; Flatten maps channel c
to rows `pos * C + c` of the next Dense. A layer the analysis cannot follow (Reshape that moves
the channel axis, Lambda, TFOpLambda, custom layers, nested models (jobs flatten those called
once first: avlsi/models/flatten.py), layers called more than once, softmax across channels,
grouped convs, channels_first) makes every group flowing into it unprunable, with a reason
naming the layer; so does reaching a model output or being merged with the model input.
It never guesses.

`masked_copy(model, removed)` zeroes, in a copy, the consumer weights through which removed
channels are read; `equivalence_error(model, pruned, removed)` compares a pruned model with
that copy on random inputs (~1e-7 when the surgery was right).

Only this module walks the Keras graph (tf-keras node API: `_nodes_by_depth`, each node's
layer, input and output tensors; `_calls` reads Keras 3's names for them too). Everything here
works on tf-keras and Keras 3 models: copies and probes are made with the model's own Keras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Layers that act on each channel alone and hold no per-channel weights: channels pass.
PASS = {
    "InputLayer", "Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Dropout",
    "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "MaxPooling1D",
    "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D", "Rescaling", "RepeatVector",
}  # fmt: skip
GLOBAL_POOL = {
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
}  # fmt: skip
MERGE = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}
# Per-channel weights, channels pass: members of every group flowing through them.
# ("DepthwiseConv": a Conv*D with groups == filters == input channels, as ConvNeXt writes it.)
FOLLOW = {
    "BatchNormalization", "DepthwiseConv1D", "DepthwiseConv2D", "DepthwiseConv", "Normalization",
    "PReLU",
}  # fmt: skip
CONV = {"Conv1D", "Conv2D", "Conv3D"}
TRANSPOSE = {"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"}
SEPARABLE = {"SeparableConv1D", "SeparableConv2D"}
PRODUCE = CONV | TRANSPOSE | SEPARABLE | {"Dense"}
MIXING_ACTIVATIONS = {"softmax", "log_softmax"}  # each output depends on every channel
# tf-keras wraps TF ops on KerasTensors in TFOpLambda layers (`x + 3.0`, `tf.nn.relu6(x)`);
# these act element-wise: followed when every other argument is a Python number.
ELEMENTWISE_OPS = {
    "__operators__.add", "__operators__.sub", "__operators__.mul", "__operators__.truediv",
    "__operators__.neg", "math.add", "math.subtract", "math.multiply", "math.truediv",
    "math.divide", "math.negative", "math.maximum", "math.minimum", "math.abs",
    "math.square", "math.sqrt", "math.exp", "math.sigmoid", "math.tanh", "nn.relu",
    "nn.relu6", "nn.sigmoid", "nn.silu", "nn.swish", "nn.gelu", "nn.elu", "nn.selu",
    "nn.leaky_relu", "clip_by_value",
}  # fmt: skip
# Keras 3 records ops on KerasTensors (`x + 1.0`, `keras.ops.relu(x)`) as Operation nodes of
# these classes (keras.src.ops): followed like TFOpLambda's element-wise ops.
KERAS3_ELEMENTWISE_OPS = {
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Negative", "Maximum", "Minimum",
    "Absolute", "Abs", "Square", "Sqrt", "Exp", "Tanh", "Relu", "Relu6", "Sigmoid", "Silu",
    "Swish", "Gelu", "Elu", "Selu", "LeakyRelu", "HardSigmoid", "HardSilu", "HardSwish",
    "Softplus", "Clip",
}  # fmt: skip


@dataclass(frozen=True)
class Consumer:
    """Where a group's channels enter a consumer's kernel: channel c of the group is read by
    input rows `pos * width + (offset + c) * multiplier + k` (pos < positions, k < multiplier)
    of `layer`'s kernel (the pointwise kernel of a SeparableConv)."""

    layer: str
    offset: int
    positions: int = 1  # > 1 after Flatten: the spatial positions folded into the rows
    width: int = 0  # channels of the flattened tensor (rows per position)
    multiplier: int = 1  # a SeparableConv's depth_multiplier

    def rows(self, channels: list[int]) -> list[int]:
        m = self.multiplier
        return sorted(
            pos * self.width + (self.offset + c) * m + k
            for pos in range(self.positions)
            for c in channels
            for k in range(m)
        )


@dataclass(frozen=True)
class Group:
    """Channels that go together: the same indices leave every producer's output."""

    index: int
    producers: tuple[str, ...]
    channels: int
    members: tuple[str, ...]
    reason: str = ""  # "" when prunable; else why not, naming the layer
    macs: int = 0  # multiply-adds of the producers, one input
    consumers: tuple[Consumer, ...] = field(default=(), repr=False)
    # Layers the channels pass through whose weights or config hold one entry per channel
    # (BatchNorm, depthwise, PReLU, Normalization; Reshape's target shape): channel c of the
    # group is their channel `offset + c` (`Consumer.rows` with positions = multiplier = 1).
    followers: tuple[Consumer, ...] = field(default=(), repr=False)

    @property
    def prunable(self) -> bool:
        return not self.reason


def pruning_groups(model) -> list[Group]:
    """The model's pruning groups in graph order (the first producer's group first)."""
    return _Analysis(model).groups()


def group_removal(groups: list[Group], group: Group | int, indices) -> dict[str, list[int]]:
    """`{producer: indices}` removing `indices` from every producer of one group."""
    found = groups[group] if isinstance(group, int) else group
    chosen = sorted({int(i) for i in indices})
    return {name: list(chosen) for name in found.producers}


def masked_copy(model, removed: dict[str, list[int]], groups: list[Group] | None = None):
    """A copy of `model` whose consumers no longer read the removed channels.

    `removed` maps producer names to the output channels a pruning removes (producers of one
    group must agree; a producer left out of the dict follows its group). The input weights
    through which those channels reach each consumer (next conv / dense kernels, across
    merges, concatenations and Flatten) are set to zero; nothing else changes.
    """
    from avlsi.kerasapi import keras_of

    groups = pruning_groups(model) if groups is None else groups
    by_producer = {name: g for g in groups for name in g.producers}
    by_index = {g.index: g for g in groups}
    channels: dict[int, tuple[str, list[int]]] = {}
    for name, indices in removed.items():
        if name not in by_producer:
            raise ValueError(f"'{name}' produces no pruning group of model '{model.name}'")
        group, chosen = by_producer[name], sorted({int(i) for i in indices})
        earlier = channels.setdefault(group.index, (name, chosen))
        if earlier[1] != chosen:
            raise ValueError(
                f"'{earlier[0]}' and '{name}' are coupled (group {group.index}) but lose "
                f"different channels: {earlier[1][:8]} vs {chosen[:8]}"
            )
    copy = keras_of(model).models.clone_model(model)
    copy.set_weights(model.get_weights())
    for index, (_, chosen) in channels.items():
        if not chosen:
            continue
        for consumer in by_index[index].consumers:
            layer = copy.get_layer(consumer.layer)
            kernel = _input_kernel(layer)
            axis = -1 if type(layer).__name__ in TRANSPOSE else len(kernel.shape) - 2
            values = kernel.numpy()
            index_ = [slice(None)] * values.ndim
            index_[axis] = consumer.rows(chosen)
            values[tuple(index_)] = 0.0
            kernel.assign(values)
    return copy


def equivalence_error(model, pruned, removed: dict[str, list[int]], samples=4, seed=0) -> float:
    """Max over outputs of max |pruned - masked| / max |masked| on random normal inputs,
    compared before a final softmax (see `logits`); inf when the output shapes differ."""
    masked = masked_copy(model, removed)
    return output_difference(masked, pruned, samples, seed)


def output_difference(model, other, samples: int = 4, seed: int = 0) -> float:
    """Max over outputs of max |other - model| / max |model| on random normal inputs,
    compared before a final softmax (see `logits`); inf when the output shapes differ."""
    rng = np.random.default_rng(seed)
    inputs = [
        rng.standard_normal((samples, *(d or 32 for d in t.shape[1:]))).astype("float32")
        for t in model.inputs
    ]
    feed = inputs[0] if len(inputs) == 1 else inputs
    want, got = logits(model, feed), logits(other, feed)
    if [w.shape for w in want] != [g.shape for g in got]:
        return math.inf
    worst = 0.0
    for w, g in zip(want, got, strict=True):
        scale = max(float(np.max(np.abs(w))), 1e-30)
        worst = max(worst, float(np.max(np.abs(w - g))) / scale)
    return worst


def logits(model, feed) -> list[np.ndarray]:
    """The model's outputs on `feed`, taken before a final softmax: probabilities hide
    differences (an untrained model's softmax is often uniform or saturated, so it equals
    itself whatever comes in). A Softmax / Activation layer at the end is skipped; a final
    Dense / Conv's softmax is switched off during the call."""
    from avlsi.kerasapi import keras_of

    keras = keras_of(model)
    outputs, swapped = [], []
    for tensor in model.outputs:
        layer = tensor._keras_history[0]
        kind = type(layer).__name__
        if _mixes_channels(layer, kind, len(tensor.shape)) and len(layer._inbound_nodes) == 1:
            outputs.append(layer.input)
            continue
        if _activation(layer) in MIXING_ACTIVATIONS:
            swapped.append((layer, layer.activation))
            layer.activation = keras.activations.linear
        outputs.append(tensor)
    try:
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # as `feed`
        probe = keras.Model(inputs, outputs)
        return [np.asarray(o) for o in _as_list(probe(feed, training=False))]
    finally:
        for layer, activation in swapped:
            layer.activation = activation


def layer_macs(layer, inputs, outputs) -> int:
    """Multiply-adds of one call of a layer (avlsi.metrics' conventions)."""
    from avlsi.metrics import call_macs

    if not inputs or not outputs:
        return 0
    return call_macs(layer, tuple(inputs[0].shape), tuple(outputs[0].shape))


def _spatial(tensor) -> int:
    return int(np.prod([d or 1 for d in tensor.shape[1:-1]]))


def _as_list(x) -> list:
    return list(x) if isinstance(x, list | tuple) else [x]


def _input_kernel(layer):
    """The kernel whose input rows read the incoming channels."""
    return layer.pointwise_kernel if type(layer).__name__ in SEPARABLE else layer.kernel


def _calls(model):
    """(layer, input tensors, output tensors) of every call, in topological order.

    tf-keras: `model._nodes_by_depth`, `node.layer`, `node.keras_inputs`, `node.outputs`;
    Keras 3 names them `node.operation` and `node.input_tensors`.
    """
    model = getattr(model, "_functional", None) or model  # a Keras 3 Sequential's graph
    if not getattr(model, "_is_graph_network", True) or not hasattr(model, "_nodes_by_depth"):
        raise ValueError(f"model '{model.name}' has no functional graph (build it from an Input)")
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = getattr(node, "operation", None) or node.layer
            found = node.keras_inputs if hasattr(node, "keras_inputs") else node.input_tensors
            yield layer, list(found), _as_list(node.outputs), node


@dataclass
class _Set:
    """One union-find element: a producer's output channels, or a pseudo set (model input,
    output of a layer the analysis cannot follow) that poisons whatever it merges with."""

    channels: int
    order: int
    producers: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    followers: list[Consumer] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    label: str = ""  # a pseudo set: what these channels are
    macs: int = 0


@dataclass(frozen=True)
class _Tensor:
    """A tensor's channel axis (the last) as a run of sets, each contributing all its
    channels; `positions` is set after Flatten (rows = pos * channels + c)."""

    sets: tuple[int, ...]
    positions: int | None = None


class _Analysis:
    def __init__(self, model) -> None:
        self.model = model
        self.sets: list[_Set] = []
        self.parent: list[int] = []
        self.tensors: dict[int, _Tensor] = {}
        self.order = {layer.name: i for i, layer in enumerate(model.layers)}  # graph order
        calls = list(_calls(model))
        counts: dict[str, int] = {}
        for layer, *_ in calls:
            counts[layer.name] = counts.get(layer.name, 0) + 1
        for layer, inputs, outputs, node in calls:
            self.order.setdefault(layer.name, len(self.order))
            self.visit(layer, inputs, outputs, counts[layer.name], node)
        for tensor in model.outputs:
            name = tensor._keras_history[0].name
            for s in self.layout(tensor).sets:
                self.find_set(s).reasons.insert(0, f"its units are the model's outputs ('{name}')")

    # --- union-find -----------------------------------------------------------------------

    def new(self, channels: int, **kw) -> int:
        self.sets.append(_Set(int(channels or 0), len(self.sets), **kw))
        self.parent.append(len(self.parent))
        return len(self.sets) - 1

    def root(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def find_set(self, i: int) -> _Set:
        return self.sets[self.root(i)]

    def union(self, a: int, b: int, via: str) -> int:
        ra, rb = self.root(a), self.root(b)
        if ra == rb:
            return ra
        if self.sets[rb].order < self.sets[ra].order:
            ra, rb = rb, ra
        keep, gone = self.sets[ra], self.sets[rb]
        labels = [s.label for s in (keep, gone) if s.label]
        if len(labels) == 1:
            keep.reasons.append(f"{via} couples it with {labels[0]}")
        keep.label = keep.label or gone.label
        for name in ("producers", "members", "consumers", "followers", "reasons"):
            getattr(keep, name).extend(getattr(gone, name))
        keep.macs += gone.macs
        self.parent[rb] = ra
        return ra

    # --- tensors --------------------------------------------------------------------------

    def layout(self, tensor) -> _Tensor:
        return self.tensors[id(tensor)]

    def put(self, tensor, layout: _Tensor) -> None:
        self.tensors[id(tensor)] = layout

    def add_member(self, layout: _Tensor, name: str) -> None:
        for s in layout.sets:
            self.find_set(s).members.append(name)

    # --- one call of a layer --------------------------------------------------------------

    def visit(self, layer, inputs, outputs, calls: int, node=None) -> None:
        name = layer.name
        this = f"{type(layer).__name__} '{name}'"
        kind = _rule(layer, node, inputs)  # the layer type whose rule applies
        if kind == "InputLayer" and not inputs:
            label = f"the model input '{name}'"
            self.put(outputs[0], _Tensor((self.new(outputs[0].shape[-1], label=label),)))
            return
        ins = [self.layout(t) for t in inputs]
        why = self.refusal(layer, kind, inputs, outputs, calls)
        if why is not None:
            return self.opaque(this, why, ins, outputs)
        first = ins[0] if ins else None
        if _mixes_channels(layer, kind, len(inputs[0].shape)):
            for s in first.sets:  # softmax: every output depends on every channel
                self.find_set(s).reasons.append(f"{this} normalises across its channels")
        if kind == "Reshape":
            self.follow(first, name)
        if kind in PASS or kind == "Softmax" or kind == "Reshape" or kind == "Permute":
            self.put(outputs[0], first)
        elif kind in GLOBAL_POOL:
            self.put(outputs[0], _Tensor(first.sets))
        elif kind == "Flatten":
            positions = first.positions or _spatial(inputs[0])
            self.put(outputs[0], _Tensor(first.sets, positions))
        elif kind in FOLLOW:
            self.add_member(first, name)
            self.follow(first, name)
            self.put(outputs[0], first)
        elif kind in MERGE:
            full, broadcast = self.split_broadcast(ins)
            for x in broadcast:  # one channel broadcast over all: not coupled, not prunable
                for s in x.sets:
                    self.find_set(s).reasons.append(f"{this} broadcasts it over the channels")
            merged = []
            for column in zip(*[x.sets for x in full], strict=True):
                root = column[0]
                for other in column[1:]:
                    root = self.union(root, other, this)
                merged.append(root)
            self.put(outputs[0], _Tensor(tuple(merged)))
        elif kind == "Concatenate":
            self.put(outputs[0], _Tensor(tuple(s for x in ins for s in x.sets)))
        elif kind in PRODUCE:
            self.consume(layer, kind, first)
            reasons = []
            if _activation(layer) in MIXING_ACTIVATIONS:
                reasons.append(f"{this} applies {_activation(layer)} across its units")
            new = self.new(
                outputs[0].shape[-1],
                producers=[name],
                members=[name],
                reasons=reasons,
                macs=layer_macs(layer, inputs, outputs),
            )
            self.put(outputs[0], _Tensor((new,)))

    def consume(self, layer, kind: str, layout: _Tensor) -> None:
        """Record where each set of `layout` enters `layer`'s kernel."""
        width = sum(self.sets[s].channels for s in layout.sets)
        multiplier = int(getattr(layer, "depth_multiplier", 1)) if kind in SEPARABLE else 1
        offset = 0
        for s in layout.sets:
            consumer = Consumer(layer.name, offset, layout.positions or 1, width, multiplier)
            found = self.find_set(s)
            found.members.append(layer.name)
            found.consumers.append(consumer)
            offset += self.sets[s].channels

    def follow(self, layout: _Tensor, name: str) -> None:
        """Record where each set of `layout` sits among the channels of `name`."""
        offset = 0
        for s in layout.sets:
            self.find_set(s).followers.append(Consumer(name, offset))
            offset += self.sets[s].channels

    def split_broadcast(self, ins: list[_Tensor]) -> tuple[list[_Tensor], list[_Tensor]]:
        """A merge's inputs: those with all the channels, and those of one channel that the
        merge broadcasts over them (e.g. a spatial attention map)."""
        widths = [sum(self.sets[s].channels for s in x.sets) for x in ins]
        if max(widths) <= 1:
            return ins, []
        full = [x for x, w in zip(ins, widths, strict=True) if w != 1]
        return full, [x for x, w in zip(ins, widths, strict=True) if w == 1]

    def opaque(self, this: str, why: str, ins: list[_Tensor], outputs) -> None:
        """A layer the analysis cannot follow: groups flowing in are unprunable, and what
        comes out is a pseudo set that poisons whatever it merges with."""
        for layout in ins:
            for s in layout.sets:
                self.find_set(s).reasons.append(
                    f"flows into {this} which the analysis cannot follow ({why})"
                )
        for tensor in outputs:
            label = f"the output of {this}, which the analysis cannot follow"
            channels = tensor.shape[-1] if len(tensor.shape) else 0
            self.put(tensor, _Tensor((self.new(channels, label=label),)))

    def refusal(self, layer, kind: str, inputs, outputs, calls: int) -> str | None:
        """Why this call cannot be followed, or None."""
        known = PASS | GLOBAL_POOL | MERGE | FOLLOW | PRODUCE | {"Flatten", "Concatenate"}
        known |= {"Reshape", "Permute", "Softmax"}
        if kind not in known:
            if hasattr(layer, "layers") and hasattr(layer, "inputs"):
                return "a nested model"
            if kind in {"Lambda", "TFOpLambda"}:
                return "arbitrary code"
            return "a layer type it does not know"
        if calls > 1:
            return f"a layer called {calls} times"
        if len(outputs) != 1:
            return f"{len(outputs)} outputs"
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return "channels_first"
        ins = [self.layout(t) for t in inputs]
        flat = any(x.positions for x in ins)
        if flat and kind not in {"Dense", "Flatten"} and kind not in PASS - {"RepeatVector"}:
            return "it acts on the flattened channels"
        rank = len(inputs[0].shape) if inputs else 0
        if kind == "Reshape" and inputs[0].shape[-1] != outputs[0].shape[-1]:
            return "it moves the channel axis"
        if kind == "Permute" and tuple(layer.dims)[-1] != rank - 1:
            return "it moves the channel axis"
        if kind == "Rescaling" and (np.ndim(layer.scale) or np.ndim(layer.offset)):
            return "a scale or offset per channel"
        normalises = kind in {"BatchNormalization", "Normalization"}
        if normalises and _axes(layer.axis, rank) != [rank - 1]:
            return f"it normalises over axis {layer.axis}, not the channel axis"
        if kind in {"DepthwiseConv1D", "DepthwiseConv2D"} and layer.depth_multiplier != 1:
            return f"depth_multiplier={layer.depth_multiplier}"
        if getattr(layer, "groups", 1) != 1 and kind != "DepthwiseConv":
            return f"groups={layer.groups}"
        if kind in MERGE:
            shapes = [
                tuple(self.sets[s].channels for s in x.sets) for x in self.split_broadcast(ins)[0]
            ]
            if len(set(shapes)) != 1:
                return "its inputs' channels do not line up"
        if kind == "Concatenate" and (
            _axes(layer.axis, rank) != [rank - 1] or any(len(t.shape) != rank for t in inputs)
        ):
            return f"it concatenates on axis {layer.axis}, not the channel axis"
        if kind == "Dense" and flat:
            width = sum(self.sets[s].channels for s in ins[0].sets)
            if layer.kernel.shape[0] != width * ins[0].positions:
                return "its rows do not match the flattened channels"
        return None

    # --- the result -----------------------------------------------------------------------

    def groups(self) -> list[Group]:
        roots = sorted(
            {self.root(i) for i, s in enumerate(self.sets) if s.producers},
            key=lambda r: min(self.order[p] for p in self.sets[r].producers),
        )
        found = []
        for index, r in enumerate(roots):
            s = self.sets[r]
            by_order = sorted(set(s.members), key=self.order.__getitem__)
            found.append(
                Group(
                    index=index,
                    producers=tuple(sorted(set(s.producers), key=self.order.__getitem__)),
                    channels=s.channels,
                    members=tuple(by_order),
                    reason=s.reasons[0] if s.reasons else "",
                    macs=s.macs,
                    consumers=tuple(s.consumers),
                    followers=tuple(s.followers),
                )
            )
        return found


def _rule(layer, node, inputs) -> str:
    """The layer type whose rule applies: the class name; DepthwiseConv for a conv with one
    group per channel; for an element-wise TFOpLambda (tf-keras) or op (Keras 3) with Python
    numbers as its other arguments, Activation (one tensor) or Add (several); "Operation"
    for any other Keras 3 op."""
    kind = type(layer).__name__
    groups = getattr(layer, "groups", 1)
    if kind in CONV and groups > 1 and groups == layer.filters == inputs[0].shape[-1]:
        return "DepthwiseConv"
    if type(layer).__module__.startswith("keras.src.ops."):  # a Keras 3 op, not a layer
        if kind not in KERAS3_ELEMENTWISE_OPS:
            return "Operation"
        args = [*node.arguments.args, *node.arguments.kwargs.values()]
        kind = "Operation"  # unless the arguments below make it element-wise
    elif kind != "TFOpLambda" or getattr(layer, "symbol", None) not in ELEMENTWISE_OPS:
        return kind
    else:
        args = [*getattr(node, "call_args", ()), *getattr(node, "call_kwargs", {}).values()]
    tensors = [a for a in args if hasattr(a, "_keras_history")]
    others = [a for a in args if not hasattr(a, "_keras_history")]
    plain = all(a is None or isinstance(a, int | float | str | np.number) for a in others)
    if not plain or len(tensors) != len(inputs) or not inputs:
        return kind
    return "Add" if len(inputs) > 1 else "Activation"


def _mixes_channels(layer, kind: str, rank: int) -> bool:
    if kind == "Softmax":
        return rank - 1 in _axes(layer.axis, rank)
    return kind == "Activation" and _activation(layer) in MIXING_ACTIVATIONS


def _activation(layer) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", str(activation)) if activation else ""


def _axes(axis, rank: int) -> list[int]:
    if axis is None or not rank:
        return []
    axes = list(axis) if isinstance(axis, list | tuple) else [axis]
    return sorted(int(a) % rank for a in axes)
