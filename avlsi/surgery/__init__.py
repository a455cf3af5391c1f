"""Structural surgery: remove output units (filters / neurons) from a Keras model.

One function in front of two independent engines that must agree (tests/test_surgery_native.py
runs both on the same tf-keras models and selections and compares every weight):

- `kerassurgeon` (`kerassurgeon_engine`): kerassurgeon 0.2.0 with AVLSI's adapter; walks the
  tf-keras node graph with channel masks. tf-keras models only (it needs the Keras 2 node API).
- `native` (`native`): AVLSI's own; takes the pruning groups of `avlsi.graph.pruning_groups`,
  writes the pruned model's config, rebuilds it with the model's own Keras and copies the
  kept slices of every weight. tf-keras and Keras 3 models.

`engine="auto"` is kerassurgeon for tf-keras models (as before) and native for Keras 3 ones.
Every refusal is a `SurgeryError`, one line naming the layer.
"""

from __future__ import annotations

from avlsi.errors import UserError

ENGINES = ("auto", "kerassurgeon", "native")


class SurgeryError(UserError):
    """Units cannot be removed from this graph as asked; the message names the layer."""


def resolve_engine(model, engine: str = "auto") -> str:
    """The engine that `engine` means for `model`: "kerassurgeon" or "native"."""
    from avlsi.kerasapi import is_keras3

    if engine not in ENGINES:
        raise SurgeryError(f"unknown surgery engine {engine!r}: use one of {', '.join(ENGINES)}")
    keras3 = is_keras3(model)
    if engine == "auto":
        return "native" if keras3 else "kerassurgeon"
    if engine == "kerassurgeon" and keras3:
        raise SurgeryError(
            f"the kerassurgeon engine cannot prune Keras 3 model '{model.name}' (it needs "
            "tf-keras); use the native engine (surgery.engine=native or auto)"
        )
    return engine


def delete_units(model, units: dict[str, list[int]], engine: str = "auto"):
    """Return a new model without the given output units (filters / neurons) per layer.

    `units` maps a producer layer's name to the indices of its units to remove (producers
    of one pruning group lose the same indices); layers with no indices are left alone, and
    `model` itself comes back when nothing is removed. Raises SurgeryError naming the layer
    for anything that cannot be removed exactly.
    """
    if resolve_engine(model, engine) == "native":
        from avlsi.surgery.native import delete_units as native_delete

        return native_delete(model, units)
    from avlsi.surgery.kerassurgeon_engine import delete_units as kerassurgeon_delete

    return kerassurgeon_delete(model, units)


__all__ = ["ENGINES", "SurgeryError", "delete_units", "resolve_engine"]
