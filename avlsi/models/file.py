"""model=file: a saved Keras model (`.keras`, `.h5`, SavedModel folder) is the baseline.

`check_file` looks at the file without TensorFlow (zip / HDF5 metadata only), so a wrong
path or a wrong kind of file is refused at once, and `keras_version_of` says which Keras
wrote it (the `keras_version` of metadata.json / the HDF5 attributes: 3.x is Keras 3).
`load` then loads it with that Keras (tf-keras or Keras 3) in safe mode (no Python `lambda`
is deserialised, whatever the format), not compiled, after importing `model.imports` (the
modules that define its custom layers).
"""

from __future__ import annotations

import importlib
import json
import os
import zipfile
from pathlib import Path

from avlsi.data.files import kind_of
from avlsi.errors import UserError, clip

SUFFIXES = (".keras", ".h5", ".hdf5")


def _setting(path: Path) -> str:
    return f"model.path={clip(path)}"


def check_file(path: Path) -> int:
    """A UserError unless `path` is a loadable-looking Keras model file or folder; returns
    the major version of the Keras that wrote it (2: tf-keras, 3: Keras 3)."""
    setting = _setting(path)
    kind = kind_of(path, "model.path")
    if kind == "missing":
        raise UserError(f"{setting} does not exist; pass your saved model's .keras or .h5 file")
    if kind == "folder":
        _check_saved_model(path)
        return 2  # Keras 3 writes no Keras SavedModel (its model.export has no Keras metadata)
    if kind != "file":
        raise UserError(f"{setting} is {kind}, not a model file")
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(
            f"{setting}: a model file ends in .keras, .h5 or .hdf5 (or is a SavedModel folder), "
            f"not '{path.suffix or '(no extension)'}'"
        )
    if not os.access(path, os.R_OK):
        raise UserError(f"{setting} cannot be read by this user (chmod u+r)")
    version = _h5_version(path) if path.suffix.lower() != ".keras" else _zip_version(path)
    return major_version(version)


def major_version(version: str) -> int:
    """3 for a `keras_version` of 3.x or later, else 2 (tf-keras writes 2.x, old files none)."""
    major = version.split(".")[0]
    return 3 if major.isdigit() and int(major) >= 3 else 2


def keras_version_of(path: Path) -> int:
    """Which Keras wrote the model file or folder at `path` (2 or 3), from its metadata."""
    return check_file(Path(path))


def _check_saved_model(path: Path) -> None:
    setting = _setting(path)
    if not (path / "saved_model.pb").is_file():
        raise UserError(
            f"{setting} is a folder without saved_model.pb; pass a .keras or .h5 file or a "
            "SavedModel folder"
        )
    if not (path / "keras_metadata.pb").is_file():
        raise UserError(
            f"{setting} is a SavedModel without Keras metadata (written by tf.saved_model.save "
            "or Keras 3's model.export), which cannot be loaded as a Keras model; save it with "
            "tf-keras' model.save('model.keras')"
        )


