"""Nested models made one graph: `Model(inputs, head(backbone(inputs)))` -> plain layers.

Transfer learning nests a whole model as one layer (a keras.applications backbone inside a
functional or Sequential classifier). The graph analysis follows layers, not models within
models, so before anything else a nested model is replaced by its own layers, wired to what
fed it: the config is rewritten (tf-keras and Keras 3 formats), rebuilt with the model's own
Keras, given the same weights, and checked to compute the same outputs; a nested model
called with `training=False` (Keras' transfer-learning recipe) passes that to each of its
layers' calls, so its batch normalisation stays in inference mode. Layer names stay
(a name used both inside and outside keeps the model nested); the result is a functional
model. Where flattening fails the model stays nested, with a warning saying why.
A nested model called more than once (weights shared between two calls) is left nested;
the analysis then refuses the groups it touches, naming it.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from avlsi.errors import UserError
from avlsi.kerasapi import custom_objects, is_keras3, keras_of

log = logging.getLogger(__name__)

MODEL_CLASSES = ("Functional", "Model", "Sequential")
Ref = list  # [layer name, node index, tensor index]


def _is_model_entry(entry: dict) -> bool:
    return entry.get("class_name") in MODEL_CLASSES and "layers" in entry.get("config", {})


def _is_input(entry: dict) -> bool:
    return entry.get("class_name") == "InputLayer"


def _triples(refs) -> list[Ref]:
    """`input_layers` / `output_layers` as a list of [name, node, tensor] (Keras 3 writes
    a single one flat)."""
    refs = _listed(refs)
    if refs and isinstance(refs[0], str):
        return [list(refs[:3])]
    return [list(r[:3]) for r in refs]


def _listed(obj):
    """`obj` with every tuple a list (as read back from a saved file), so that it can be
    rewired in place."""
    if isinstance(obj, dict):
        return {key: _listed(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_listed(value) for value in obj]
    return obj


def _tensor_refs(node, keras3: bool) -> list[list]:
    """The mutable references to tensors in one inbound node, in call order: Keras 3's
    `keras_history` lists, tf-keras' [name, node, tensor, kwargs] lists."""
    found: list[list] = []

    def walk(obj) -> None:
        if keras3 and isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__":
                found.append(obj["config"]["keras_history"])
                return
            for value in obj.values():
                walk(value)
        elif isinstance(obj, list):
            is_ref = len(obj) in (3, 4) and isinstance(obj[0], str)
            if not keras3 and is_ref and all(isinstance(i, int) for i in obj[1:3]):
                found.append(obj)
                return
            for value in obj:
                walk(value)

    walk(node)
    return found


def _call_training(node, keras3: bool):
    """The `training=` a call was made with (`backbone(x, training=False)`), or None."""
    if keras3:
        return (node.get("kwargs") or {}).get("training")
    found = [ref[3].get("training") for ref in _tensor_refs(node, keras3) if len(ref) > 3]
    return next((t for t in found if t is not None), None)


def _set_training(entry: dict, training: bool, keras3: bool) -> None:
    """Every call of `entry` made with `training=training`, as the nested model's call was:
    its BatchNormalization / Dropout layers keep the mode that call gave them."""
    for node in entry.get("inbound_nodes") or []:
        if keras3:
            node["kwargs"] = {**(node.get("kwargs") or {}), "training": training}
            continue
        for ref in _tensor_refs(node, keras3):
            if len(ref) == 3:
                ref.append({})
            ref[3] = {**ref[3], "training": training}


def _rewire(entry: dict, mapping: dict[str, list[Ref]], keras3: bool) -> None:
    """Point every reference to a name in `mapping` at its replacement (by tensor index)."""
    for ref in _tensor_refs(entry.get("inbound_nodes") or [], keras3):
        if ref[0] in mapping:
            ref[:3] = mapping[ref[0]][ref[2]]


def _sequential_as_functional(config: dict, keras3: bool) -> dict:
    """A Sequential config written as a functional one (a chain), input layer first."""
    entries = [copy.deepcopy(e) for e in config["layers"]]
    if not entries or not _is_input(entries[0]):
        raise UserError(
            f"the nested Sequential '{config.get('name')}' has no input shape in its config; "
            "build it with keras.Input first (or call it once) so that it can be flattened"
        )
    previous = entries[0]["config"]["name"]
    for entry in entries:
        entry.setdefault("name", entry["config"]["name"])
        if _is_input(entry):
            entry["inbound_nodes"] = []
            continue
        if keras3:  # Keras 3 swaps this placeholder for the tensor that keras_history names
            placeholder = {"shape": [None], "dtype": "float32", "keras_history": [previous, 0, 0]}
            tensor = {"class_name": "__keras_tensor__", "config": placeholder}
            entry["inbound_nodes"] = [{"args": [tensor], "kwargs": {}}]
        else:
            entry["inbound_nodes"] = [[[previous, 0, 0, {}]]]
        previous = entry["name"]
    return {
        "name": config.get("name"),
        "trainable": config.get("trainable", True),
        "layers": entries,
        "input_layers": [entries[0]["name"], 0, 0] if keras3 else [[entries[0]["name"], 0, 0]],
        "output_layers": [previous, 0, 0] if keras3 else [[previous, 0, 0]],
    }


