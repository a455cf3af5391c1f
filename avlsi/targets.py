"""What a criterion may prune in a model: groups of coupled units, or kernels to mask.

Structured criteria prune groups (`avlsi.graph`): the units of all of a group's producer
layers go together, so a residual sum or a concatenation never sees mismatched channels.
Rules: the output layer(s) never lose units (their units are the model's outputs);
`layerwise` and `global` leave the first conv layer's group alone; a group the graph
analysis cannot follow is refused with its reason, never guessed at.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from avlsi.errors import UserError
from avlsi.select import accepted_layer_types, select_units, share_of
from avlsi.units import MASKABLE_TYPES, has_units

log = logging.getLogger(__name__)

GROUP_REDUCERS = ("mean", "sum", "max", "first")


@dataclass
class Targets:
    """The layers a criterion scores and, for structured criteria, the groups they form."""

    layers: list  # Keras layers to score (structured: every producer of `groups`)
    groups: list = field(default_factory=list)  # avlsi.graph.Group, structured only
    left_out: list = field(default_factory=list)  # groups not pruned, with their reasons


def _scope(criterion) -> str:
    return str(getattr(criterion.scope, "value", criterion.scope))


def _kind(layer) -> str:
    return type(layer).__name__


def _first_conv(model):
    return next((lyr for lyr in model.layers if "Conv" in _kind(lyr) and has_units(lyr)), None)


def _output_names(model) -> set[str]:
    from avlsi.models import output_layers

    return {layer.name for layer in output_layers(model)}


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _named_layer(model, criterion, candidates: list[str]):
    if not criterion.layer:
        raise UserError(
            f"criterion.scope=layer needs criterion.layer=NAME; model={model.name} has: "
            f"{_listing(candidates)}"
        )
    try:
        return model.get_layer(criterion.layer)
    except ValueError:
        raise UserError(
            f"model={model.name} has no layer '{criterion.layer}'; prunable layers: "
            f"{_listing(candidates)}"
        ) from None


def prune_targets(model, criterion) -> Targets:
    """The groups (structured) or kernels (unstructured) that `criterion` will prune."""
    if not criterion.structured:
        return _mask_targets(model, criterion)
    from avlsi.graph import pruning_groups

    types = accepted_layer_types(criterion)
    groups = pruning_groups(model)
    by_producer = {name: g for g in groups for name in g.producers}
    prunable_names = [n for g in groups if g.prunable for n in g.producers]
    if _scope(criterion) == "layer":
        layer = _named_layer(model, criterion, prunable_names)
        group = by_producer.get(layer.name)
        if group is None:
            raise UserError(
                f"{layer.name} ({_kind(layer)}) has no units to prune; prunable layers: "
                f"{_listing(prunable_names)}"
            )
        if not group.prunable:
            raise UserError(f"{layer.name} cannot be pruned: {group.reason}")
        refused = [p for p in group.producers if _kind(model.get_layer(p)) not in types]
        if refused:
            raise UserError(
                f"criterion={criterion.name} with scope=layer cannot prune {refused[0]} "
                f"({_kind(model.get_layer(refused[0]))}); it takes {'/'.join(types)} layers"
            )
        return Targets([model.get_layer(p) for p in group.producers], [group])
    first = _first_conv(model)
    chosen, left_out = [], []
    for group in groups:
        kinds = {_kind(model.get_layer(p)) for p in group.producers}
        if not group.prunable:
            left_out.append(group)
        elif first is not None and first.name in group.producers:
            left_out.append(group)  # the first conv sees the raw input: kept by rule
        elif kinds <= set(types):
            chosen.append(group)
    if not chosen:
        reasons = sorted({g.reason for g in left_out if g.reason})
        why = f" (not prunable: {'; '.join(reasons[:3])})" if reasons else ""
        raise UserError(
            f"criterion={criterion.name} with scope={_scope(criterion)} found no "
            f"{'/'.join(types)} layer to prune in model={model.name}{why}"
        )
    layers = [model.get_layer(p) for g in chosen for p in g.producers]
    return Targets(layers, chosen, left_out)


def _mask_targets(model, criterion) -> Targets:
    """Unstructured: every kernel of an accepted type but the output layer(s) (and, for
    layerwise / global, the first conv); zeroing weights changes no shape, so groups
    do not matter."""
    types = [t for t in accepted_layer_types(criterion) if t in MASKABLE_TYPES]
    outputs = _output_names(model)
    with_kernel = [lyr for lyr in model.layers if _kind(lyr) in MASKABLE_TYPES]
    names = [lyr.name for lyr in with_kernel if lyr.name not in outputs]
    if _scope(criterion) == "layer":
        layer = _named_layer(model, criterion, names)
        if layer.name in outputs:
            raise UserError(
                f"the output layer {layer.name} cannot be pruned (its units are the model's "
                f"outputs); choose one of: {_listing(names)}"
            )
        if _kind(layer) not in types:
            raise UserError(
                f"criterion={criterion.name} with scope=layer cannot prune {layer.name} "
                f"({_kind(layer)}); it takes {'/'.join(types)} layers: {_listing(names)}"
            )
        return Targets([layer])
    first = _first_conv(model)
    layers = [
        lyr
        for lyr in with_kernel
        if lyr.name not in outputs and lyr is not first and _kind(lyr) in types
    ]
    if not layers:
        raise UserError(
            f"criterion={criterion.name} with scope={_scope(criterion)} found no "
            f"{'/'.join(types)} layer to prune in model={model.name}"
        )
    return Targets(layers)


def group_scores(
    scores: dict[str, np.ndarray], groups: list, reduce: str = "mean"
) -> dict[str, np.ndarray]:
    """One score per channel of each group (keyed by its first producer), from the scores
    of its producers: their `mean` (default), `sum`, `max`, or the `first` one's."""
    reduce = str(getattr(reduce, "value", reduce))
    if reduce not in GROUP_REDUCERS:
        raise UserError(
            f"criterion.group_reduce={reduce} is not known; choose one of: "
            f"{', '.join(GROUP_REDUCERS)}"
        )
    out = {}
    for group in groups:
        stacked = np.stack([np.asarray(scores[p], dtype=np.float64) for p in group.producers])
        if reduce == "first":
            out[group.producers[0]] = stacked[0]
        else:
            out[group.producers[0]] = getattr(np, reduce)(stacked, axis=0)
    return out


