"""What a job's model costs when it runs: measured latency, exported files and their sizes.

`model_files(...)` is called once per stage (baseline, pruned, fine-tuned) and returns the
metrics (names in avlsi/latency.py and avlsi/export.py) and the files to log:

- `latency.enabled`: `{stage}.latency_ms`, `.latency_p90_ms` (batch 1), `.throughput`
  (images/s at the largest of `latency.batch_sizes`), through a compiled `tf.function`;
  `latency.threads` (the threads in effect) is logged as a metric too;
- `export.formats`: each file with `{stage}.bytes.<format>` and `.gzip_bytes.<format>`;
  for `tflite`: the outputs checked against Keras (`.tflite_max_abs_diff`), and with
  latency on, `.tflite_latency_ms`, `.tflite_latency_p90_ms`, `.tflite_throughput`
  through the interpreter (XNNPACK); with `export.quantize`, `tflite_<quantize>` too with
  its `.test_accuracy.tflite_<quantize>` over the test set and
  `.tflite_latency_ms.tflite_<quantize>`;
- after pruning: `.speedup_measured` (throughput ratio to the baseline, the one to set
  against the MACs ratio), `.speedup_measured_b1` (batch-1 latency ratio), and TFLite's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from avlsi import export, latency

log = logging.getLogger(__name__)
CHECK_IMAGES = 32  # test images the float32 TFLite model is checked on


def _value(node) -> str:
    return str(getattr(node, "value", node))


def model_files(
    model, prefix: str, cfg: DictConfig, data, output_dir: Path, known: dict[str, float]
) -> tuple[dict[str, float], list[Path]]:
    """Latency and exports of one stage's model (see the module docstring); `known`: the
    metrics so far (the baseline's, for the speed-ups)."""
    metrics: dict[str, float] = {}
    files: list[Path] = []
    timing, threads = cfg.latency, latency.tf_threads()
    batches = sorted({int(b) for b in timing.batch_sizes})
    if timing.enabled:
        timings = latency.keras_timings(model, batches, timing.warmup, timing.runs)
        metrics.update(latency.timing_metrics(timings, prefix))
        metrics["latency.threads"] = threads
    formats = [_value(f) for f in cfg.export.formats]
    if "keras" in formats:
        files.append(export.save_keras(model, output_dir / f"{prefix}.keras"))
        metrics.update(export.size_metrics(files[-1], prefix, "keras"))
    if "saved_model" in formats or "tflite" in formats:
        with export.scratch_folder() as scratch:
            where = output_dir if "saved_model" in formats else scratch
            folder = export.save_saved_model(model, where / f"{prefix}.saved_model")
            if "saved_model" in formats:
                files.append(folder)
                metrics.update(export.size_metrics(folder, prefix, "saved_model"))
            if "tflite" in formats:
                found, written = tflite_files(model, prefix, cfg, data, output_dir, folder)
                metrics.update(found)
                files += written
    if prefix != "baseline":
        metrics.update(latency.speedup_metrics({**known, **metrics}, prefix))
    return metrics, files


def tflite_files(
    model, prefix: str, cfg: DictConfig, data, output_dir: Path, saved_model: Path
) -> tuple[dict[str, float], list[Path]]:
    """The float32 TFLite file (checked against Keras) and the quantized one, if asked."""
    metrics: dict[str, float] = {}
    files: list[Path] = []
    timing, threads = cfg.latency, latency.tf_threads()
    batches = sorted({int(b) for b in timing.batch_sizes})
    x_check, _ = data.sample(CHECK_IMAGES, cfg.seed, split="test")
    variants: list[tuple[str | None, str]] = [(None, "tflite")]
    if cfg.export.quantize:
        mode = _value(cfg.export.quantize)
        variants.append((mode, f"tflite_{mode}"))
    for mode, name in variants:
        calibration = None
        if mode == "int8":
            calibration, _ = data.sample(cfg.export.calibration_samples, cfg.seed)
        content = export.tflite_bytes(saved_model, mode, calibration)
        path = output_dir / f"{prefix}.{name}.tflite" if mode else output_dir / f"{prefix}.tflite"
        path.write_bytes(content)
        files.append(path)
        metrics.update(export.size_metrics(path, prefix, name))
        if mode is None:
            error = export.check_float_tflite(model, content, x_check, threads, f"{prefix}")
            metrics[f"{prefix}.tflite_max_abs_diff"] = error
        else:
            accuracy = export.tflite_accuracy(content, data, threads)
            metrics[f"{prefix}.test_accuracy.{name}"] = accuracy
        if timing.enabled:
            timings = latency.tflite_timings(content, batches, threads, timing.warmup, timing.runs)
            if mode is None:
                metrics.update(latency.timing_metrics(timings, prefix, "tflite_"))
            else:
                small = min(timings, key=lambda t: t.batch)
                metrics[f"{prefix}.tflite_latency_ms.{name}"] = small.median_ms
    return metrics, files
