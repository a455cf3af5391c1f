"""Size and cost of a model: parameters, non-zero parameters, multiply-adds."""

from __future__ import annotations

import numpy as np


def count_params(model) -> int:
    """All weights, trainable or not (what `model.count_params()` reports)."""
    return int(model.count_params())


def count_nonzero_params(model) -> int:
    """Weights that are not exactly zero: falls when single weights are zeroed."""
    return int(sum(np.count_nonzero(w) for w in model.get_weights()))


def _layer_macs(layer) -> int:
    kind = type(layer).__name__
    if kind == "Conv2D":
        kh, kw, cin, cout = layer.kernel.shape
        _, h, w, _ = layer.output.shape
        return int(h * w * kh * kw * cin * cout // max(1, layer.groups))
    if kind == "Dense":
        cin, cout = layer.kernel.shape
        return int(cin * cout)
    return 0


def count_macs(model) -> int:
    """Multiply-adds of one forward pass for one input (Conv2D and Dense layers)."""
    return int(sum(_layer_macs(layer) for layer in model.layers))


def size_metrics(model, prefix: str) -> dict[str, float]:
    """`{prefix}.params`, `{prefix}.nonzero_params` and `{prefix}.macs` of a model."""
    return {
        f"{prefix}.params": count_params(model),
        f"{prefix}.nonzero_params": count_nonzero_params(model),
        f"{prefix}.macs": count_macs(model),
    }


def relative_metrics(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """What a pruned stage kept of the baseline, as metrics the MLflow chart view can plot.

    `{prefix}.kept_params` / `.kept_macs`: fractions of the baseline's non-zero parameters /
    multiply-adds; `.compression`: baseline parameters / non-zero parameters kept (Blalock et
    al. 2020); `.accuracy_drop`: baseline minus this stage's test accuracy, percentage points.
    """
    base, this = "baseline.", f"{prefix}."
    out = {}
    if metrics.get(base + "nonzero_params") and this + "nonzero_params" in metrics:
        kept = metrics[this + "nonzero_params"]
        out[this + "kept_params"] = kept / metrics[base + "nonzero_params"]
        out[this + "compression"] = metrics[base + "params"] / max(1, kept)
    if metrics.get(base + "macs") and this + "macs" in metrics:
        out[this + "kept_macs"] = metrics[this + "macs"] / metrics[base + "macs"]
    if base + "test_accuracy" in metrics and this + "test_accuracy" in metrics:
        drop = metrics[base + "test_accuracy"] - metrics[this + "test_accuracy"]
        out[this + "accuracy_drop"] = 100.0 * drop
    return out
