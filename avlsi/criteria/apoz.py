"""APoZ, the Average Percentage of Zeros of a unit's ReLU output (Hu et al. 2016, "Network
Trimming"): the fraction of (sample, position) pairs where the unit outputs zero.

High APoZ goes first, so the score is 1 - APoZ: the fraction of positions where the unit
is active. Meaningful only for units followed by a ReLU (every model in avlsi.models).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from avlsi.criteria import sample_means, spatial_mean


def _active(act, _):
    return spatial_mean(tf.cast(act > 0, act.dtype))


def score(model, layers, context) -> dict[str, np.ndarray]:
    return sample_means(model, layers, context, _active)
