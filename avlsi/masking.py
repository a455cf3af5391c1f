"""Unstructured pruning: zero single weights and keep them zero through fine-tuning.

A mask is held by a variable constraint, which the Keras optimizer applies inside the
compiled training step right after each update: one element-wise multiply per masked
kernel per step, no round trip through numpy.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf  # (importing avlsi.masking ran avlsi/__init__: tf-keras is set up)


class KeepMask:
    """A variable constraint `w -> w * mask` (not serialised with the model)."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = tf.constant(mask, dtype=tf.float32)

    def __call__(self, weight):
        return weight * tf.cast(self.mask, weight.dtype)


def _n_smallest(size: int, psize: float) -> int:
    return max(0, min(size - 1, math.floor(psize * size + 0.5)))


def _mask_smallest(magnitudes: np.ndarray, count: int) -> np.ndarray:
    keep = np.ones(magnitudes.size, dtype=bool)
    keep[np.argsort(magnitudes.ravel(), kind="stable")[:count]] = False
    return keep.reshape(magnitudes.shape)


def magnitude_masks(
    layers, scope: str, psize: float, threshold: float | None = None
) -> dict[str, np.ndarray]:
    """Keep-masks for the kernels of `layers`: smallest |w| removed (True = kept).

    With `threshold`, every |w| < threshold goes; otherwise psize of the weights go, per
    layer (`layer`, `layerwise`) or ranked over all the layers' raw magnitudes (`global`).
    A layer always keeps at least one weight.
    """
    kernels = {layer.name: np.abs(layer.get_weights()[0]) for layer in layers}
    if threshold is not None:
        masks = {name: k >= threshold for name, k in kernels.items()}
        for name, mask in masks.items():
            if not mask.any():
                mask.flat[np.argmax(kernels[name])] = True
        return masks
    if str(getattr(scope, "value", scope)) != "global":
        return {n: _mask_smallest(k, _n_smallest(k.size, psize)) for n, k in kernels.items()}
    flat = np.concatenate([k.ravel() for k in kernels.values()])
    cut = _n_smallest(flat.size, psize)
    keep = _mask_smallest(flat, cut).ravel()
    masks, start = {}, 0
    for name, k in kernels.items():
        masks[name] = keep[start : start + k.size].reshape(k.shape)
        if not masks[name].any():
            masks[name].flat[np.argmax(k)] = True
        start += k.size
    return masks


def apply_masks(model, masks: dict[str, np.ndarray]) -> None:
    """Zero the masked weights now and hold them at zero in every later training step."""
    for name, mask in masks.items():
        layer = model.get_layer(name)
        weights = layer.get_weights()
        weights[0] = weights[0] * mask
        layer.set_weights(weights)
        layer.kernel._constraint = KeepMask(mask)


def masks_from_zeros(model, names: list[str]) -> dict[str, np.ndarray]:
    """Recover masks from a saved model: a weight that is exactly zero stays zero."""
    return {name: model.get_layer(name).get_weights()[0] != 0 for name in names}
