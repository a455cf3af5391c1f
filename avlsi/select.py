"""Which layers may lose units, and which units go: scores + scope + psize -> indices.

Rules: the lowest scores go first (ties: the lower index first, earlier layer first);
`layerwise` and `global` never touch the first conv layer or the output layer; no layer
ever loses all its units.
"""

from __future__ import annotations

import math

import numpy as np

from avlsi.errors import UserError
from avlsi.models import OUTPUT_LAYER

PRUNABLE_TYPES = ("Conv2D", "Dense")


def n_to_remove(psize: float, n_units: int) -> int:
    """round(psize * n), half up, never all n units."""
    return max(0, min(n_units - 1, math.floor(psize * n_units + 0.5)))


def _units(layer) -> int:
    return int(layer.get_weights()[0].shape[-1])


def candidate_layers(model, scope: str) -> list:
    """Conv2D / Dense layers that `layerwise` / `global` may prune."""
    found = [layer for layer in model.layers if type(layer).__name__ in PRUNABLE_TYPES]
    first_conv = next((lyr for lyr in found if type(lyr).__name__ == "Conv2D"), None)
    return [lyr for lyr in found if lyr is not first_conv and lyr.name != OUTPUT_LAYER]


def accepted_layer_types(criterion) -> list[str]:
    """The layer types the criterion takes in its scope; UserError if it takes none."""
    scope = str(getattr(criterion.scope, "value", criterion.scope))
    accepted = {s: list(types) for s, types in criterion.layer_types.items() if types}
    if scope not in accepted:
        raise UserError(
            f"criterion={criterion.name} does not take criterion.scope={scope}; "
            f"choose one of: {', '.join(accepted)}"
        )
    return accepted[scope]


def prunable_layers(model, criterion) -> list:
    """The layers `criterion` will score, after checking its scope and layer types."""
    scope = str(getattr(criterion.scope, "value", criterion.scope))
    types = accepted_layer_types(criterion)
    if scope != "layer":
        layers = [lyr for lyr in candidate_layers(model, scope) if type(lyr).__name__ in types]
        if not layers:
            raise UserError(
                f"criterion={criterion.name} with scope={scope} found no {'/'.join(types)} "
                f"layer to prune in model={model.name}"
            )
        return layers
    names = [lyr.name for lyr in model.layers if type(lyr).__name__ in PRUNABLE_TYPES]
    names = [name for name in names if name != OUTPUT_LAYER]
    if not criterion.layer:
        raise UserError(
            f"criterion.scope=layer needs criterion.layer=NAME; model={model.name} has: "
            f"{', '.join(names)}"
        )
    try:
        layer = model.get_layer(criterion.layer)
    except ValueError:
        raise UserError(
            f"model={model.name} has no layer '{criterion.layer}'; prunable layers: "
            f"{', '.join(names)}"
        ) from None
    kind = type(layer).__name__
    if layer.name == OUTPUT_LAYER:
        raise UserError(
            f"the output layer cannot be pruned (its units are the classes); choose one of: "
            f"{', '.join(names)}"
        )
    if kind not in types:
        raise UserError(
            f"criterion={criterion.name} with scope=layer cannot prune {layer.name} ({kind}); "
            f"it takes {'/'.join(types)} layers: "
            f"{', '.join(n for n in names if type(model.get_layer(n)).__name__ in types)}"
        )
    return [layer]


def rms_normalise(scores: np.ndarray) -> np.ndarray:
    """Divide by the root mean square, so layers of different scale can be ranked together."""
    rms = float(np.sqrt(np.mean(np.square(scores, dtype=np.float64))))
    return scores / rms if rms > 0 else np.zeros_like(scores, dtype=np.float64)


def select_units(scores: dict[str, np.ndarray], scope: str, psize: float) -> dict[str, list[int]]:
    """The unit indices to remove from each layer (ascending), lowest scores first."""
    scope = str(getattr(scope, "value", scope))
    if scope != "global":
        return {
            name: sorted(np.argsort(s, kind="stable")[: n_to_remove(psize, len(s))].tolist())
            for name, s in scores.items()
        }
    names = list(scores)
    flat = np.concatenate([rms_normalise(np.asarray(scores[n], dtype=np.float64)) for n in names])
    owner = np.concatenate([np.full(len(scores[n]), i) for i, n in enumerate(names)])
    index = np.concatenate([np.arange(len(scores[n])) for n in names])
    budget = math.floor(psize * len(flat) + 0.5)
    chosen: dict[str, list[int]] = {n: [] for n in names}
    for pos in np.argsort(flat, kind="stable"):
        if budget == 0:
            break
        name = names[owner[pos]]
        if len(chosen[name]) < len(scores[name]) - 1:
            chosen[name].append(int(index[pos]))
            budget -= 1
    return {name: sorted(idx) for name, idx in chosen.items()}


def check_something_goes(layers: list, criterion, psize: float | None) -> None:
    """Refuse a psize so small that no unit (or, unstructured, no weight) of any layer goes."""
    if psize is None or not getattr(criterion, "prunes", True) or criterion.threshold is not None:
        return
    scope = str(getattr(criterion.scope, "value", criterion.scope))
    what = "unit" if criterion.structured else "weight"
    sizes = [_units(lyr) if criterion.structured else lyr.get_weights()[0].size for lyr in layers]
    if not sizes:
        return
    if scope == "global":
        goes, pool = math.floor(psize * sum(sizes) + 0.5), sum(sizes)
    else:
        goes, pool = max(n_to_remove(psize, n) for n in sizes), max(sizes)
    if goes == 0:
        where = "all prunable layers together" if scope == "global" else "the largest layer"
        raise UserError(
            f"psize={psize} removes no {what} of any layer: {where} has {pool:,} {what}s and "
            f"round(psize x {pool:,}) = 0; pass psize of at least {0.5 / pool:.2g}"
        )
