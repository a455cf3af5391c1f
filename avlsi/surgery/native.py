"""The native surgery engine: AVLSI's own, for tf-keras and Keras 3 models alike.

It never walks the graph itself: `avlsi.graph.pruning_groups` says, for every group of
coupled channels, which producers lose the units, which consumers read them (at which input
rows of their kernel: offsets after Concatenate, positions after Flatten, depth multipliers of
SeparableConv) and which layers they pass through with one weight or config entry per channel
(BatchNorm, depthwise convs, PReLU, Normalization, Reshape). From that the engine

1. checks the selection against the groups (a group the analysis cannot follow is refused
   with its reason, which names the layer; producers of one group must lose the same units),
2. writes the pruned model's config: fewer `filters` / `units` on producers, fewer `filters`
   and `groups` on grouped depthwise convs, a smaller last dimension in Reshape's
   `target_shape`; every layer's `build_config` is dropped so that layers are built for
   their new inputs,
3. rebuilds the model with its own Keras (`from_config` of the model's class, every layer
   class of the model passed as a custom object), and
4. copies every layer's weights, minus the removed slices: producers' output axis and bias,
   consumers' input rows, per-channel vectors and depthwise channels.

Nothing depends on layer names beyond matching a layer of the config to its weights. It shares
no code with the kerassurgeon engine: the two must agree on every tf-keras model both handle.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from avlsi.graph import CONV, SEPARABLE, TRANSPOSE, Group, pruning_groups
from avlsi.kerasapi import custom_objects, keras_of
from avlsi.surgery import SurgeryError

log = logging.getLogger(__name__)

DEPTHWISE = {"DepthwiseConv1D", "DepthwiseConv2D"}
VECTORS = {"BatchNormalization", "Normalization"}  # weights: one entry per channel (last axis)
PRODUCERS = CONV | TRANSPOSE | SEPARABLE | {"Dense"}


@dataclass
class _Cut:
    """What one layer loses: its output units, its kernel's input rows, its input channels."""

    units: list[int] = field(default_factory=list)
    rows: set[int] = field(default_factory=set)
    channels: set[int] = field(default_factory=set)


def _kind(layer) -> str:
    return f"{type(layer).__name__} '{layer.name}'"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _unit_count(layer) -> int:
    return int(layer.units if type(layer).__name__ == "Dense" else layer.filters)


def _selection(model, units, groups: list[Group]) -> dict[int, list[int]]:
    """Group index -> the sorted units its producers lose; every refusal before any work."""
    by_producer = {name: group for group in groups for name in group.producers}
    chosen: dict[int, tuple[str, list[int]]] = {}
    for name, indices in units.items():
        if not len(indices):
            continue
        try:
            layer = model.get_layer(name)
        except ValueError:
            raise SurgeryError(f"the model has no layer named '{name}'") from None
        if type(layer).__name__ not in PRODUCERS:
            raise SurgeryError(
                f"{_kind(layer)} has no output units AVLSI can remove (it removes them from "
                f"{', '.join(sorted(PRODUCERS))}; a depthwise conv's channels follow its input)"
            )
        if name not in by_producer:
            raise SurgeryError(
                f"{_kind(layer)} is not a producer the coupled-channel analysis can follow "
                "(called more than once, grouped or channels_first): AVLSI cannot prune it"
            )
        group, count = by_producer[name], _unit_count(layer)
        picked = sorted({int(i) for i in indices})
        if picked[0] < 0 or picked[-1] >= count:
            raise SurgeryError(f"{_kind(layer)} has units 0..{count - 1}, not {picked}")
        if len(picked) == count:
            raise SurgeryError(f"removing all {count} units of {_kind(layer)} is not allowed")
        if not group.prunable:
            raise SurgeryError(f"cannot remove units of {_kind(layer)}: {group.reason}")
        earlier = chosen.setdefault(group.index, (name, picked))
        if earlier[1] != picked:
            raise SurgeryError(
                f"'{earlier[0]}' and '{name}' are coupled (their channels meet in a merge) but "
                f"lose different units: {earlier[1][:8]} vs {picked[:8]}; prune every producer "
                "of a group with the same indices"
            )
    by_index = {group.index: group for group in groups}
    for index, (name, picked) in chosen.items():
        for other in by_index[index].producers:
            if other != name and sorted({int(i) for i in units.get(other, [])}) != picked:
                raise SurgeryError(
                    f"'{name}' and '{other}' are coupled (their channels meet in a merge) but "
                    f"'{other}' does not lose the same units {picked[:8]}; prune every producer "
                    "of a group with the same indices"
                )
    return {index: picked for index, (_, picked) in chosen.items()}


def _plan(groups: list[Group], selection: dict[int, list[int]]) -> dict[str, _Cut]:
    """Layer name -> what it loses."""
    cuts: dict[str, _Cut] = defaultdict(_Cut)
    for group in groups:
        removed = selection.get(group.index)
        if not removed:
            continue
        for name in group.producers:
            cuts[name].units = removed
        for consumer in group.consumers:
            cuts[consumer.layer].rows.update(consumer.rows(removed))
            # a SeparableConv's depthwise kernel: one entry per input channel
            cuts[consumer.layer].channels.update(consumer.offset + c for c in removed)
        for follower in group.followers:
            cuts[follower.layer].channels.update(follower.rows(removed))
    return dict(cuts)


