"""Does the pruned model get faster? Measured speed-up against the multiply-add reduction.

    nice -n 5 .venv/bin/python benchmarks/bench_speed.py                 # CNN + MobileNetV2
    .venv/bin/python benchmarks/bench_speed.py --models cnn --threads 2 --pairs 50

For the MNIST CNN (28x28x1; conv 32-32-64-64, dense 128) and MobileNetV2 (96x96x3, alpha
1.0, `weights=None`, 10 classes), with random (untrained) weights, which do not change the
speed: the baseline and, as a `criterion=l1 psize=P` job prunes it (every prunable group but
the first conv's and the outputs', l1 scores, one surgery), the pruned model at psize 0.3 /
0.5 / 0.7, with `criterion.round_to` 1 and 8. Every model is timed in Keras (a compiled
`tf.function`) and in TFLite (the float32 file through the interpreter, XNNPACK) at batch 1
and batch 128 with `--threads` threads, in one process and in pairs: the baseline and the
pruned model called in turn (`--warmup` untimed pairs, then `--pairs` timed pairs at batch 1
and `--pairs-large` at batch 128, the order alternating), so that both calls of a pair run
under the same load of a shared machine; a speed-up is the median over pairs of baseline
time / pruned time.

Columns: `MAC red.` = baseline MACs / pruned MACs; `Keras b1` / `Keras b128` / `TFLite b1` /
`TFLite b128` = measured speed-ups; `measured / MAC red.` = the batch-128 speed-ups in Keras
and TFLite divided by the MAC reduction (1.0: the whole theoretical gain is realised).
Then the gzip sizes: the baseline and a `criterion=magnitude psize=0.9` model (AVLSI's
magnitude masks, layerwise) as `.keras` (no optimizer state) and float32 `.tflite`, gzip level 6.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's avlsi first

import numpy as np  # noqa: E402

PSIZES = (0.3, 0.5, 0.7)
ROUND_TO = (1, 8)


@dataclass
class Variant:
    """One model of the table: its calls per (runtime, batch), and per pruned model the
    paired ratios baseline time / its time."""

    psize: float | None
    round_to: int
    model: object
    macs: int
    tflite: bytes = b""
    calls: dict[tuple[str, int], object] = field(default_factory=dict)
    ratios: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    seconds: dict[tuple[str, int], list[float]] = field(default_factory=dict)

    def speedup(self, runtime: str, batch: int) -> float:
        """Median over pairs of (baseline call's time / this model's call's time)."""
        return float(np.median(self.ratios[runtime, batch])) if self.psize else 1.0


def criterion_config(name: str, round_to: int = 1):
    """conf/criterion/NAME.yaml composed as a job composes it."""
    from hydra import compose, initialize_config_dir

    from avlsi.config import register

    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"criterion={name}", f"criterion.round_to={round_to}"])
    return cfg.criterion


def build(name: str):
    import tensorflow as tf
    from omegaconf import OmegaConf

    if name == "cnn":
        from avlsi.config import ModelConfig
        from avlsi.models.stack import build as build_stack

        cfg = ModelConfig(name="cnn", conv_filters=[32, 32, 64, 64], dense_units=[128])
        return build_stack((28, 28, 1), 10, OmegaConf.structured(cfg))
    tf.keras.utils.set_random_seed(0)
    return tf.keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=1.0, weights=None, classes=10
    )


def prune(model, psize: float, round_to: int):
    """What `criterion=l1 psize=psize criterion.round_to=round_to` does to `model`."""
    from avlsi.criteria import get_scorer
    from avlsi.surgery import delete_units
    from avlsi.targets import prune_targets, select_group_units

    criterion = criterion_config("l1", round_to)
    targets = prune_targets(model, criterion)
    scores = get_scorer(criterion)(model, targets.layers, None)
    units = select_group_units(scores, targets, criterion, psize)
    return delete_units(model, units)


def magnitude(model, psize: float = 0.9):
    """What `criterion=magnitude psize=psize` does: the smallest |w| of each layer zeroed."""
    from avlsi import masking
    from avlsi.export import without_optimizer
    from avlsi.targets import prune_targets

    criterion = criterion_config("magnitude")
    twin = without_optimizer(model)
    targets = prune_targets(twin, criterion)
    layers = [twin.get_layer(layer.name) for layer in targets.layers]
    masks = masking.magnitude_masks(
        layers, "layerwise", psize, None, criterion.normalize, criterion.min_units
    )
    masking.apply_masks(twin, masks)
    return twin


def tflite_of(model, folder: Path) -> bytes:
    from avlsi.export import save_saved_model, tflite_bytes

    return tflite_bytes(save_saved_model(model, folder / "sm"))


def prepare_calls(variant: Variant, large: int, threads: int) -> None:
    """The four calls of a model: Keras (a compiled tf.function) and TFLite, two batches."""
    from avlsi.export import interpreter
    from avlsi.latency import compiled, keras_call, model_input_shape, random_inputs

    infer, shape = compiled(variant.model), model_input_shape(variant.model)
    for batch in (1, large):
        variant.calls["keras", batch] = keras_call(infer, shape, batch)
        runner = interpreter(variant.tflite, batch, threads)
        x = random_inputs(shape, batch)
        variant.calls["tflite", batch] = lambda r=runner, x=x: r(x)


