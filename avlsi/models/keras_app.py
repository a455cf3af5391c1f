"""model=keras_app: any `keras.applications` constructor, built for the dataset.

`model.keras` picks the package: 2 (default) `tf_keras.applications`, 3 Keras 3's
`keras.applications`.

`model.name` names the constructor (MobileNetV2, ResNet50, ...); it gets `include_top=True`,
`classes` and `input_shape` from the dataset, `weights=None` (random initial weights) or
`model.weights=PATH` (a local weights file), and `model.kwargs` as further arguments
(`model.kwargs.alpha=0.35`). Constructors that take `include_preprocessing` get `False`
unless `model.kwargs` says otherwise: their preprocessing expects pixels in 0..255, AVLSI's
data is scaled to [0, 1]. Data with any number of channels works with random weights.
"""

from __future__ import annotations

import difflib
import inspect
import re

from avlsi.errors import UserError, clip

SUPPLIED = ("include_top", "weights", "classes", "input_shape", "input_tensor")


def check_kwargs(cfg) -> None:
    """model.kwargs may not set what AVLSI supplies (before TensorFlow loads)."""
    for key in cfg.kwargs:
        if key in SUPPLIED:
            where = "model.weights" if key == "weights" else "the dataset"
            raise UserError(
                f"model.kwargs.{clip(key)} is not yours to set: AVLSI supplies {key} "
                f"(from {where}); remove it"
            )


def constructors(version: int = 2) -> dict:
    """Every model constructor of keras.applications (of tf-keras, or Keras 3), by name."""
    from avlsi.kerasapi import keras_module

    apps = keras_module(version).applications
    return {
        n: getattr(apps, n) for n in dir(apps) if n[:1].isupper() and callable(getattr(apps, n))
    }


def constructor(name: str, version: int = 2):
    """The constructor called `name`; a UserError suggesting close names otherwise."""
    found = constructors(version)
    if name in found:
        return found[name]
    by_lower = {n.lower(): n for n in found}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)
    hint = (
        f"did you mean {', '.join(by_lower[c] for c in close)}?"
        if close
        else f"choose one of: {', '.join(sorted(found))}"
    )
    raise UserError(f"model.name={clip(name)} is not a keras.applications model; {hint}")


def _shape(input_shape) -> str:
    return "x".join(str(d) for d in input_shape)


def build(input_shape: tuple[int, ...], num_classes: int, cfg):
    """`keras.applications.<cfg.name>(...)` for this input shape and class count, in the
    Keras `cfg.keras` names."""
    from omegaconf import OmegaConf

    name = str(cfg.name)
    build_fn = constructor(name, int(cfg.get("keras", 2)))
    check_kwargs(cfg)
    kwargs = OmegaConf.to_container(cfg.kwargs, resolve=True)
    accepted = inspect.signature(build_fn).parameters
    if "include_preprocessing" in accepted:
        kwargs.setdefault("include_preprocessing", False)
    unknown = [
        k for k in kwargs if k not in accepted or accepted[k].kind == accepted[k].VAR_KEYWORD
    ]
    if unknown:  # (their **kwargs are for Keras' own use)
        takes = ", ".join(
            k for k, p in accepted.items() if k not in SUPPLIED and p.kind != p.VAR_KEYWORD
        )
        raise UserError(f"{name} takes no argument model.kwargs.{unknown[0]}; it takes: {takes}")
    weights = None if cfg.weights is None else str(cfg.weights)
    try:
        return build_fn(
            include_top=True,
            weights=weights,
            classes=num_classes,
            input_shape=tuple(input_shape),
            **kwargs,
        )
    except (ValueError, TypeError, OSError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        least = re.search(r"at least (\d+)x(\d+)", text)
        if least:
            raise UserError(
                f"{name} needs inputs of at least {least.group(1)}x{least.group(2)}; the "
                f"dataset gives {_shape(input_shape)}"
            ) from err
        raise UserError(
            f"model=keras_app {name} cannot be built for input "
            f"{_shape(input_shape)} and {num_classes} classes: {text}"
        ) from err
