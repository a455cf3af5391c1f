"""Mean activation: the mean of a unit's (post-ReLU) output over the sample inputs.

Seed: `mean_activation_rank`. For a conv filter the mean runs over samples and spatial
positions; a unit that is rarely and weakly active goes first.
"""

from __future__ import annotations

import numpy as np

from avlsi.criteria import sample_means, spatial_mean


def score(model, layers, context) -> dict[str, np.ndarray]:
    return sample_means(model, layers, context, lambda act, _: spatial_mean(act))
