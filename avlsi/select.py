"""Which units go: scores + scope + psize -> indices (what may be pruned: avlsi.targets).

Rules: the lowest scores go first (ties: the lower index first, earlier layer first);
a layer never goes below `criterion.min_units` units (default 1: no layer loses all its
units).
`psize x units` is rounded half up exactly, on the decimal psize the user typed.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from avlsi.errors import UserError


def share_of(psize: float, count: int) -> int:
    """psize x count rounded half up, exactly: 0.29 x 50 = 14.5 -> 15 (float arithmetic: 14).

    psize is read as the decimal it prints as (`str`: the shortest repr, i.e. what was typed).
    """
    exact = Decimal(str(psize)) * count
    return max(0, int(exact.to_integral_value(rounding=ROUND_HALF_UP)))


def n_to_remove(psize: float, n_units: int, min_units: int = 1) -> int:
    """psize x n_units (rounded half up), leaving the layer at least `min_units` units."""
    return max(0, min(n_units - min_units, share_of(psize, n_units)))


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


def _scale(how: str, scores: np.ndarray) -> float:
    magnitudes = np.abs(scores)
    if how == "rms":
        return float(np.sqrt(np.mean(np.square(magnitudes))))
    if how == "l2":
        return float(np.sqrt(np.sum(np.square(magnitudes))))
    if how == "max":
        return float(np.max(magnitudes))
    return float(np.mean(magnitudes))  # mean


NORMALISERS = ("rms", "l2", "max", "mean", "none")


def normalise(scores: np.ndarray, how: str = "rms") -> np.ndarray:
    """One layer's scores divided by their rms, l2 norm, max |s| or mean |s| (or left as are).

    So that layers of different scale can be ranked together (scope=global). A layer whose
    scores are all zero stays all zero.
    """
    how = str(getattr(how, "value", how))
    if how not in NORMALISERS:
        raise UserError(
            f"criterion.normalize={how} is not known; choose one of: {', '.join(NORMALISERS)}"
        )
    scores = np.asarray(scores, dtype=np.float64)
    if how == "none" or scores.size == 0:
        return scores
    scale = _scale(how, scores)
    return scores / scale if scale > 0 else np.zeros_like(scores)


def lowest_within_caps(values: np.ndarray, owner: np.ndarray, caps, budget: int) -> np.ndarray:
    """Positions of the `budget` lowest values, at most caps[o] of them from each owner o.

    The same as walking the values from the lowest (ties: lower position first) and skipping
    those whose owner has given its cap, done without a Python loop (for millions of weights).
    """
    order = np.argsort(values, kind="stable")
    owners = np.asarray(owner)[order]
    by_owner = np.argsort(owners, kind="stable")  # each owner's values, lowest first
    grouped = owners[by_owner]
    starts = np.searchsorted(grouped, grouped, side="left")
    rank = np.empty(len(order), dtype=np.int64)
    rank[by_owner] = np.arange(len(order)) - starts  # 0 = the owner's lowest value
    allowed = order[rank < np.asarray(caps, dtype=np.int64)[owners]]
    return allowed[: max(0, budget)]


def kept_rounded(units: int, removed: int, round_to: int) -> int:
    """How many of `removed` units go when the layer must keep a multiple of `round_to`:
    the kept count is rounded up (never more removed than asked), at most all `units`."""
    if round_to <= 1 or removed <= 0:
        return max(0, removed)
    kept = -(-(units - removed) // round_to) * round_to  # round up
    return max(0, units - min(kept, units))


def round_to_multiple(
    chosen: dict[str, list[int]], scores: dict[str, np.ndarray], round_to: int
) -> dict[str, list[int]]:
    """Each layer keeps a multiple of `round_to` units (Torch-Pruning's `round_to`): of the
    units chosen to go, the highest-scored stay until the count kept is one."""
    if round_to <= 1:
        return chosen
    out = {}
    for name, indices in chosen.items():
        goes = kept_rounded(len(scores[name]), len(indices), round_to)
        ranked = sorted(indices, key=lambda i: (scores[name][i], i))  # lowest score first
        out[name] = sorted(ranked[:goes])
    return out


def select_units(
    scores: dict[str, np.ndarray],
    scope: str,
    psize: float,
    normalize: str = "rms",
    min_units: int = 1,
    round_to: int = 1,
) -> dict[str, list[int]]:
    """The unit indices to remove from each layer (ascending), lowest scores first.

    `global` ranks every layer's scores together after `normalise(scores, normalize)` and
    removes psize of all the units; every scope leaves each layer `min_units` units, and
    with `round_to` > 1 a multiple of `round_to` units (see `round_to_multiple`).
    """
    return round_to_multiple(
        _select_units(scores, scope, psize, normalize, min_units), scores, round_to
    )


def _select_units(
    scores: dict[str, np.ndarray], scope: str, psize: float, normalize: str, min_units: int
) -> dict[str, list[int]]:
    scope = str(getattr(scope, "value", scope))
    if scope != "global":
        return {
            name: sorted(
                np.argsort(s, kind="stable")[: n_to_remove(psize, len(s), min_units)].tolist()
            )
            for name, s in scores.items()
        }
    names = list(scores)
    sizes = [len(scores[n]) for n in names]
    flat = np.concatenate([normalise(scores[n], normalize) for n in names])
    owner = np.repeat(np.arange(len(names)), sizes)
    index = np.concatenate([np.arange(size) for size in sizes])
    caps = [max(0, size - min_units) for size in sizes]
    chosen: dict[str, list[int]] = {n: [] for n in names}
    for pos in lowest_within_caps(flat, owner, caps, share_of(psize, len(flat))):
        chosen[names[owner[pos]]].append(int(index[pos]))
    return {name: sorted(idx) for name, idx in chosen.items()}
