"""AVLSI magnitude pruning vs TF Model Optimization's prune_low_magnitude, side by side.

    make setup-bench                            # tensorflow-model-optimization
    .venv/bin/python benchmarks/bench_magnitude.py                   # full MNIST, ~minutes
    .venv/bin/python benchmarks/bench_magnitude.py --limit 6000 --train-epochs 1   # quick

The seed's MNIST DNN is trained once; then, from copies of that baseline, with the same
data, epochs, batch size and learning rate:
  * AVLSI: one-shot `magnitude_masks` (psize of each hidden Dense kernel, scope=layerwise,
    the output layer kept, as `criterion=magnitude` does) + masked fine-tuning;
  * the same baseline fine-tuned without masks (to time what holding the masks costs);
  * tfmot: `prune_low_magnitude` on the same layers, ConstantSparsity(psize) from step 0
    (or --schedule polynomial: PolynomialDecay from --initial to psize between step 0 and
    --end-step (default: the last), masks every --frequency steps), then strip_pruning;
  * with --schedule polynomial, also AVLSI `schedule=gradual` (`GradualPruning`, the same
    schedule) on the same layers.
Fine-tuning times are wall-clock seconds of `model.fit`, each variant run --repeat times
alternately on fresh copies (the best is shown); `steady` leaves out the first epoch,
which includes tracing the training step. Timings on a shared machine are noisy.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from avlsi import masking, train  # noqa: E402
from avlsi.data.mnist import load  # noqa: E402
from avlsi.models.stack import build  # noqa: E402
from avlsi.targets import prune_targets  # noqa: E402

DNN = SimpleNamespace(
    name="dnn",
    conv_filters=[],
    dense_units=[512, 256, 256, 128, 128, 64],
    kernel_size=3,
    pool_every=2,
    batch_norm=False,
    dropout=0.0,
)


class EpochTimes(tf.keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def copy_of(model):
    clone = tf.keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def fit(model, data, args, callbacks=()) -> tuple[float, float]:
    """Fine-tune; returns (total seconds, seconds of the epochs after the first)."""
    timer = EpochTimes()
    train.compile_model(model, args.finetune_lr)
    start = time.perf_counter()
    model.fit(
        data.x_train,
        data.y_train,
        batch_size=args.batch_size,
        epochs=args.finetune_epochs,
        shuffle=True,
        verbose=0,
        callbacks=[timer, *callbacks],
    )
    return time.perf_counter() - start, sum(timer.times[1:])


def sparsity(model, names) -> float:
    kernels = [model.get_layer(n).get_weights()[0] for n in names]
    return 1 - sum(np.count_nonzero(k) for k in kernels) / sum(k.size for k in kernels)


def avlsi_masked(baseline, names, args):
    model = copy_of(baseline)
    masks = masking.magnitude_masks([model.get_layer(n) for n in names], "layerwise", args.psize)
    masking.apply_masks(model, masks)
    return model


def tfmot_pruned(baseline, names, args, steps: int):
    import tensorflow_model_optimization as tfmot

    sparsity_api = tfmot.sparsity.keras
    if args.schedule == "constant":
        schedule = sparsity_api.ConstantSparsity(args.psize, begin_step=1, frequency=100)
    else:
        schedule = sparsity_api.PolynomialDecay(
            args.initial, args.psize, begin_step=0, end_step=args.end_step or steps,
            frequency=args.frequency,
        )  # fmt: skip

    def wrap(layer):  # fresh layers: the baseline's own must not be trained
        fresh = layer.__class__.from_config(layer.get_config())
        if layer.name in names:
            return sparsity_api.prune_low_magnitude(fresh, pruning_schedule=schedule)
        return fresh

    model = tf.keras.models.clone_model(baseline, clone_function=wrap)
    for layer in model.layers:  # copy the baseline's weights into the (wrapped) layers
        source = baseline.get_layer(layer.name.removeprefix("prune_low_magnitude_"))
        target = getattr(layer, "layer", layer)
        target.set_weights(source.get_weights())
    return model, sparsity_api


def avlsi_gradual(model, names, args, steps: int):
    """AVLSI's GradualPruning callback with tfmot's PolynomialDecay settings."""
    from avlsi.schedules import GradualPruning

    criterion = OmegaConf.create({"scope": "layerwise", "normalize": "none", "min_units": 1})
    schedule = OmegaConf.create(
        {"initial_sparsity": args.initial, "begin_step": 0, "frequency": args.frequency}
    )
    end = args.end_step or steps
    return GradualPruning([model.get_layer(n) for n in names], criterion, args.psize, schedule, end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--psize", type=float, default=0.9, help="sparsity of each kernel")
    parser.add_argument("--train-epochs", type=int, default=3, help="baseline training")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="training images (default all)")
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--finetune-lr", type=float, default=5e-4, help="(the project default)")
    parser.add_argument("--schedule", choices=["constant", "polynomial"], default="constant")
    parser.add_argument("--initial", type=float, default=0.5, help="polynomial: start sparsity")
    parser.add_argument("--end-step", type=int, default=None, help="polynomial (default: last)")
    parser.add_argument("--frequency", type=int, default=100, help="polynomial: mask updates")
    parser.add_argument("--repeat", type=int, default=1, help="timing repeats of each variant")
    args = parser.parse_args()

    train.seed_everything(0)
    data = load(
        SimpleNamespace(name="mnist", path=None, limit=args.limit, test_limit=args.test_limit),
        seed=0,
    )
    baseline = build(data.input_shape, data.num_classes, DNN)
    start = time.perf_counter()
    train.fit(
        baseline,
        data,
        OmegaConf.create(
            {"epochs": args.train_epochs, "batch_size": args.batch_size, "learning_rate": 1e-3}
        ),
        verbose=0,
    )
    print(
        f"DNN baseline: {args.train_epochs} epochs on {len(data.x_train)} images in "
        f"{time.perf_counter() - start:.0f} s; {len(data.x_test)} test images; "
        f"psize {args.psize}, {args.finetune_epochs} fine-tune epochs, lr {args.finetune_lr}"
    )
    magnitude = SimpleNamespace(
        name="magnitude",
        structured=False,
        scope="layerwise",
        layer=None,
        layer_types={"layerwise": ["Dense", "Conv2D"]},
    )
    names = [lyr.name for lyr in prune_targets(baseline, magnitude).layers]
    rows = [("baseline", train.evaluate(baseline, data), sparsity(baseline, names), None, None)]

    steps = args.finetune_epochs * -(-len(data.x_train) // args.batch_size)
    times: dict[str, list[tuple[float, float]]] = {"masked": [], "unmasked": [], "tfmot": []}
    results = {}
    for _ in range(args.repeat):
        tf.keras.utils.set_random_seed(1)
        masked = avlsi_masked(baseline, names, args)
        oneshot = (train.evaluate(masked, data), sparsity(masked, names))
        times["masked"].append(fit(masked, data, args))
        tf.keras.utils.set_random_seed(1)
        plain = copy_of(baseline)
        times["unmasked"].append(fit(plain, data, args))
        tf.keras.utils.set_random_seed(1)
        pruned, api = tfmot_pruned(baseline, names, args, steps)
        times["tfmot"].append(fit(pruned, data, args, [api.UpdatePruningStep()]))
        stripped = api.strip_pruning(pruned)
        results = {"oneshot": oneshot, "masked": masked, "plain": plain, "tfmot": stripped}
        if args.schedule == "polynomial":
            tf.keras.utils.set_random_seed(1)
            gradual = copy_of(baseline)
            times.setdefault("gradual", []).append(
                fit(gradual, data, args, [avlsi_gradual(gradual, names, args, steps)])
            )
            results["gradual"] = gradual

    best = {k: min(v) for k, v in times.items()}
    base_total, base_steady = best["unmasked"]

    def ratio(key: str) -> tuple[float, float]:
        return (
            best[key][0] / base_total,
            best[key][1] / base_steady if base_steady else float("nan"),
        )

    rows += [
        ("AVLSI magnitude, one-shot", *results["oneshot"], None, None),
        (
            "AVLSI magnitude + masked FT",
            train.evaluate(results["masked"], data),
            sparsity(results["masked"], names),
            best["masked"],
            ratio("masked"),
        ),
        (
            "unmasked FT (time reference)",
            train.evaluate(results["plain"], data),
            sparsity(results["plain"], names),
            best["unmasked"],
            (1.0, 1.0),
        ),
        (
            f"tfmot prune_low_magnitude ({args.schedule})",
            train.evaluate(results["tfmot"], data),
            sparsity(results["tfmot"], names),
            best["tfmot"],
            ratio("tfmot"),
        ),
    ]
    if "gradual" in results:
        rows.append(
            (
                "AVLSI schedule=gradual (same schedule)",
                train.evaluate(results["gradual"], data),
                sparsity(results["gradual"], names),
                best["gradual"],
                ratio("gradual"),
            )
        )
    print(
        f"\n{'method':<40} {'test acc':>8} {'sparsity':>8} {'FT s':>7} {'steady s':>8} "
        f"{'FT/unmasked':>11} {'steady/unm.':>11}"
    )
    for name, acc, sp, secs, rel in rows:
        timing = (
            f"{secs[0]:7.1f} {secs[1]:8.1f} {rel[0]:11.3f} {rel[1]:11.3f}"
            if secs
            else f"{'':7} {'':8} {'':11} {'':11}"
        )
        print(f"{name:<40} {acc:8.4f} {sp:8.3f} {timing}")
    print(
        f"(sparsity: zero weights in the pruned kernels {', '.join(names)}; "
        f"best of {args.repeat} timing run(s))"
    )


if __name__ == "__main__":
    main()
