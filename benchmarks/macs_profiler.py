"""The multiply-add counter (avlsi.metrics) against TensorFlow's profiler, per model.

    .venv/bin/python benchmarks/macs_profiler.py              # 12 keras.applications at 32x32
    .venv/bin/python benchmarks/macs_profiler.py --models ResNet50,VGG16 --size 64

For each model (`weights=None`, 10 classes; Xception and InceptionV3 at their minimum sizes
71 and 75 when --size is smaller): the counter's MACs of the layers with weight x activation
products (convs of every kind, Dense), the profiler's float ops of the matching op types
halved, their difference, and both totals: the counter's with its per-element layers
(BatchNormalization & co., one MAC per element), the profiler's with everything it counts
(BiasAdd, AddV2, pooling, Mean, Softmax..., and nothing for FusedBatchNormV3).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from unittest import mock

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow loads (avlsi does too)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's avlsi first

import tensorflow as tf  # noqa: E402
from tf_keras.src.applications.convnext import LayerScale  # noqa: E402

from avlsi.metrics import macs_report  # noqa: E402
from benchmarks.prunability import MODELS  # noqa: E402

L = tf.keras.layers
# Op types whose profiler flops are weight x activation products (2 flops per multiply-add);
# the profiler also counts BiasAdd, AddV2, Mean, pooling, Softmax..., which have no weights
# and which the counter leaves out, and nothing for FusedBatchNormV3 (which it counts).
PRODUCT_OPS = {
    "Conv2D",
    "Conv3D",
    "DepthwiseConv2dNative",
    "Conv2DBackpropInput",
    "MatMul",
    "BatchMatMul",
    "BatchMatMulV2",
    "BatchMatMulV3",
}
PER_ELEMENT = (
    L.BatchNormalization,
    L.LayerNormalization,
    L.GroupNormalization,
    L.Normalization,
    L.PReLU,
    LayerScale,
)


def profiler_flops(model) -> dict[str, int]:
    """Float ops per op type of the model's inference graph, by tf.compat.v1.profiler.

    The recipe on TF 2.21 + tf-keras: trace `model(x, training=False)` for a batch of one as a
    concrete function, freeze its variables into constants (the profiler needs fully known
    shapes and no variable reads), profile the graph with `cmd="op"`. The "op" view comes back
    as a chain of op types, each node holding its own type's `float_ops`.
    """
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )
    from tf_keras.src.layers.convolutional.base_conv import Conv

    specs = [tf.TensorSpec((1, *t.shape[1:]), t.dtype) for t in model.inputs]
    call = tf.function(lambda *x: model(list(x), training=False))
    # tf-keras runs a grouped convolution as an XLA-compiled function call, inside which the
    # profiler sees no shapes (nor any that follow): trace the same convolution op unwrapped.
    with mock.patch.object(Conv, "_jit_compiled_convolution_op", Conv.convolution_op):
        concrete = call.get_concrete_function(*specs)
    graph = convert_variables_to_constants_v2(concrete).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    node = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options)
    flops = {}
    while node.children:
        node = node.children[0]
        flops[node.name] = int(node.float_ops)
    return flops


def layer_at(model, path: str):
    for name in path.split("::"):
        model = model.get_layer(name)
    return model


def comparable_macs(model) -> tuple[int, int]:
    """(the counter's MACs without per-element layers, the profiler's product flops / 2)."""
    report = macs_report(model)
    ours = sum(
        macs
        for path, macs in report.by_layer.items()
        if not isinstance(layer_at(model, path), PER_ELEMENT)
    )
    flops = profiler_flops(model)
    return ours, sum(v for k, v in flops.items() if k in PRODUCT_OPS) // 2


SMALLEST = {"Xception": 71, "InceptionV3": 75}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    args = parser.parse_args(argv)
    print(
        "| model | input | counter: products | profiler: products / 2 | difference "
        "| counter: total | profiler: all ops / 2 |\n|---|---|---|---|---|---|---|"
    )
    for name in filter(None, args.models.split(",")):
        size = max(args.size, SMALLEST.get(name, 0))
        model = getattr(tf.keras.applications, name)(
            input_shape=(size, size, 3), weights=None, classes=10
        )
        ours, profiler = comparable_macs(model)
        total = sum(profiler_flops(model).values()) / 2
        print(
            f"| {name} | {size} | {ours:,} | {profiler:,} | {ours - profiler:+,} "
            f"| {macs_report(model).total:,} | {total:,.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