def time_pairs(base: Variant, other: Variant, key, warmup: int, pairs: int) -> None:
    """Baseline and `other` called in turn (the order alternating), `pairs` times: each
    pair's ratio of times is taken under the same load, whatever the machine does."""
    first, second = base.calls[key], other.calls[key]
    for _ in range(warmup):
        first(), second()
    for i in range(pairs):
        order = (first, second) if i % 2 == 0 else (second, first)
        times = []
        for call in order:
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        base_time, other_time = times if i % 2 == 0 else times[::-1]
        other.ratios.setdefault(key, []).append(base_time / other_time)
        base.seconds.setdefault(key, []).append(base_time)


def speed_table(name: str, variants: list[Variant], large: int) -> list[str]:
    base = variants[0]
    runtimes, batches = ("keras", "tflite"), (1, large)
    header = (
        f"| model | psize | round_to | MACs | MAC red. | Keras b1 | Keras b{large} | TFLite b1 "
        f"| TFLite b{large} | measured / MAC red. b{large} (Keras, TFLite) |"
    )
    lines = [header, "|" + "---|" * 10]
    for v in variants:
        speed = {(rt, b): v.speedup(rt, b) for rt in runtimes for b in batches}
        reduction = base.macs / v.macs
        pruned = v.psize is not None
        cells = [
            name,
            f"{v.psize:g}" if pruned else "—",
            str(v.round_to) if pruned else "—",
            f"{v.macs / 1e6:.2f}M",
            f"{reduction:.2f}x",
            *(f"{speed[rt, b]:.2f}x" for rt in runtimes for b in batches),
            ", ".join(f"{speed[rt, large] / reduction:.2f}" for rt in runtimes) if pruned else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    times = ", ".join(
        f"{rt} b{b} {1e3 * float(np.median(base.seconds[rt, b])):.2f} ms"
        for rt in runtimes
        for b in batches
    )
    lines.append(f"\n{name} baseline, median call: {times}")
    return lines


def gzip_rows(name: str, model, folder: Path) -> list[str]:
    from avlsi.export import save_keras, sizes

    sparse = magnitude(model)
    weights = np.concatenate([w.ravel() for w in sparse.get_weights()])
    rows = []
    for fmt in ("keras", "tflite"):
        found = {}
        for label, m in (("baseline", model), ("magnitude", sparse)):
            path = folder / f"{name}-{label}.{fmt}"
            if fmt == "keras":
                save_keras(m, path)
            else:
                path.write_bytes(tflite_of(m, folder))
            found[label] = sizes(path)
        (b_raw, b_gz), (_, m_gz) = found["baseline"], found["magnitude"]
        rows.append(
            f"| {name} | .{fmt} | {b_raw / 1e3:,.0f} kB | {b_gz / 1e3:,.0f} kB | "
            f"{m_gz / 1e3:,.0f} kB | {m_gz / b_gz:.2f}x |"
        )
    share = 1 - np.count_nonzero(weights) / weights.size
    rows.append(f"<!-- {name}: {share:.1%} of all weights zero -->")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cnn,MobileNetV2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--pairs-large", type=int, default=8)
    parser.add_argument("--large", type=int, default=128)
    args = parser.parse_args()

    from avlsi.latency import pin_threads

    threads = pin_threads(args.threads)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    start, load = time.time(), os.getloadavg()
    print(f"threads {threads}; load average at start {load[0]:.1f} ({os.cpu_count()} cores)\n")
    from avlsi.metrics import macs_report

    speed, gzip = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            base = build(name)
            variants = [Variant(None, 1, base, macs_report(base).total)]
            for psize in PSIZES:
                for round_to in ROUND_TO:
                    pruned = prune(base, psize, round_to)
                    variants.append(Variant(psize, round_to, pruned, macs_report(pruned).total))
            for v in variants:
                v.tflite = tflite_of(v.model, folder)
                prepare_calls(v, args.large, threads)
            for v in variants[1:]:
                for runtime in ("keras", "tflite"):
                    for batch, pairs in ((1, args.pairs), (args.large, args.pairs_large)):
                        time_pairs(variants[0], v, (runtime, batch), args.warmup, pairs)
            speed += speed_table(name, variants, args.large) + [""]
            gzip += gzip_rows(name, base, folder)
            print("\n".join(speed[-len(variants) - 4 :]), flush=True)
    print("\n".join(speed))
    print("| model | file | baseline | baseline gzip | 90% magnitude gzip | gzip ratio |")
    print("|---|---|---|---|---|---|")
    print("\n".join(gzip))
    end = os.getloadavg()
    print(f"\n{time.time() - start:.0f} s; load average at end {end[0]:.1f} (1 min)")


if __name__ == "__main__":
    main()
