"""The units (filters / neurons) of a layer: which layers have them, and their weights.

A unit is one output channel of a layer with a kernel. Its incoming weights are the
kernel's slice along the output-channel axis: the last axis for Dense and ConvND, axis 2
for Conv2DTranspose / Conv3DTranspose ((..., out, in) kernels), the pointwise kernel's last
axis for SeparableConvND.
"""

from __future__ import annotations

import numpy as np

UNIT_TYPES = (
    "Dense",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "SeparableConv1D",
    "SeparableConv2D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
)
"""Layer classes whose output channels are units that pruning can remove."""

MASKABLE_TYPES = tuple(t for t in UNIT_TYPES if not t.startswith("Separable"))
"""Layer classes with a single `kernel`, whose single weights magnitude pruning can zero."""


def has_units(layer) -> bool:
    return type(layer).__name__ in UNIT_TYPES


def unit_kernel(layer) -> np.ndarray:
    """The layer's incoming weights with the unit axis last: (..., units)."""
    kind = type(layer).__name__
    if kind.startswith("Separable"):
        return np.asarray(layer.pointwise_kernel.numpy())
    kernel = np.asarray(layer.kernel.numpy())
    if kind.endswith("Transpose"):
        return np.moveaxis(kernel, -2, -1)  # (..., out, in) -> (..., in, out)
    return kernel


def unit_count(layer) -> int:
    """How many units (output channels) the layer has."""
    return int(unit_kernel(layer).shape[-1])
