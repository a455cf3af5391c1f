"""Every use of kerassurgeon lives here; importing this module makes it work on TF 2.21.

kerassurgeon 0.2.0 calls `len()` on KerasTensors in two helpers, which TF >= 2.4 forbids
(upstream issues #57/#61/#69). The adapter makes both treat anything that is not a list
or tuple as one tensor; nothing else in kerassurgeon is changed.
"""

from __future__ import annotations

import contextlib
import io
import logging

import avlsi  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

_root_level = logging.getLogger().level
from kerassurgeon import Surgeon, utils  # noqa: E402

# kerassurgeon calls logging.basicConfig(INFO) at import; undo its change of level.
logging.getLogger().setLevel(_root_level)
log = logging.getLogger(__name__)


def _single_element(x):
    """Return x[0] for a one-element list/tuple, anything else unchanged."""
    if isinstance(x, list | tuple) and len(x) == 1:
        return x[0]
    return x


def _get_one_tensor(x):
    """Return the only tensor of x (a tensor or a one-element list/tuple)."""
    if isinstance(x, list | tuple):
        if len(x) != 1:
            raise ValueError(f"expected one tensor, got {len(x)}")
        return x[0]
    return x


utils.single_element = _single_element
utils.get_one_tensor = _get_one_tensor


def delete_units(model, units: dict[str, list[int]]):
    """Return a new model without the given output units (filters / neurons) per layer.

    `units` maps a layer name to the indices of its units to remove; layers with no
    indices are left alone. All removals happen in one kerassurgeon pass.
    """
    jobs = {name: sorted(set(map(int, idx))) for name, idx in units.items() if len(idx)}
    if not jobs:
        return model
    surgeon = Surgeon(model, copy=True)
    for name, channels in jobs.items():
        surgeon.add_job("delete_channels", model.get_layer(name), channels=channels)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # kerassurgeon prints a line per layer
        pruned = surgeon.operate()
    for line in printed.getvalue().splitlines():
        log.info("kerassurgeon: %s", line)
    return pruned
