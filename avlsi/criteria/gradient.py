"""Loss gradient: the mean of |dL/da| over samples (and spatial positions, for a filter),
where a is the unit's post-ReLU output and L each sample's cross-entropy loss.

Seed: `grad_layerwise_rank`. Its scale differs from layer to layer, so it ranks units
within a layer only (scopes `layer` and `layerwise`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from avlsi.criteria import sample_means, spatial_mean


def score(model, layers, context) -> dict[str, np.ndarray]:
    return sample_means(
        model, layers, context, lambda _, grad: spatial_mean(tf.abs(grad)), gradients=True
    )
