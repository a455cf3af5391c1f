"""Pruning criteria: each scores the units (filters / neurons) of the layers it is given.

A scorer is a function `(model, layers, context) -> {layer name: scores}` with one float
per output unit; the lowest scores are removed first. Its YAML file under
`conf/criterion/` names it in `_target_` and says which scopes and layer types it takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hydra.utils import get_method


@dataclass
class ScoringContext:
    """What a criterion may look at besides the model: sample data and the run's seed."""

    x: np.ndarray  # sample inputs from the training set
    y: np.ndarray  # their labels
    seed: int
    batch_size: int = 128


Scorer = Callable[..., dict[str, np.ndarray]]


def get_scorer(cfg) -> Scorer:
    """The scoring function that `criterion._target_` names."""
    return get_method(cfg._target_)


def unit_output_layer(model, layer):
    """The layer whose output is `layer`'s activation: its `<name>_relu` if there is one."""
    names = {candidate.name for candidate in model.layers}
    for suffix in ("_relu", "_act"):
        if layer.name + suffix in names:
            return model.get_layer(layer.name + suffix)
    return layer
