"""L1 magnitude: the sum of absolute incoming weights of each filter / neuron."""

from __future__ import annotations

import numpy as np

from avlsi.units import unit_kernel


def l1_norm(kernel: np.ndarray) -> np.ndarray:
    """Sum of |w| over every axis but the last (the unit axis)."""
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


def score(model, layers, context) -> dict[str, np.ndarray]:
    return {layer.name: l1_norm(unit_kernel(layer)) for layer in layers}
