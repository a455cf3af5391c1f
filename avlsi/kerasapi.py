"""Which Keras a model belongs to: tf-keras (the Keras 2 API) or the Keras 3 package.

Both live in one process: `TF_USE_LEGACY_KERAS=1` makes `tf.keras` the tf-keras package,
while `import keras` still gives Keras 3. Code that builds, clones or loads layers for a
given model asks this module for the right one instead of using `tf.keras`.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import avlsi  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

KERAS_PACKAGES = {2: "tf_keras", 3: "keras"}


def is_keras3(obj) -> bool:
    """True when `obj` (a model, layer, tensor or class) comes from the Keras 3 package."""
    cls = obj if isinstance(obj, type) else type(obj)
    for klass in cls.__mro__:
        root = klass.__module__.split(".")[0]
        if root == "keras":
            return True
        if root == "tf_keras":
            return False
    return False


def keras_version(obj) -> int:
    """2 for tf-keras objects, 3 for Keras 3 ones."""
    return 3 if is_keras3(obj) else 2


def keras_module(version: int) -> ModuleType:
    """The Keras package for `version` (2: tf_keras, 3: keras)."""
    return importlib.import_module(KERAS_PACKAGES[version])


def keras_of(obj) -> ModuleType:
    """The Keras package `obj` belongs to."""
    return keras_module(keras_version(obj))


def loaded_kerases() -> list[ModuleType]:
    """The Keras packages this process has imported (tf_keras, keras), without importing."""
    return [sys.modules[name] for name in KERAS_PACKAGES.values() if name in sys.modules]


def custom_objects(model) -> dict[str, type]:
    """The model's layer classes from outside Keras' own layers, by class and registered
    name, so that they are found when the config is read back (e.g. ConvNeXt's LayerScale).
    Keras' own classes are left to Keras (Keras 3's op `Add` is not the layer `Add`)."""
    keras = keras_of(model)
    builtin = ("keras.src.layers.", "keras.src.models.", "tf_keras.src.layers.",
               "tf_keras.src.engine.")  # fmt: skip
    found: dict[str, type] = {}
    for layer in model._flatten_layers(include_self=False):
        cls = type(layer)
        if cls.__module__.startswith(builtin):
            continue
        found[cls.__name__] = cls
        found[keras.saving.get_registered_name(cls)] = cls
    return found
