"""First-order Taylor expansion (Molchanov et al. 2017, "Pruning Convolutional Neural
Networks for Resource Efficient Inference"): the loss change if a unit's output a were
set to zero is about |a * dL/da|.

Variant: per sample, a * dL/da is summed over the spatial positions of a filter, the sum
is made absolute, and the absolute values are averaged over the samples (the paper
averages over positions instead of summing: a constant factor per layer, which any
per-layer scaling of scope=global removes). a is the post-ReLU output, L each sample's
cross-entropy loss.

scope=global: the paper divides each layer's scores by their L2 norm before ranking them
together; `criterion.normalize=l2` reproduces that. The default, rms (the original AVLSI
code's), divides by L2 / sqrt(units) and so ranks differently when layers differ in size
(l2 removes relatively more units from larger layers).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from avlsi.criteria import sample_means, spatial_sum


def _change(act, grad):
    return tf.abs(spatial_sum(act * grad))


def score(model, layers, context) -> dict[str, np.ndarray]:
    return sample_means(model, layers, context, _change, gradients=True)
