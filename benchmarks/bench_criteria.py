"""Seconds per criterion on the CNN's largest conv layer, and grad_activation vs the seed's way.

    .venv/bin/python benchmarks/bench_criteria.py                 # 256 samples, as the default
    .venv/bin/python benchmarks/bench_criteria.py --samples 64 --train 0   # quick, random init

Each criterion scores the layer with the most filters (conv3 of the seed's MNIST CNN) from
the same sample images, twice: `cold` includes building and tracing its graphs (what one
pipeline job pays), `warm` is a second call. The last lines compare grad_activation with
the seed's one-backward-pass-per-filter method (avlsi.criteria.reference) on the same
inputs: their times, the ratio, and the largest relative difference of their scores.
Timings on a shared machine are noisy: compare ratios measured in one run.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from avlsi import masking, train  # noqa: E402
from avlsi.criteria import ScoringContext, get_scorer  # noqa: E402
from avlsi.criteria.reference import grad_activation_per_unit  # noqa: E402
from avlsi.data import Dataset  # noqa: E402
from avlsi.models.stack import build  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


def load_data(limit: int) -> Dataset:
    """Real MNIST when it can be read offline, else random MNIST-shaped images."""
    try:
        from avlsi.data.mnist import load

        cfg = SimpleNamespace(name="mnist", path=None, limit=limit, test_limit=1000)
        return load(cfg, seed=0)
    except Exception as err:  # noqa: BLE001  (any failure: fall back, and say so)
        print(f"(MNIST unavailable: {err}; using random images)")
        rng = np.random.default_rng(0)
        x = rng.random((limit + 1000, 28, 28, 1), dtype=np.float32)
        y = rng.integers(0, 10, len(x))
        return Dataset("random", x[:limit], y[:limit], x[limit:], y[limit:], 10)


def criterion_cfgs() -> dict:
    """Every criterion YAML under conf/criterion (only `_target_` and `structured` are used)."""
    return {p.stem: OmegaConf.load(p) for p in sorted((CONF / "criterion").glob("*.yaml"))}


def largest_conv(model):
    convs = [lyr for lyr in model.layers if type(lyr).__name__ == "Conv2D"]
    return max(reversed(convs), key=lambda lyr: lyr.filters)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256, help="images shown to criteria")
    parser.add_argument(
        "--train",
        type=int,
        default=4096,
        help="train the CNN one epoch on this many images first (0: random init)",
    )
    parser.add_argument(
        "--skip-reference", action="store_true", help="do not run the slow per-filter reference"
    )
    args = parser.parse_args()

    train.seed_everything(0)
    data = load_data(max(args.train, args.samples))
    cfg = SimpleNamespace(
        name="cnn",
        conv_filters=[32, 32, 64, 64],
        dense_units=[128],
        kernel_size=3,
        pool_every=2,
        batch_norm=False,
        dropout=0.0,
    )
    model = build(data.input_shape, data.num_classes, cfg)
    if args.train:
        train.fit(
            model, data, SimpleNamespace(epochs=1, batch_size=128, learning_rate=1e-3), verbose=0
        )
        print(
            f"CNN trained 1 epoch on {len(data.x_train)} {data.name} images: "
            f"test accuracy {train.evaluate(model, data):.4f}"
        )
    layer = largest_conv(model)
    pick = np.random.default_rng(0).choice(len(data.x_train), args.samples, replace=False)
    context = ScoringContext(x=data.x_train[np.sort(pick)], y=data.y_train[np.sort(pick)], seed=0)
    print(
        f"layer {layer.name}: {layer.filters} filters, output {layer.output.shape[1:]}, "
        f"{args.samples} samples, batch {context.batch_size}, "
        f"{tf.config.threading.get_intra_op_parallelism_threads() or 'all'} intra-op threads"
    )
    print(f"{'criterion':<16} {'cold s':>8} {'warm s':>8}")
    times = {}
    for name, ccfg in criterion_cfgs().items():
        if ccfg.get("structured", True):
            run = lambda ccfg=ccfg: get_scorer(ccfg)(model, [layer], context)  # noqa: E731
        else:
            run = lambda: masking.magnitude_masks([layer], "layer", 0.5)  # noqa: E731
        cold, _ = timed(run)
        warm, _ = timed(run)
        times[name] = (cold, warm)
        print(f"{name:<16} {cold:8.3f} {warm:8.3f}")
    if args.skip_reference:
        return
    fast = get_scorer(criterion_cfgs()["grad_activation"])
    cold_ref, ref = timed(grad_activation_per_unit, model, layer, context.x)
    warm_ref, ref = timed(grad_activation_per_unit, model, layer, context.x)
    warm_fast, scores = timed(fast, model, [layer], context)
    diff = float(np.max(np.abs(scores[layer.name] - ref) / np.abs(ref)))
    print(f"{'reference':<16} {cold_ref:8.3f} {warm_ref:8.3f}   (one backward pass per filter)")
    print(f"grad_activation again, warm: {warm_fast:.3f} s")
    best_fast = min(*times["grad_activation"], warm_fast)
    print(
        f"grad_activation / reference time: cold {times['grad_activation'][0] / cold_ref:.2f}, "
        f"warm {warm_fast / warm_ref:.2f}, best-of {best_fast / min(cold_ref, warm_ref):.2f}; "
        f"largest relative score difference {diff:.2e}"
    )


if __name__ == "__main__":
    main()
