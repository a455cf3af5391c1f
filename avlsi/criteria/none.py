"""The `none` control: no unit is removed; the baseline is fine-tuned like the pruned models.

Its runs are the reference for "the same extra epochs": a fine-tuned model that beats the
unpruned baseline may owe it to fine-tuning, not to pruning. The pipeline skips scoring
for a criterion with `prunes: false`; this scorer only says so if called.
"""

from __future__ import annotations

import numpy as np


def score(model, layers, context) -> dict[str, np.ndarray]:
    """No scores: `none` selects nothing."""
    del model, layers, context
    return {}
