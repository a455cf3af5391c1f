"""Deployable files of a model, their sizes, and the TFLite interpreter.

Formats (`export.formats`): `keras` (the `.keras` file, without optimizer state),
`saved_model` (the inference graph only, `model.export`: what TF Serving loads) and `tflite`
(float32, converted from that SavedModel; with `export.quantize` also `dynamic` (int8
weights), `float16` (half-precision weights) or `int8` (weights and activations, calibrated
on `export.calibration_samples` training images) as `tflite_<quantize>`). Each file's size
is `*.bytes.<format>` and its gzip-compressed size `*.gzip_bytes.<format>`: zeroed weights
(criterion=magnitude) shrink only the latter. Works for tf-keras and Keras 3 models alike.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np

from avlsi.errors import UserError
from avlsi.kerasapi import is_keras3, keras_of

FORMATS = ("keras", "saved_model", "tflite")
QUANTIZE = ("dynamic", "float16", "int8")
FLOAT_TOLERANCE = 1e-4  # TFLite float32 vs Keras: max |difference| (relative above 1)


class ExportError(UserError):
    """An exported model that does not compute what the Keras model computes."""


def without_optimizer(model):
    """A copy (same architecture and weights) with nothing of the optimizer's state: a
    compiled model's copy is compiled with a fresh, unbuilt optimizer of the same settings and
    the same loss, so the file still says how the model was trained (a few hundred bytes)."""
    keras = keras_of(model)
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(model, "loss", None) is not None:
        fresh = type(optimizer).from_config(optimizer.get_config())
        twin.compile(optimizer=fresh, loss=model.loss)
    return twin


def save_keras(model, path: Path) -> Path:
    """The `.keras` file without optimizer state (neither Keras' `.keras` writer honours
    `include_optimizer=False`, so an uncompiled copy is saved)."""
    without_optimizer(model).save(path)
    return path


def save_saved_model(model, folder: Path) -> Path:
    """A SavedModel of the forward pass (`serve`, batch of any size) via `model.export`."""
    if folder.exists():
        shutil.rmtree(folder)
    twin = without_optimizer(model)
    with quiet_native_stderr(), contextlib.redirect_stdout(io.StringIO()):  # its endpoints
        if is_keras3(model):
            twin.export(str(folder), verbose=False)
        else:
            twin.export(str(folder))
    return folder


def tflite_bytes(saved_model: Path, quantize: str | None = None, calibration=None) -> bytes:
    """A TFLite flatbuffer from a SavedModel: float32, or quantized (`calibration`: an array
    of input images for int8); inputs and outputs stay float32."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":

        def representative():
            for image in calibration:
                yield [image[None].astype(np.float32)]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with quiet_native_stderr():
        return converter.convert()


@contextlib.contextmanager
def quiet_native_stderr():
    """TensorFlow's and TFLite's C++ chatter (converter passes, "Created TensorFlow Lite
    XNNPACK delegate") kept off stderr; Python warnings of the deprecated interpreter too."""
    if os.environ.get("AVLSI_TF_LOGS") == "1":
        yield
        return
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class Interpreter:
    """A TFLite interpreter (XNNPACK delegate, `threads` threads) for batches of `batch`."""

    def __init__(self, content: bytes, batch: int, threads: int) -> None:
        import tensorflow as tf

        with quiet_native_stderr():
            self.interpreter = tf.lite.Interpreter(model_content=content, num_threads=threads)
            (first,) = self.interpreter.get_input_details()
            shape = [batch, *first["shape"][1:]]
            self.interpreter.resize_tensor_input(first["index"], shape)
            self.interpreter.allocate_tensors()
        self.input = first["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.input_shape = tuple(int(d) for d in shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input, np.asarray(x, np.float32))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)


def interpreter(content: bytes, batch: int, threads: int) -> Interpreter:
    return Interpreter(content, batch, threads)


def tflite_predict(content: bytes, x: np.ndarray, threads: int, batch: int = 256) -> np.ndarray:
    """The TFLite model's outputs for `x`, `batch` images at a time."""
    runners: dict[int, Interpreter] = {}
    outputs = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        if len(chunk) not in runners:
            runners[len(chunk)] = Interpreter(content, len(chunk), threads)
        outputs.append(runners[len(chunk)](chunk).copy())
    return np.concatenate(outputs)


def float_difference(reference: np.ndarray, other: np.ndarray) -> float:
    """max |reference - other|, relative to max |reference| where that is above 1 (logits)."""
    scale = max(1.0, float(np.max(np.abs(reference))))
    return float(np.max(np.abs(reference - other))) / scale


def check_float_tflite(model, content: bytes, x: np.ndarray, threads: int, name: str) -> float:
    """The float32 TFLite model computes the Keras model's outputs (ExportError if not)."""
    expected = model(x, training=False)
    expected = np.asarray(expected.numpy() if hasattr(expected, "numpy") else expected)
    error = float_difference(expected, tflite_predict(content, x, threads))
    if not error <= FLOAT_TOLERANCE:
        raise ExportError(
            f"the float32 TFLite model of {name} differs from the Keras model by {error:.2g} "
            f"(more than {FLOAT_TOLERANCE:g}) on {len(x)} test images; export.formats without "
            "tflite skips it (please report this model)"
        )
    return error


def tflite_accuracy(content: bytes, data, threads: int, batch: int = 256) -> float:
    """Test accuracy of a TFLite model over the dataset's whole test set."""
    correct = total = 0
    for images, labels in data.batches("test", batch):
        predicted = np.argmax(tflite_predict(content, images.numpy(), threads, batch), axis=-1)
        correct += int(np.sum(predicted == labels.numpy()))
        total += len(predicted)
    return correct / max(1, total)


def folder_bytes(folder: Path) -> bytes:
    """A folder as one uncompressed tar stream (sorted names, no times): for its gzip size."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
                info.mtime = 0
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
    return buffer.getvalue()


def sizes(path: Path) -> tuple[int, int]:
    """(bytes on disk, gzip-compressed bytes) of a file, or of a folder's files together."""
    if path.is_dir():
        on_disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        content = folder_bytes(path)
    else:
        content = path.read_bytes()
        on_disk = len(content)
    return on_disk, len(gzip.compress(content, compresslevel=6, mtime=0))


def size_metrics(path: Path, prefix: str, fmt: str) -> dict[str, float]:
    on_disk, zipped = sizes(path)
    return {f"{prefix}.bytes.{fmt}": on_disk, f"{prefix}.gzip_bytes.{fmt}": zipped}


@contextlib.contextmanager
def scratch_folder():
    folder = Path(tempfile.mkdtemp(prefix="avlsi-export-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