def n_to_remove_lowest(
    scores: np.ndarray, psize: float, min_units: int, round_to: int = 1
) -> list[int]:
    """The indices of the psize x units lowest scores (what `layerwise` removes)."""
    return select_units({"_": scores}, "layerwise", psize, "none", min_units, round_to)["_"]


def select_group_units(scores: dict[str, np.ndarray], targets: Targets, criterion, psize):
    """The units each producer layer loses: chosen per group, the same for all its producers."""
    per_group = group_scores(scores, targets.groups, getattr(criterion, "group_reduce", "mean"))
    round_to = int(getattr(criterion, "round_to", 1) or 1)
    ratios = dict(getattr(criterion, "ratios", None) or {})  # layerwise: a psize per group
    if ratios:
        chosen = {
            name: n_to_remove_lowest(group, ratios.get(name, psize), criterion.min_units, round_to)
            for name, group in per_group.items()
        }
    else:
        chosen = select_units(
            per_group, criterion.scope, psize, criterion.normalize, criterion.min_units, round_to
        )
    if round_to > 1 and not any(chosen.values()):
        raise UserError(
            f"criterion.round_to={round_to} leaves every layer whole at psize={psize}: "
            "rounding each layer's kept channels up to a multiple of it removes nothing; "
            "pass a larger psize or a smaller criterion.round_to"
        )
    return {p: chosen[g.producers[0]] for g in targets.groups for p in g.producers}


def check_something_goes(targets: Targets, criterion, psize: float | None) -> None:
    """Refuse a psize so small that no unit (or, unstructured, no weight) of any layer goes."""
    ratios = getattr(criterion, "ratios", None) or {}
    unknown = sorted(set(ratios) - {g.producers[0] for g in targets.groups})
    if unknown and criterion.structured:
        names = [g.producers[0] for g in targets.groups]
        raise UserError(
            f"criterion.ratios names {unknown[0]}, which is not a group layerwise prunes; "
            f"groups (by their first layer): {_listing(names)}"
        )
    if psize is None or not getattr(criterion, "prunes", True) or criterion.threshold is not None:
        return
    what = "unit" if criterion.structured else "weight"
    if criterion.structured:
        sizes = [g.channels for g in targets.groups]
    else:
        sizes = [int(np.prod(lyr.kernel.shape)) for lyr in targets.layers]
    if not sizes:
        return
    pool = sum(sizes) if _scope(criterion) == "global" else max(sizes)
    if share_of(psize, pool) == 0:  # the largest share any layer (or all, global) gives up
        where = (
            "all prunable layers together" if _scope(criterion) == "global" else "the largest layer"
        )
        raise UserError(
            f"psize={psize} removes no {what} of any layer: {where} has {pool:,} {what}s and "
            f"round(psize x {pool:,}) = 0; pass psize of at least {0.5 / pool:.2g}"
        )


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' * (n != 1)}"


def describe(targets: Targets) -> str:
    """One line for the log: how many groups are pruned, and why the others are not."""
    if not targets.groups:
        return _count(len(targets.layers), "layer")
    line = f"{_count(len(targets.groups), 'group')} ({_count(len(targets.layers), 'layer')})"
    reasons = [g.reason for g in targets.left_out if g.reason]
    if reasons:
        line += f"; {_count(len(reasons), 'group')} not prunable, e.g. {reasons[0]}"
    return line


__all__ = [
    "GROUP_REDUCERS",
    "Targets",
    "check_something_goes",
    "describe",
    "group_scores",
    "prune_targets",
    "select_group_units",
]