def _flat_config(config: dict, keras3: bool, sequential: bool = False) -> tuple[dict, int]:
    """The config with every nested model (called once) replaced by its layers; how many."""
    if sequential:
        config = _sequential_as_functional(config, keras3)
    layers, renamed, nested = [], {}, 0
    for entry in config["layers"]:
        entry = {**entry, "inbound_nodes": _listed(entry.get("inbound_nodes") or [])}
        _rewire(entry, renamed, keras3)
        nodes = entry.get("inbound_nodes") or []
        if not _is_model_entry(entry) or len(nodes) != 1:
            layers.append(entry)
            continue
        inner, count = _flat_config(
            entry["config"], keras3, sequential=entry["class_name"] == "Sequential"
        )
        nested += 1 + count
        call_inputs = [list(ref[:3]) for ref in _tensor_refs(nodes[0], keras3)]
        inner_inputs = _triples(inner["input_layers"])
        if len(call_inputs) != len(inner_inputs):
            raise UserError(
                f"the nested model '{entry['name']}' takes {len(inner_inputs)} inputs but is "
                f"called on {len(call_inputs)}; AVLSI cannot flatten it"
            )
        feeds = {name: [ref] for (name, _, _), ref in zip(inner_inputs, call_inputs, strict=True)}
        training = _call_training(nodes[0], keras3)
        for inner_entry in inner["layers"]:
            if _is_input(inner_entry):
                continue
            inner_entry = {**inner_entry, "inbound_nodes": _listed(inner_entry["inbound_nodes"])}
            _rewire(inner_entry, feeds, keras3)
            if training is not None:
                _set_training(inner_entry, bool(training), keras3)
            if "name" not in inner_entry:
                inner_entry["name"] = inner_entry["config"]["name"]
            layers.append(inner_entry)
        outputs = _triples(inner["output_layers"])
        renamed[entry["name"]] = [feeds.get(o[0], [o])[0] for o in outputs]
    names = [e.get("name", e["config"].get("name")) for e in layers]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UserError(
                f"layer name '{name}' is used both inside a nested model and outside it; "
                "rename one of them (layer names must be unique once the model is one graph)"
            )
        seen.add(name)
    outputs = [renamed.get(o[0], [None] * (o[2] + 1))[o[2]] or o for o in _triples(
        config["output_layers"])]  # fmt: skip
    flat = {**config, "layers": layers}
    flat["input_layers"] = _as_written(config["input_layers"], _triples(config["input_layers"]))
    flat["output_layers"] = _as_written(config["output_layers"], outputs)
    return flat, nested


def _as_written(original, refs: list[Ref]):
    """`refs` flat where the config wrote a single reference flat (Keras 3: one tensor, not
    a list of one, so that the model takes and returns a tensor)."""
    flat = bool(original) and isinstance(original[0], str)
    return refs[0] if flat and len(refs) == 1 else refs


def _same_weights(model, flat) -> None:
    """Give each layer of `flat` the weights of the layer of that name in `model`."""
    original = {layer.name: layer for layer in model._flatten_layers(include_self=False)}
    for layer in flat.layers:
        if layer.weights:
            layer.set_weights(original[layer.name].get_weights())


def has_nested_model(model) -> bool:
    keras = keras_of(model)
    return any(isinstance(layer, keras.Model) for layer in model.layers)


def flatten_nested(model, what: str = "the model") -> Any:
    """`model` with its nested models (each called once) replaced by their layers, or
    `model` itself when it nests none; the same outputs, checked on random inputs.

    Where flattening fails (a name used inside and outside, a config Keras cannot rebuild,
    other outputs) the model stays as it is, with a warning saying why: the analysis then
    refuses the groups that flow into the nested model, as it always did."""
    if not has_nested_model(model):
        return model
    try:
        flat, nested = _flattened(model)
    except Exception as exc:  # never worse than not flattening: the nested model stays
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}"
        log.warning("%s: its nested models stay nested (their groups cannot be pruned): %s",
                    what, reason)  # fmt: skip
        return model
    if flat is None:
        return model
    log.info("%s: %d nested model(s) flattened into one graph of %d layers", what, nested,
             len(flat.layers))  # fmt: skip
    return flat


def _flattened(model) -> tuple[Any, int]:
    """(the flat model or None when nothing nested is called once, how many were flattened)."""
    keras3, keras = is_keras3(model), keras_of(model)
    sequential = isinstance(model, keras.Sequential)
    config, nested = _flat_config(copy.deepcopy(model.get_config()), keras3, sequential)
    if not nested:
        return None, 0
    for entry in config["layers"]:
        entry.pop("build_config", None)
    with keras.utils.custom_object_scope(custom_objects(model)):
        flat = keras.Model.from_config(config)
    _same_weights(model, flat)
    from avlsi.graph import output_difference

    difference = output_difference(model, flat)
    if not difference <= 1e-5:
        raise UserError(f"flattening changed the outputs by {difference:.2g} (please report it)")
    return flat, nested