def _zip_version(path: Path) -> str:
    """The `keras_version` a `.keras` archive records in metadata.json."""
    setting = _setting(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names:
                raise UserError(f"{setting} has no config.json: it is not a Keras model file")
            meta = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise UserError(
            f"{setting} cannot be read as a .keras file (a zip archive): {err}"
        ) from None
    return str(meta.get("keras_version", ""))


def _h5_version(path: Path) -> str:
    """The `keras_version` an HDF5 model file records; a weights-only file is refused."""
    import h5py  # installed with TensorFlow, light to import

    setting = _setting(path)
    try:
        with h5py.File(path, "r") as h5:
            if "model_config" not in h5.attrs:
                raise UserError(
                    f"{setting} holds no model_config (weights only?); save the whole model "
                    "with model.save(...)"
                )
            version = h5.attrs.get("keras_version", b"")
    except OSError as err:
        raise UserError(f"{setting} cannot be read as an HDF5 model file: {err}") from None
    return version.decode() if isinstance(version, bytes) else str(version)


# The custom objects of the modules `model.imports` named (see import_user_modules).
_user_objects: dict[str, type] = {}


def _is_layer_class(value) -> bool:
    from avlsi.kerasapi import loaded_kerases

    bases = [keras.layers.Layer for keras in loaded_kerases()]
    return isinstance(value, type) and any(issubclass(value, base) for base in bases)


def import_user_modules(modules) -> None:
    """Import `model.imports` (once each): their registered classes become known to Keras,
    and their Layer subclasses (and a `custom_objects` dict, if they have one) are passed to
    every load of a model or stored model in this process."""
    for name in [str(m) for m in modules or []]:
        try:
            module = importlib.import_module(name)
        except Exception as err:  # noqa: BLE001  (the user's module: any failure is one line)
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise UserError(
                f"model.imports: cannot import {name!r} ({type(err).__name__}: {first}); it "
                "must be importable from the folder you run in (or PYTHONPATH)"
            ) from err
        found = dict(getattr(module, "custom_objects", None) or {})
        for value in vars(module).values():
            if _is_layer_class(value) and value.__module__ == module.__name__:
                found.setdefault(value.__name__, value)
        _user_objects.update(found)


def _known(name: str, version: int | None) -> bool:
    """Whether a class the config names (`package>Class` or `Class`) can be found now."""
    from avlsi.kerasapi import keras_module

    short = name.split(">")[-1]
    registered = keras_module(version).saving.get_registered_object(name)
    return registered is not None or name in _user_objects or short in _user_objects


def _custom_classes(path: Path) -> list[str]:
    """Best effort: the layer classes a .keras / .h5 file's config names from outside Keras."""
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                text = archive.read("config.json").decode()
        elif path.suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as h5:
                raw = h5.attrs["model_config"]
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
        else:
            return []
    except Exception:  # noqa: BLE001  (only a hint)
        return []
    found: list[str] = []

    def walk(obj) -> None:
        if isinstance(obj, dict):
            module = str(obj.get("module") or "")
            if "class_name" in obj and module and not module.startswith(("keras", "tf_keras")):
                found.append(str(obj.get("registered_name") or obj["class_name"]))
            for value in obj.values():
                walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)

    walk(json.loads(text))
    return sorted(set(found))


def load(input_shape: tuple[int, ...], num_classes: int, cfg):
    """The model saved at `cfg.path`, loaded with the Keras that wrote it, in safe mode and
    not compiled (after importing `cfg.imports`, the modules of its custom layers)."""
    path = Path(str(cfg.path)).expanduser()
    version = check_file(path)
    import_user_modules(cfg.get("imports"))
    try:
        return load_saved(path, version)
    except Exception as err:  # noqa: BLE001  (any loader failure is the file's problem)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        which = "Keras 3" if version == 3 else "tf-keras"
        imports = [str(m) for m in cfg.get("imports") or []]
        custom = [name for name in _custom_classes(path) if not _known(name, version)]
        if custom:
            tried = f" (model.imports=[{','.join(imports)}] did not define them)" if imports else ""
            raise UserError(
                f"{_setting(path)} uses custom layers ({', '.join(custom)}){tried}: pass "
                f"model.imports=[MODULE] naming the module that defines them ({which} said: "
                f"{first})"
            ) from err
        raise UserError(f"{_setting(path)} cannot be loaded by {which}: {first}") from err


def load_saved(path: Path, version: int | None = None):
    """A saved model (a user's file or a store entry), loaded with the Keras that wrote it
    (`version`, else read from the file) in safe mode, not compiled."""
    from avlsi.kerasapi import keras_module
    from avlsi.models import application_layers

    version = keras_version_of(path) if version is None else version
    keras = keras_module(version)
    if version == 3:
        from keras.src.saving.serialization_lib import SafeModeScope
    else:
        from tf_keras.src.saving.serialization_lib import SafeModeScope
    # load_model's safe_mode covers .keras only; the scope extends it to .h5 / SavedModel.
    with SafeModeScope(True):
        return keras.models.load_model(
            path,
            compile=False,
            safe_mode=True,
            custom_objects={**application_layers(version), **_user_objects},
        )
