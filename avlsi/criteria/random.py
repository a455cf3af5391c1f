"""Random scores from the run's seed: the baseline every criterion must beat."""

from __future__ import annotations

import numpy as np

from avlsi.units import unit_count


def score(model, layers, context) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(context.seed)
    return {layer.name: rng.random(unit_count(layer)) for layer in layers}
