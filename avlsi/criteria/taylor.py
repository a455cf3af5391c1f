"""First-order Taylor expansion (Molchanov et al. 2017, "Pruning Convolutional Neural
Networks for Resource Efficient Inference"): the loss change if a unit's output a were
set to zero is about |a * dL/da|.

Variant: per sample, a * dL/da is summed over the spatial positions of a filter, the sum
is made absolute, and the absolute values are averaged over the samples (the paper
averages over positions instead of summing: a constant factor per layer, which the
per-layer RMS scaling of scope=global removes, as the paper's per-layer L2 scaling does).
a is the post-ReLU output, L each sample's cross-entropy loss.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from avlsi.criteria import sample_means, spatial_sum


def _change(act, grad):
    return tf.abs(spatial_sum(act * grad))


def score(model, layers, context) -> dict[str, np.ndarray]:
    return sample_means(model, layers, context, _change, gradients=True)
