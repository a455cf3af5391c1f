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
