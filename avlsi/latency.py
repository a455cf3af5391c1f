"""Measured inference time: a compiled `tf.function` (Keras) or the TFLite interpreter.

How a number is taken: random float32 inputs of the model's shape, `warmup` calls (tracing,
memory allocation, caches), then `runs` timed calls, each waiting for the outputs; the median
and 90th percentile of those calls. At batch 1 that is latency; at a large batch,
images per second (throughput) is what a server or an offline job sees.

Threads: TensorFlow fixes its intra- and inter-op thread pools when its runtime starts (the
first op or model), for the whole process; `pin_threads` sets them before that and says what
is in effect afterwards (a sweep's later jobs in the same process keep the first job's). The
TFLite interpreter takes its thread count per interpreter. Compare numbers taken on the same
machine with the same threads, as ratios (pruned / baseline), not as absolutes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def pin_threads(threads: int | None) -> int:
    """Set TensorFlow's intra- and inter-op threads to `threads` (None: every usable core)
    if its runtime has not started yet; returns the intra-op count in effect."""
    import tensorflow as tf

    wanted = int(threads) if threads else usable_cores()
    for name in ("intra_op", "inter_op"):
        # RuntimeError: the runtime runs already, its pools stay as they are
        with contextlib.suppress(RuntimeError):
            getattr(tf.config.threading, f"set_{name}_parallelism_threads")(wanted)
    effective = tf_threads()
    if effective != wanted:
        log.warning(
            "latency.threads=%d: TensorFlow's runtime started earlier in this process with "
            "%d threads, which stay in effect (and are recorded)",
            wanted,
            effective,
        )
    return effective


def tf_threads() -> int:
    """TensorFlow's intra-op threads in effect (0, its default, means every usable core)."""
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads() or usable_cores()


@dataclass
class Timing:
    """Seconds of the timed calls at one batch size."""

    batch: int
    seconds: list[float]

    @property
    def median_ms(self) -> float:
        return 1e3 * float(np.median(self.seconds))

    @property
    def p90_ms(self) -> float:
        return 1e3 * float(np.percentile(self.seconds, 90))

    @property
    def throughput(self) -> float:
        """Images per second at the median call."""
        return self.batch / float(np.median(self.seconds))


def time_calls(call: Callable[[], object], warmup: int, runs: int) -> list[float]:
    """Seconds of `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def random_inputs(input_shape, batch: int, seed: int = 0) -> np.ndarray:
    """Uniform [0, 1) float32 images of `input_shape` (without the batch axis)."""
    shape = (batch, *(int(d) for d in input_shape))
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def model_input_shape(model) -> tuple[int, ...]:
    """The model's input shape without the batch axis (one input)."""
    return tuple(int(d) for d in model.inputs[0].shape[1:])


def compiled(model) -> Callable:
    """One compiled `tf.function` of the model's inference (either Keras), any batch size."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model_input_shape(model)), tf.float32)
    return tf.function(lambda x: model(x, training=False), input_signature=[spec])


def keras_call(infer: Callable, shape, batch: int) -> Callable[[], object]:
    """A call of `compiled(model)` on a fixed random batch that waits for its outputs."""
    import tensorflow as tf

    x = tf.constant(random_inputs(shape, batch))
    return lambda: infer(x).numpy()


def keras_timings(model, batch_sizes, warmup: int = 3, runs: int = 20) -> list[Timing]:
    """Inference through one compiled `tf.function` of the model (either Keras), per batch."""
    infer, shape = compiled(model), model_input_shape(model)
    return [
        Timing(batch, time_calls(keras_call(infer, shape, batch), warmup, runs))
        for batch in batch_sizes
    ]


def tflite_timings(
    content: bytes, batch_sizes, threads: int, warmup: int = 3, runs: int = 20
) -> list[Timing]:
    """Inference through the TFLite interpreter (XNNPACK for float models), per batch."""
    from avlsi.export import interpreter

    timings = []
    for batch in batch_sizes:
        runner = interpreter(content, batch, threads)
        x = random_inputs(runner.input_shape[1:], batch)
        timings.append(Timing(batch, time_calls(lambda r=runner, x=x: r(x), warmup, runs)))
    return timings


def timing_metrics(timings: list[Timing], prefix: str, tag: str = "") -> dict[str, float]:
    """`{prefix}.{tag}latency_ms` / `latency_p90_ms` at the smallest batch, `{tag}throughput`
    (images/s) at the largest."""
    small = min(timings, key=lambda t: t.batch)
    large = max(timings, key=lambda t: t.batch)
    return {
        f"{prefix}.{tag}latency_ms": small.median_ms,
        f"{prefix}.{tag}latency_p90_ms": small.p90_ms,
        f"{prefix}.{tag}throughput": large.throughput,
    }


def speedup_metrics(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """Measured speed-ups of a pruned stage over the baseline, side by side in one process:
    `speedup_measured` (throughput at the large batch, the one to set against the MACs
    ratio), `speedup_measured_b1` (latency at batch 1), and the same through TFLite."""
    out = {}
    base, this = "baseline.", f"{prefix}."
    for tag, name in (("", "speedup_measured"), ("tflite_", "tflite_speedup_measured")):
        if metrics.get(base + tag + "throughput") and this + tag + "throughput" in metrics:
            out[this + name] = (
                metrics[this + tag + "throughput"] / metrics[base + tag + "throughput"]
            )
        if metrics.get(this + tag + "latency_ms") and base + tag + "latency_ms" in metrics:
            out[this + name + "_b1"] = (
                metrics[base + tag + "latency_ms"] / metrics[this + tag + "latency_ms"]
            )
    return out
