"""Coupled channels (avlsi.graph) on small hand-built tf-keras graphs, the equivalence check
against real kerassurgeon prunings and hand-sliced ones, and `task=inspect` on the CLI."""

import contextlib
import io
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, assert_one_line_error

from avlsi.graph import (
    Consumer,
    equivalence_error,
    group_removal,
    logits,
    masked_copy,
    pruning_groups,
)
from avlsi.metrics import macs_report
from avlsi.surgery import delete_units

L = tf.keras.layers


@pytest.fixture(autouse=True)
def seeded():
    tf.keras.utils.set_random_seed(0)  # the same Glorot kernels in every run


def randomize(model, seed=0):
    """Kernels keep their Glorot init (outputs do not saturate); biases and BatchNorm
    statistics become random, with positive scales, offsets and variances so that no channel
    is dead after its ReLU: every channel matters."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "kernel" not in w.name:
            value = rng.normal(0, 0.3, w.shape)
            positive = any(k in w.name for k in ("moving_variance", "gamma", "beta"))
            w.assign(np.abs(value) + 0.5 if positive else value)
    return model


def by_producer(groups):
    return {p: g for g in groups for p in g.producers}


# --- hand pruning: the expected model, built without avlsi.graph or kerassurgeon ----------


def cut(array, axis, indices):
    return np.delete(array, sorted(indices), axis=axis) if indices else array


def slice_into(model, small, out=None, into=None):
    """Copy `model`'s weights into `small` (the same graph, narrower) without the channels
    `out[layer]` (its output channels / BN and depthwise channels) and the input rows
    `into[layer]` (of its kernel, or SeparableConv's depthwise and pointwise kernels)."""
    out, into = out or {}, into or {}
    for layer in model.layers:
        if not layer.weights:
            continue
        o, i = out.get(layer.name, []), into.get(layer.name, [])
        kind = type(layer).__name__
        new = []
        for w in layer.weights:
            v, name = w.numpy(), w.name.split("/")[-1].split(":")[0]
            if name in ("kernel", "pointwise_kernel"):
                v = cut(cut(v, -1, o), -2, i)
            elif name == "depthwise_kernel":
                v = cut(v, -2, o if kind == "DepthwiseConv2D" else i)
            else:  # bias, gamma, beta, moving_mean, moving_variance
                v = cut(v, 0, o)
            new.append(v)
        small.get_layer(layer.name).set_weights(new)
    return small


# --- models ---------------------------------------------------------------------------------


def plain_cnn(a=8, b=6, d=5):
    i = tf.keras.Input((12, 12, 3), name="inp")
    x = L.Conv2D(a, 3, padding="same", name="a")(i)
    x = L.BatchNormalization(name="a_bn")(x)
    x = L.Activation("relu", name="a_relu")(x)  # kerassurgeon 0.2.0 has no ReLU layer
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Conv2D(b, 3, name="b")(x)
    x = L.BatchNormalization(name="b_bn")(x)
    x = L.Activation("relu", name="b_relu")(x)
    x = L.Dropout(0.5, name="drop")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(d, activation="relu", name="d")(x)
    out = L.Dense(3, activation="softmax", name="out")(x)
    return tf.keras.Model(i, out)


def residual_identity(a=8, b=6):
    i = tf.keras.Input((8, 8, 3), name="inp")
    x = L.ReLU(name="a_relu")(L.BatchNormalization(name="a_bn")(L.Conv2D(a, 3, name="a")(i)))
    y = L.Conv2D(b, 3, padding="same", activation="relu", name="b")(x)
    y = L.BatchNormalization(name="c_bn")(L.Conv2D(a, 3, padding="same", name="c")(y))
    x = L.ReLU(name="add_relu")(L.Add(name="add")([x, y]))
    x = L.Conv2D(4, 3, name="d")(x)
    return tf.keras.Model(i, L.Dense(2, name="out")(L.GlobalMaxPooling2D(name="gmp")(x)))


def residual_projection(s=6, r=8):
    i = tf.keras.Input((8, 8, 3), name="inp")
    x = L.Conv2D(s, 3, padding="same", activation="relu", name="s")(i)
    p = L.Conv2D(r, 1, name="p")(x)
    y = L.Conv2D(r, 3, padding="same", activation="relu", name="r1")(x)
    y = L.Conv2D(r, 3, padding="same", name="r2")(y)
    x = L.Activation("relu", name="add_relu")(L.Add(name="add")([p, y]))
    x = L.Conv2D(4, 3, name="d")(x)
    return tf.keras.Model(i, L.Dense(2, name="out")(L.Flatten(name="flat")(x)))


def dense_block(a=4, b=3):
    """DenseNet-style: a layer's output is concatenated to its input."""
    i = tf.keras.Input((8, 8, 2), name="inp")
    x = L.Conv2D(a, 3, padding="same", activation="relu", name="a")(i)
    y = L.Conv2D(b, 3, padding="same", activation="relu", name="b")(x)
    x = L.Concatenate(name="cat")([x, y])
    x = L.Activation("relu", name="cat_relu")(L.BatchNormalization(name="cat_bn")(x))
    x = L.Conv2D(5, 1, name="c")(x)
    return tf.keras.Model(i, L.Dense(2, name="out")(L.GlobalAveragePooling2D(name="gap")(x)))


def inverted_residual(s=6, e=8, multiplier=1):
    """MobileNetV2-style: expand 1x1, depthwise 3x3, project 1x1, identity shortcut."""
    i = tf.keras.Input((8, 8, 3), name="inp")
    x = L.ReLU(6.0, name="s_relu")(L.BatchNormalization(name="s_bn")(L.Conv2D(s, 3, name="s")(i)))
    y = L.ReLU(6.0, name="e_relu")(L.BatchNormalization(name="e_bn")(L.Conv2D(e, 1, name="e")(x)))
    y = L.DepthwiseConv2D(3, padding="same", depth_multiplier=multiplier, name="dw")(y)
    y = L.ReLU(6.0, name="dw_relu")(L.BatchNormalization(name="dw_bn")(y))
    y = L.BatchNormalization(name="p_bn")(L.Conv2D(s, 1, name="p")(y))
    x = L.Add(name="add")([x, y])
    return tf.keras.Model(i, L.Dense(2, name="out")(L.GlobalAveragePooling2D(name="gap")(x)))


def separable(a=6, s=5):
    i = tf.keras.Input((8, 8, 3), name="inp")
    x = L.Conv2D(a, 3, activation="relu", name="a")(i)
    x = L.SeparableConv2D(s, 3, padding="same", name="s")(x)
    x = L.Conv2D(4, 3, name="c")(L.ELU(name="s_elu")(x))
    return tf.keras.Model(i, L.Dense(2, name="out")(L.Flatten(name="flat")(x)))


def flatten_dense(a=4):
    i = tf.keras.Input((5, 5, 2), name="inp")
    x = L.Conv2D(a, 3, activation="relu", name="a")(i)  # 3x3 positions
    x = L.Dense(6, activation="relu", name="d")(L.Flatten(name="flat")(x))
    return tf.keras.Model(i, L.Dense(3, activation="softmax", name="out")(x))


# --- groups ---------------------------------------------------------------------------------


def test_plain_cnn_groups_follow_bn_pooling_dropout_and_global_pooling():
    groups = pruning_groups(plain_cnn())
    assert [g.producers for g in groups] == [("a",), ("b",), ("d",), ("out",)]
    assert [g.index for g in groups] == [0, 1, 2, 3]
    assert [g.channels for g in groups] == [8, 6, 5, 3]
    assert groups[0].members == ("a", "a_bn", "b")
    assert groups[1].members == ("b", "b_bn", "d")
    assert groups[2].members == ("d", "out")
    assert [g.prunable for g in groups] == [True, True, True, False]
    assert groups[3].reason == "its units are the model's outputs ('out')"
    assert groups[0].macs == 12 * 12 * 3 * 3 * 3 * 8  # conv 'a', same padding
    assert groups[1].macs == 4 * 4 * 3 * 3 * 8 * 6
    by_layer = macs_report(plain_cnn()).by_layer  # the producers' own multiply-adds
    assert [g.macs for g in groups] == [by_layer[p] for g in groups for p in g.producers]


def test_sequential_models_and_unbuilt_ones():
    model = tf.keras.Sequential(
        [
            tf.keras.Input((6, 6, 1)),
            L.Conv2D(3, 3, name="c"),
            L.Flatten(name="flat"),
            L.Dense(4, activation="softmax", name="probs"),
        ]
    )
    groups = pruning_groups(model)
    assert [(g.producers, g.channels, g.prunable) for g in groups] == [
        (("c",), 3, True),
        (("probs",), 4, False),
    ]
    assert groups[0].consumers == (Consumer("probs", 0, positions=16, width=3),)
    with pytest.raises(ValueError, match="has no functional graph"):
        pruning_groups(tf.keras.Sequential([L.Dense(2)]))


def test_identity_shortcut_couples_the_block_input_with_the_residual_conv():
    groups = by_producer(pruning_groups(residual_identity()))
    coupled = groups["a"]
    assert coupled is groups["c"] and coupled.producers == ("a", "c")
    assert coupled.prunable and coupled.channels == 8
    assert set(coupled.members) == {"a", "a_bn", "b", "c", "c_bn", "d"}
    assert groups["b"].producers == ("b",) and groups["b"].members == ("b", "c")
    assert len(pruning_groups(residual_identity())) == 4  # a+c, b, d, out


def test_projection_shortcut_couples_projection_and_residual_convs():
    groups = by_producer(pruning_groups(residual_projection()))
    assert groups["p"].producers == ("p", "r2") and groups["p"].prunable
    assert set(groups["s"].members) == {"s", "p", "r1"}
    assert groups["d"].consumers[0] == Consumer("out", 0, positions=36, width=4)


def test_concatenate_keeps_each_input_group_at_its_offset():
    groups = by_producer(pruning_groups(dense_block()))
    a, b = groups["a"], groups["b"]
    assert a is not b and a.prunable and b.prunable
    assert set(a.members) == {"a", "b", "cat_bn", "c"} and set(b.members) == {"b", "cat_bn", "c"}
    assert [c for c in a.consumers if c.layer == "c"] == [Consumer("c", 0, 1, 7)]
    assert [c for c in b.consumers if c.layer == "c"] == [Consumer("c", 4, 1, 7)]


def test_depthwise_follows_its_input_and_a_multiplier_stops_the_group():
    groups = by_producer(pruning_groups(inverted_residual()))
    assert set(groups["e"].members) == {"e", "e_bn", "dw", "dw_bn", "p"}
    assert groups["s"].producers == ("s", "p") and groups["s"].prunable
    stopped = by_producer(pruning_groups(inverted_residual(multiplier=2)))["e"]
    assert stopped.reason == (
        "flows into DepthwiseConv2D 'dw' which the analysis cannot follow (depth_multiplier=2)"
    )
    assert Consumer("x", 2, multiplier=2).rows([0, 1]) == [4, 5, 6, 7]


def test_separable_conv_follows_its_input_and_produces_a_new_group():
    groups = by_producer(pruning_groups(separable()))
    assert groups["a"].members == ("a", "s") and groups["a"].prunable
    assert groups["s"].producers == ("s",) and groups["s"].members == ("s", "c")


def test_flatten_maps_channel_c_to_rows_pos_times_channels_plus_c():
    group = by_producer(pruning_groups(flatten_dense()))["a"]
    assert group.consumers == (Consumer("d", 0, positions=9, width=4),)
    assert group.consumers[0].rows([1]) == [1 + 4 * pos for pos in range(9)]


def test_transpose_conv1d_and_dense_on_nd_inputs_are_producers_and_consumers():
    i = tf.keras.Input((6, 6, 3), name="inp")
    x = L.Conv2D(5, 3, padding="same", name="a")(i)
    x = L.Conv2DTranspose(4, 3, strides=2, name="up")(L.UpSampling2D(name="ups")(x))
    x = L.Dense(6, name="dense_nd")(L.Cropping2D(1, name="crop")(x))  # on (None, H, W, 4)
    x = L.Reshape((-1, 6), name="seq")(x)  # the channel axis stays last: followed
    x = L.Conv1D(3, 2, name="c1d")(x)
    model = randomize(tf.keras.Model(i, L.GlobalMaxPooling1D(name="gmp")(x)))
    groups = by_producer(pruning_groups(model))
    assert [groups[n].members for n in ("a", "up", "dense_nd")] == [
        ("a", "up"),
        ("up", "dense_nd"),
        ("dense_nd", "c1d"),
    ]
    assert all(groups[n].prunable for n in ("a", "up", "dense_nd"))
    assert groups["c1d"].reason == "its units are the model's outputs ('gmp')"
    masked = masked_copy(model, {"a": [2], "up": [1]})
    assert not masked.get_layer("up").kernel.numpy()[..., 2].any()  # (kh, kw, out, in)
    assert masked.get_layer("up").kernel.numpy()[..., 1, :].any()
    assert not masked.get_layer("dense_nd").kernel.numpy()[1].any()


def test_layers_it_cannot_follow_make_their_groups_unprunable_with_the_reason():
    i = tf.keras.Input((6, 6, 3), name="inp")
    x = L.Conv2D(4, 3, name="a")(i)
    x = L.Reshape((4, 16), name="reshape")(x)  # the channel axis moves
    x = L.Conv1D(3, 1, name="b")(x)
    x = L.Lambda(lambda t: t * 2, name="lam")(x)
    x = L.Dense(2, name="out")(L.Flatten(name="flat")(x))
    groups = by_producer(pruning_groups(tf.keras.Model(i, x)))
    assert groups["a"].reason == (
        "flows into Reshape 'reshape' which the analysis cannot follow (it moves the channel axis)"
    )
    assert groups["b"].reason == (
        "flows into Lambda 'lam' which the analysis cannot follow (arbitrary code)"
    )
    assert groups["out"].reason == "its units are the model's outputs ('out')"


def test_channel_preserving_reshape_and_scalar_tf_ops_are_followed():
    """Squeeze-and-excitation as keras.applications writes it: GAP, Reshape to (1, 1, C),
    two 1x1 convs, Multiply with the block; plus `x + 3.0` (a TFOpLambda)."""
    i = tf.keras.Input((6, 6, 3), name="inp")
    x = L.Conv2D(8, 3, name="a")(i) + 3.0
    se = L.Reshape((1, 1, 8), name="se_reshape")(L.GlobalAveragePooling2D(name="se_gap")(x))
    se = L.Conv2D(2, 1, activation="relu", name="se_reduce")(se)
    se = L.Conv2D(8, 1, activation="sigmoid", name="se_expand")(se)
    x = L.Multiply(name="se_mul")([x, se])
    x = L.Conv2D(4, 1, name="b")(x)
    groups = by_producer(pruning_groups(tf.keras.Model(i, L.Flatten()(x))))
    assert groups["a"].producers == ("a", "se_expand") and groups["a"].prunable
    assert set(groups["a"].members) == {"a", "se_reduce", "se_expand", "b"}


def test_a_one_channel_map_broadcast_by_multiply_couples_nothing():
    i = tf.keras.Input((6, 6, 3), name="inp")
    x = L.Conv2D(8, 3, name="a")(i)
    attention = L.Conv2D(1, 1, activation="sigmoid", name="att")(x)
    x = L.Conv2D(4, 1, name="b")(L.Multiply(name="gate")([x, attention]))
    groups = by_producer(pruning_groups(tf.keras.Model(i, L.Flatten()(x))))
    assert groups["a"].producers == ("a",) and groups["a"].prunable
    assert set(groups["a"].members) == {"a", "att", "b"}
    assert groups["att"].reason == "Multiply 'gate' broadcasts it over the channels"


def test_grouped_convs_refused_unless_one_group_per_channel():
    i = tf.keras.Input((6, 6, 4), name="inp")
    x = L.Conv2D(8, 1, name="a")(i)
    x = L.Conv2D(8, 3, groups=8, padding="same", name="per_channel")(x)  # ConvNeXt-style
    x = L.Conv2D(4, 1, name="b")(x)
    x = L.Conv2D(4, 3, groups=2, name="grouped")(x)
    groups = by_producer(pruning_groups(tf.keras.Model(i, L.Flatten()(x))))
    assert groups["a"].members == ("a", "per_channel", "b") and groups["a"].prunable
    assert groups["b"].reason == (
        "flows into Conv2D 'grouped' which the analysis cannot follow (groups=2)"
    )


KERAS3 = """
import keras
from avlsi.graph import pruning_groups
L = keras.layers
i = keras.Input((8, 8, 3))
x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, name="a")(i)))
x = L.Add()([x, L.Conv2D(8, 3, padding="same", name="b")(x)])
x = L.Concatenate()([x, L.Conv2D(3, 1, name="c")(x)])
x = L.Dense(2, name="out")(L.Flatten()(x))
print([(g.producers, g.channels, g.prunable) for g in pruning_groups(keras.Model(i, x))])
"""


def test_the_analysis_runs_on_keras3_models_too():
    """The graph walk uses only what tf-keras and Keras 3 share (both live in one process)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(KERAS3, {})
    assert printed.getvalue().strip().splitlines()[-1] == (
        "[(('a', 'b'), 8, True), (('c',), 3, True), (('out',), 2, False)]"
    )


def test_a_residual_from_the_model_input_is_unprunable():
    i = tf.keras.Input((6, 6, 4), name="inp")
    x = L.Add(name="add")([i, L.Conv2D(4, 3, padding="same", name="a")(i)])
    x = L.Conv2D(4, 3, name="b")(x)
    groups = by_producer(pruning_groups(tf.keras.Model(i, L.Flatten()(x))))
    assert groups["a"].reason == "Add 'add' couples it with the model input 'inp'"
    assert not groups["b"].prunable  # the model's output


def test_shared_layers_nested_models_softmax_and_other_axes_are_refused():
    i = tf.keras.Input((6, 6, 4), name="inp")
    x = L.Conv2D(4, 3, padding="same", name="a")(i)
    shared = L.Conv2D(4, 3, padding="same", name="shared")
    y = shared(shared(x))
    inner_in = tf.keras.Input((6, 6, 4))
    inner = tf.keras.Model(inner_in, L.Conv2D(4, 1)(inner_in), name="inner")
    z = L.Conv2D(4, 1, name="z")(i)
    w = L.Conv2D(4, 1, name="w")(i)
    v = L.Conv2D(4, 1, name="v")(i)
    cat = L.Concatenate(axis=1, name="cat_rows")([inner(z), w])
    soft = L.Conv2D(4, 1, name="after_soft")(L.Softmax(name="soft")(v))
    parts = [L.Flatten()(t) for t in (y, cat, soft)]
    groups = by_producer(pruning_groups(tf.keras.Model(i, L.Concatenate()(parts))))
    why = "which the analysis cannot follow"
    assert groups["a"].reason == f"flows into Conv2D 'shared' {why} (a layer called 2 times)"
    assert groups["z"].reason == f"flows into Functional 'inner' {why} (a nested model)"
    assert groups["w"].reason == (
        f"flows into Concatenate 'cat_rows' {why} (it concatenates on axis 1, not the channel axis)"
    )
    assert groups["v"].reason == "Softmax 'soft' normalises across its channels"


def test_applications_analyse_fast_with_the_expected_groups():
    apps = tf.keras.applications
    mobilenet = apps.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    resnet = apps.ResNet50(input_shape=(32, 32, 3), weights=None, classes=10)
    start = time.perf_counter()
    found = {"mobilenet": pruning_groups(mobilenet), "resnet": pruning_groups(resnet)}
    assert time.perf_counter() - start < 3
    # MobileNetV2: stem, 16 expand convs (the first block has none), 7 projection groups
    # coupled by their shortcuts (one per stage), Conv_1, the classifier.
    assert len(found["mobilenet"]) == 26
    assert [g.prunable for g in found["mobilenet"]].count(False) == 1
    stage = by_producer(found["mobilenet"])["block_1_project"]
    assert stage.producers == ("block_1_project", "block_2_project")
    assert "block_2_depthwise" in by_producer(found["mobilenet"])["block_2_expand"].members
    # ResNet50: stem, 2 per bottleneck (16), 4 stage groups (projection + every conv3), fc.
    assert len(found["resnet"]) == 38
    stage = by_producer(found["resnet"])["conv2_block1_0_conv"]
    assert stage.producers == (
        "conv2_block1_0_conv",
        "conv2_block1_3_conv",
        "conv2_block2_3_conv",
        "conv2_block3_3_conv",
    )
    assert stage.prunable and stage.channels == 256
    assert not by_producer(found["resnet"])["predictions"].prunable


# --- the equivalence check --------------------------------------------------------------


def test_plain_cnn_pruned_by_kerassurgeon_equals_the_masked_copy():
    model = randomize(plain_cnn())
    removed = {"a": [0, 3], "b": [1], "d": [2, 4]}
    pruned = delete_units(model, removed)
    assert equivalence_error(model, pruned, removed) < 1e-5
    assert equivalence_error(model, pruned, {"a": [0, 2], "b": [1], "d": [2, 4]}) > 1e-3


def test_masked_copy_zeroes_only_the_consumer_rows():
    model = randomize(flatten_dense())
    masked = masked_copy(model, {"a": [1]})
    kernel, original = masked.get_layer("d").kernel.numpy(), model.get_layer("d").kernel.numpy()
    rows = [1 + 4 * pos for pos in range(9)]
    assert not kernel[rows].any()
    assert np.array_equal(np.delete(kernel, rows, 0), np.delete(original, rows, 0))
    assert np.array_equal(masked.get_layer("a").kernel.numpy(), model.get_layer("a").kernel)


def test_flatten_dense_wrong_rows_are_caught():
    model = randomize(flatten_dense())
    removed = {"a": [1, 2]}
    assert equivalence_error(model, delete_units(model, removed), removed) < 1e-5
    channel_major = [c * 9 + pos for c in (1, 2) for pos in range(9)]  # the wrong layout
    wrong = slice_into(model, flatten_dense(a=2), out=removed, into={"d": channel_major})
    assert equivalence_error(model, wrong, removed) > 1e-3


def test_concatenate_pruned_by_kerassurgeon_equals_the_masked_copy():
    model = randomize(dense_block())
    removed = {"a": [1], "b": [0, 2]}
    assert equivalence_error(model, delete_units(model, removed), removed) < 1e-5


def test_projection_shortcut_pruned_by_kerassurgeon_equals_the_masked_copy():
    model = randomize(residual_projection())
    groups = pruning_groups(model)
    removed = {**group_removal(groups, by_producer(groups)["p"], [2, 5]), "s": [0]}
    assert removed == {"p": [2, 5], "r2": [2, 5], "s": [0]}
    assert equivalence_error(model, delete_units(model, removed), removed) < 1e-5


def test_identity_shortcut_by_hand_and_a_mismatched_add_is_caught():
    model = randomize(residual_identity())
    removed = {"a": [1, 6], "c": [1, 6]}
    into = {"b": [1, 6], "d": [1, 6]}
    out = {**removed, "a_bn": [1, 6], "c_bn": [1, 6]}
    right = slice_into(model, residual_identity(a=6), out=out, into=into)
    assert equivalence_error(model, right, removed) < 1e-5
    # kerassurgeon 0.2.0's silent failure: the Add's inputs lost different channels
    mismatched = {"a": [1, 6], "c": [2, 6], "a_bn": [1, 6], "c_bn": [2, 6]}
    wrong = slice_into(model, residual_identity(a=6), out=mismatched, into=into)
    assert equivalence_error(model, wrong, removed) > 1e-3


def test_inverted_residual_with_depthwise_by_hand():
    model = randomize(inverted_residual())
    removed = {"e": [0, 5], "s": [3], "p": [3]}
    out = {**removed, "e_bn": [0, 5], "dw": [0, 5], "dw_bn": [0, 5], "s_bn": [3], "p_bn": [3]}
    pruned = slice_into(
        model, inverted_residual(s=5, e=6), out=out, into={"e": [3], "p": [0, 5], "out": [3]}
    )
    assert equivalence_error(model, pruned, removed) < 1e-5
    assert equivalence_error(model, pruned, {"e": [0, 4], "s": [3]}) > 1e-3


def test_separable_conv_by_hand():
    model = randomize(separable())
    removed = {"a": [2], "s": [0, 4]}
    pruned = slice_into(model, separable(a=5, s=3), out=removed, into={"s": [2], "c": [0, 4]})
    assert equivalence_error(model, pruned, removed) < 1e-5


APPS = [
    "MobileNetV3Small",  # squeeze-excite, x + 3.0 (TFOpLambda), depthwise, Add
    pytest.param("EfficientNetB0", marks=pytest.mark.slow),  # Reshape, Multiply, swish
    "DenseNet",  # DenseNet121's layout with 2 layers a block: 8 concatenations, transitions
]


def application(name: str):
    """A keras.applications model at 32x32x3 for 10 classes (untrained)."""
    if name == "DenseNet":
        from tf_keras.src.applications.densenet import DenseNet

        return DenseNet([2, 2, 2, 2], weights=None, input_shape=(32, 32, 3), classes=10)
    return getattr(tf.keras.applications, name)(input_shape=(32, 32, 3), weights=None, classes=10)


@pytest.mark.parametrize("name", APPS)
def test_removed_channels_reach_nothing_in_the_masked_copy(name):
    """Whatever the producers write into the removed channels, the masked copy's output does
    not change: every path those channels take to a consumer is cut (and the kept channels,
    perturbed the same way, do change it: the check can fail)."""
    model = application(name)
    groups = pruning_groups(model)
    rng = np.random.default_rng(0)
    removed = {}
    for group in (g for g in groups if g.prunable):
        chosen = rng.choice(group.channels, max(1, group.channels * 3 // 10), replace=False)
        removed.update(group_removal(groups, group, chosen))
    masked = masked_copy(model, removed, groups)
    x = rng.standard_normal((2, 32, 32, 3)).astype("float32")
    before = logits(masked, x)[0]

    def perturb(channels):
        for name_, indices in channels.items():
            layer = masked.get_layer(name_)
            kernel = getattr(layer, "pointwise_kernel", None) or layer.kernel
            values = kernel.numpy()
            values[..., indices] = rng.normal(0, 0.3, values[..., indices].shape)
            kernel.assign(values)

    perturb(removed)
    assert np.array_equal(logits(masked, x)[0], before)
    first = next(g for g in groups if g.prunable)
    kept = [c for c in range(first.channels) if c not in removed[first.producers[0]]]
    perturb({p: kept for p in first.producers})
    assert np.abs(logits(masked, x)[0] - before).max() > 1e-3 * np.abs(before).max()


@pytest.mark.slow
def test_resnet50_pruned_by_kerassurgeon_in_every_group_equals_the_masked_copy():
    """30% of every prunable group of ResNet50 (the stage groups couple up to 7 convs across
    their shortcuts), removed in one kerassurgeon pass: the outputs match the masked copy."""
    model = randomize(tf.keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None))
    groups = pruning_groups(model)
    rng = np.random.default_rng(0)
    removed = {}
    for group in (g for g in groups if g.prunable):
        chosen = rng.choice(group.channels, max(1, group.channels * 3 // 10), replace=False)
        removed.update(group_removal(groups, group, chosen))
    assert len(removed) == 53  # every conv
    pruned = delete_units(model, removed)
    assert pruned.count_params() < 0.6 * model.count_params()
    assert equivalence_error(model, pruned, removed, samples=2) < 1e-5


def test_masked_copy_refuses_unknown_producers_and_disagreeing_coupled_ones():
    model = residual_identity()
    with pytest.raises(ValueError, match="'a_bn' produces no pruning group"):
        masked_copy(model, {"a_bn": [0]})
    with pytest.raises(ValueError, match="'a' and 'c' are coupled"):
        masked_copy(model, {"a": [0], "c": [1]})


# --- task=inspect ---------------------------------------------------------------------------


def test_task_inspect_prints_the_groups(cli):
    proc = cli("task=inspect", "model.batch_norm=true")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("model cnn (input 12x12x1, 10 classes): 6 groups of coupled")
    # TINY: 12x12x1, convs 4-4-(pool)-8-8-(pool), dense 8, 10 classes
    macs = [144 * 9 * 4, 144 * 9 * 4 * 4, 36 * 9 * 4 * 8, 36 * 9 * 8 * 8, 72 * 8, 8 * 10]
    batch_norm = 144 * 4 * 2 + 36 * 8 * 2 + 8  # one multiply-add per element (metrics.py)
    total = sum(macs) + batch_norm
    assert f"({total:,} per input in all)" in lines[0]
    share = f"{macs[0] / total:.1%}"
    assert lines[2].split() == ["0", "4", share, "yes", "conv0", "|", "conv0_bn", "conv1"]
    assert lines[-1].split()[:4] == ["5", "10", f"{macs[-1] / total:.1%}", "no"]
    assert lines[-1].endswith("its units are the model's outputs ('output')")
    assert not list(cli.tmp.glob("store/*")) and not cli.db.exists()  # nothing trained


def test_python_m_avlsi_inspect_and_its_mistakes(cli):
    args = ["dataset=synthetic", "dataset.shape=[8,8,2]", "model=dnn"]
    proc = subprocess.run(
        [sys.executable, "-m", "avlsi.inspect", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "model dnn (input 8x8x2, 10 classes): 7 groups" in proc.stdout
    assert_one_line_error(cli("task=inspect", "model.conv_filter=[2]"), "model.conv_filter", code=2)
