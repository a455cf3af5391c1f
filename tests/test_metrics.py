"""avlsi.metrics: multiply-adds by hand for each layer kind, and against TensorFlow's profiler."""

import importlib.util
import logging
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT

from avlsi.metrics import count_macs, macs_coverage, macs_report, size_metrics

spec = importlib.util.spec_from_file_location("macs_profiler", ROOT / "benchmarks/macs_profiler.py")
macs_profiler = sys.modules["macs_profiler"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(macs_profiler)
comparable_macs, PER_ELEMENT = macs_profiler.comparable_macs, macs_profiler.PER_ELEMENT

keras = tf.keras
L = keras.layers


def mixed_2d_model():
    """Grouped, dilated, transposed, separable and depthwise convs, Dense on a 4-d input,
    a nested model called twice and a layer shared by two calls."""
    inner_in = L.Input((8, 8, 16))
    inner = keras.Model(inner_in, L.Conv2D(16, 3, padding="same", name="c")(inner_in), name="inner")
    shared = L.Conv2D(16, 1, name="shared")
    x = inputs = L.Input((16, 16, 3))
    x = L.Conv2D(16, 3, padding="same", name="plain")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Conv2D(32, 3, groups=4, padding="same", name="grouped")(x)
    x = L.Conv2D(16, 3, dilation_rate=2, name="dilated")(x)  # 16 -> 12
    x = L.DepthwiseConv2D(3, depth_multiplier=2, strides=2, padding="same", name="dw")(x)
    x = L.SeparableConv2D(16, 3, depth_multiplier=3, padding="same", name="sep")(x)  # 6x6
    x = L.Conv2DTranspose(16, 3, strides=2, padding="same", name="up")(x)  # 12x12
    x = L.Conv2D(16, 5, name="down")(x)  # 8x8
    x = inner(inner(x))
    x = shared(shared(x))
    x = L.Dense(8, name="per_pixel")(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(10, name="out")(x))


def test_hand_count_of_every_2d_kind():
    model = mixed_2d_model()
    by = macs_report(model).by_layer
    assert by["plain"] == 16 * 16 * 9 * 3 * 16
    assert by["bn"] == 16 * 16 * 16
    assert by["grouped"] == 16 * 16 * 9 * (16 // 4) * 32  # groups divide once
    assert by["dilated"] == 12 * 12 * 9 * 32 * 16  # dilation: same work per output
    assert by["dw"] == 6 * 6 * 9 * 16 * 2
    assert by["sep"] == 6 * 6 * (9 * 32 * 3 + 32 * 3 * 16)
    assert by["up"] == 6 * 6 * 9 * 16 * 16  # every input position times the whole kernel
    assert by["down"] == 8 * 8 * 25 * 16 * 16
    assert by["inner::c"] == 2 * 8 * 8 * 9 * 16 * 16  # nested model, called twice
    assert by["shared"] == 2 * 8 * 8 * 16 * 16  # one layer, two calls
    assert by["per_pixel"] == 8 * 8 * 16 * 8  # Dense on (8, 8, 16): per position
    assert by["out"] == 8 * 8 * 8 * 10
    assert count_macs(model) == sum(by.values())
    assert macs_coverage(model) == 1.0


def test_grouped_conv_follows_the_profilers_rule_for_its_kernel():
    layer = mixed_2d_model().get_layer("grouped")
    assert layer.kernel.shape == (3, 3, 16 // 4, 32)
    kernel = tf.constant(layer.get_weights()[0])
    conv = tf.function(lambda x: tf.nn.conv2d(x, kernel, 1, "SAME"))
    graph = conv.get_concrete_function(tf.TensorSpec((1, 16, 16, 16))).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    flops = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options)
    assert flops.total_float_ops // 2 == macs_report(mixed_2d_model()).by_layer["grouped"]


def test_transposed_conv_with_valid_padding_counts_input_positions():
    x = inputs = L.Input((5, 5, 4))
    model = keras.Model(inputs, L.Conv2DTranspose(6, 3, strides=2, name="t")(x))
    assert model.output_shape == (None, 11, 11, 6)
    assert count_macs(model) == 5 * 5 * 9 * 4 * 6
    ours, profiler = comparable_macs(model)
    # The profiler estimates output positions / stride product: 121 / 4 instead of 25.
    assert profiler == int(11 * 11 / 4 * 9 * 4 * 6)
    assert ours < profiler


def test_1d_and_3d_kinds():
    x = inputs = L.Input((32, 4))
    x = L.Conv1D(8, 3, dilation_rate=2, padding="causal", name="c1")(x)
    x = L.SeparableConv1D(8, 3, depth_multiplier=2, name="s1")(x)  # 30
    x = L.DepthwiseConv1D(3, name="d1")(x)  # 28
    x = L.Conv1DTranspose(4, 2, strides=2, name="t1")(x)  # 56
    model1d = keras.Model(inputs, L.Dense(3, name="dense")(x))
    by = macs_report(model1d).by_layer
    assert by == {
        "c1": 32 * 3 * 4 * 8,
        "s1": 30 * (3 * 8 * 2 + 16 * 8),
        "d1": 28 * 3 * 8,
        "t1": 28 * 2 * 4 * 8,
        "dense": 56 * 4 * 3,
    }
    ours, profiler = comparable_macs(model1d)
    assert ours == profiler

    x = inputs = L.Input((6, 6, 6, 2))
    x = L.Conv3D(4, 3, padding="same", name="c3")(x)
    model3d = keras.Model(inputs, L.Conv3DTranspose(2, 2, strides=2, name="t3")(x))
    assert macs_report(model3d).by_layer == {
        "c3": 6**3 * 27 * 2 * 4,
        "t3": 6**3 * 8 * 4 * 2,  # the profiler has no rule for Conv3DBackpropInputV2
    }


def test_unknown_layer_is_named_and_lowers_coverage(caplog):
    x = inputs = L.Input((5, 3))
    x = L.LSTM(4, name="recurrent")(x)
    model = keras.Model(inputs, L.Dense(2, name="head")(x))
    with caplog.at_level(logging.WARNING, logger="avlsi.metrics"):
        metrics = size_metrics(model, "m")
    assert "'recurrent'" in caplog.text
    lstm = model.get_layer("recurrent").count_params()
    assert metrics["m.macs"] == 4 * 2
    assert metrics["m.macs_coverage"] == pytest.approx(1 - lstm / model.count_params())
    assert metrics["m.macs_coverage"] < 1


APPLICATIONS = {
    "MobileNetV2": lambda: keras.applications.MobileNetV2(
        (32, 32, 3), alpha=0.35, weights=None, classes=10
    ),
    "ResNet50": lambda: keras.applications.ResNet50(
        input_shape=(32, 32, 3), weights=None, classes=10
    ),
    "mixed_2d": mixed_2d_model,
}


@pytest.mark.parametrize("name", APPLICATIONS)
def test_counter_agrees_with_the_profiler(name):
    """Conv / depthwise / transposed / matmul products agree exactly; all weights counted."""
    model = APPLICATIONS[name]()
    ours, profiler = comparable_macs(model)
    assert ours == profiler
    assert macs_coverage(model) == 1.0
    elementwise = count_macs(model) - ours
    bn = sum(np.prod(x.output.shape[1:]) for x in model.layers if isinstance(x, PER_ELEMENT))
    assert elementwise == bn


def test_nested_model_of_any_size_is_counted_at_the_size_it_is_called_with():
    any_size = L.Input((None, None, 3))
    backbone = keras.Model(any_size, L.Conv2D(4, 3, name="c")(any_size), name="backbone")
    assert backbone.layers[-1].output.shape[1] is None
    x = inputs = L.Input((10, 10, 3))
    model = keras.Model(inputs, backbone(x))
    assert macs_report(model).by_layer == {"backbone::c": 8 * 8 * 9 * 3 * 4}


def test_subclassed_model_inside_is_named_and_uncounted(caplog):
    class Block(keras.Model):
        def __init__(self):
            super().__init__(name="block")
            self.conv = L.Conv2D(2, 1)

        def call(self, x):
            return self.conv(x)

    x = inputs = L.Input((4, 4, 3))
    model = keras.Model(inputs, L.Conv2D(2, 1, name="after")(Block()(x)))
    with caplog.at_level(logging.WARNING, logger="avlsi.metrics"):
        report = macs_report(model)
    assert report.by_layer == {"after": 4 * 4 * 2 * 2}
    assert report.uncounted == {"block": 8}
    assert "'block'" in caplog.text
    assert report.coverage == pytest.approx(6 / 14)