def _is_grouped_depthwise(layer) -> bool:
    return type(layer).__name__ in CONV and getattr(layer, "groups", 1) > 1


def _pruned_config(model, cuts: dict[str, _Cut]) -> dict:
    """The model's config with the producers', grouped convs' and Reshapes' sizes cut."""
    config = copy.deepcopy(model.get_config())
    for entry in config["layers"]:
        entry.pop("build_config", None)  # built again by the call on the pruned inputs
        name = entry["config"].get("name")
        cut = cuts.get(name)
        if cut is None:
            continue
        layer, settings = model.get_layer(name), entry["config"]
        kind = type(layer).__name__
        if cut.units:
            key = "units" if kind == "Dense" else "filters"
            settings[key] = int(settings[key]) - len(cut.units)
        if _is_grouped_depthwise(layer) and cut.channels:
            settings["filters"] = int(settings["filters"]) - len(cut.channels)
            settings["groups"] = int(settings["groups"]) - len(cut.channels)
        if kind == "Reshape" and cut.channels:
            target = list(settings["target_shape"])
            if target[-1] != -1:
                target[-1] = int(target[-1]) - len(cut.channels)
            settings["target_shape"] = tuple(target) if _is_tuple(settings) else target
        if kind == "Normalization":
            for key in ("mean", "variance"):
                if settings.get(key) is not None and np.ndim(settings[key]):
                    kept = np.delete(np.asarray(settings[key]), sorted(cut.channels), axis=-1)
                    settings[key] = kept.tolist()
    return config


def _is_tuple(settings: dict) -> bool:
    return isinstance(settings["target_shape"], tuple)


def _drop(array: np.ndarray, indices, axis: int) -> np.ndarray:
    return np.delete(array, sorted(indices), axis=axis) if indices else array


def _pruned_weights(layer, cut: _Cut) -> list[np.ndarray]:
    """`layer`'s weights without the slices `cut` removes."""
    kind = type(layer).__name__
    weights = layer.get_weights()
    if kind in SEPARABLE:  # depthwise (*k, in, m), pointwise (*1, in * m, out), bias
        weights[0] = _drop(weights[0], cut.channels, -2)
        weights[1] = _drop(_drop(weights[1], cut.rows, -2), cut.units, -1)
        weights[2:] = [_drop(b, cut.units, 0) for b in weights[2:]]
    elif kind in TRANSPOSE:  # kernel (*k, out, in), bias
        weights[0] = _drop(_drop(weights[0], cut.rows, -1), cut.units, -2)
        weights[1:] = [_drop(b, cut.units, 0) for b in weights[1:]]
    elif _is_grouped_depthwise(layer):  # kernel (*k, 1, channels), bias
        weights = [_drop(w, cut.channels, -1) for w in weights]
    elif kind in CONV or kind == "Dense":  # kernel (*k, in, out) / (in, out), bias
        weights[0] = _drop(_drop(weights[0], cut.rows, -2), cut.units, -1)
        weights[1:] = [_drop(b, cut.units, 0) for b in weights[1:]]
    elif kind in DEPTHWISE:  # kernel (*k, channels, 1), bias
        weights[0] = _drop(weights[0], cut.channels, -2)
        weights[1:] = [_drop(b, cut.channels, 0) for b in weights[1:]]
    elif kind in VECTORS or kind == "PReLU":  # (channels,); alpha / statistics broadcast
        # over axes of size 1 (shared axes, Normalization's count): only a channel axis is cut
        weights = [
            _drop(w, cut.channels, -1) if np.ndim(w) and w.shape[-1] > 1 else w for w in weights
        ]
    elif weights and (cut.channels or cut.rows or cut.units):
        raise SurgeryError(f"{_kind(layer)} holds weights the native engine cannot cut")
    return weights


def _rebuild(model, config: dict):
    keras = keras_of(model)
    try:
        with keras.utils.custom_object_scope(custom_objects(model)):
            return type(model).from_config(config)
    except SurgeryError:
        raise
    except Exception as exc:  # a config that does not build: name what Keras says
        raise SurgeryError(
            f"the native engine cannot rebuild model '{model.name}' from its pruned config: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def delete_units(model, units: dict[str, list[int]]):
    """Return a new model without the given output units (see `avlsi.surgery.delete_units`)."""
    groups = pruning_groups(model)
    selection = _selection(model, units, groups)
    if not selection:
        return model
    cuts = _plan(groups, selection)
    pruned = _rebuild(model, _pruned_config(model, cuts))
    for layer in model.layers:
        if not layer.weights:
            continue
        cut = cuts.get(layer.name)
        weights = _pruned_weights(layer, cut) if cut else layer.get_weights()
        try:
            pruned.get_layer(layer.name).set_weights(weights)
        except ValueError as exc:
            raise SurgeryError(
                f"the native engine cut the weights of {_kind(layer)} wrong: {_first_line(exc)}"
            ) from exc
    before = [tuple(t.shape) for t in model.outputs]
    after = [tuple(t.shape) for t in pruned.outputs]
    if before != after:
        raise SurgeryError(
            f"the native engine changed the outputs of model '{model.name}' ({before} -> "
            f"{after}); please report this model"
        )
    log.info("native surgery: %d groups cut, %d layers changed", len(selection), len(cuts))
    return pruned
