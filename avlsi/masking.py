"""Unstructured pruning: zero single weights and keep them zero through fine-tuning.

A mask is held by a variable constraint, which the Keras optimizer applies inside the
compiled training step right after each update: one element-wise multiply per masked
kernel per step, no round trip through numpy.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf  # (importing avlsi.masking ran avlsi/__init__: tf-keras is set up)

from avlsi.select import lowest_within_caps, n_to_remove, normalise, share_of


class KeepMask:
    """A variable constraint `w -> w * mask` (not serialised with the model)."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = tf.constant(mask, dtype=tf.float32)

    def __call__(self, weight):
        return weight * tf.cast(self.mask, weight.dtype)


def _mask_smallest(magnitudes: np.ndarray, count: int) -> np.ndarray:
    keep = np.ones(magnitudes.size, dtype=bool)
    keep[np.argsort(magnitudes.ravel(), kind="stable")[:count]] = False
    return keep.reshape(magnitudes.shape)


def magnitude_masks(
    layers,
    scope: str,
    psize: float,
    threshold: float | None = None,
    normalize: str = "none",
    min_units: int = 1,
) -> dict[str, np.ndarray]:
    """Keep-masks for the kernels of `layers`: smallest |w| removed (True = kept).

    With `threshold`, every |w| < threshold goes; otherwise psize of the weights go
    (psize x count rounded half up exactly), per layer (`layer`, `layerwise`) or ranked
    over all the layers' magnitudes (`global`), after `normalise(|w|, normalize)` per layer
    (default none: raw magnitudes). A kernel always keeps its `min_units` largest weights.
    """
    kernels = {layer.name: np.abs(layer.get_weights()[0]) for layer in layers}
    if threshold is not None:
        return {
            name: _mask_smallest(k, min(int((k < threshold).sum()), max(0, k.size - min_units)))
            for name, k in kernels.items()
        }
    if str(getattr(scope, "value", scope)) != "global":
        return {
            n: _mask_smallest(k, n_to_remove(psize, k.size, min_units)) for n, k in kernels.items()
        }
    sizes = [k.size for k in kernels.values()]
    flat = np.concatenate([normalise(k.ravel(), normalize) for k in kernels.values()])
    owner = np.repeat(np.arange(len(sizes)), sizes)
    caps = [max(0, size - min_units) for size in sizes]
    keep = np.ones(flat.size, dtype=bool)
    keep[lowest_within_caps(flat, owner, caps, share_of(psize, flat.size))] = False
    masks, start = {}, 0
    for name, k in kernels.items():
        masks[name] = keep[start : start + k.size].reshape(k.shape)
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
