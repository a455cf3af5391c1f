"""avlsi.surgery on real Keras graphs: each pruned model computes what the original computes
with the removed channels' consumer weights zeroed (tests/surgery_check.py), or the surgery
refuses with a SurgeryError naming the layer."""

import numpy as np
import pytest
import tensorflow as tf
from surgery_check import coupled_producers, randomized, relative_error

from avlsi.errors import UserError
from avlsi.surgery import SurgeryError, delete_units

L = tf.keras.layers
TOLERANCE = 1e-5


def conv(filters, name, kernel=3, **kw):
    return L.Conv2D(filters, kernel, padding="same", name=name, **kw)


def residual(projection: bool):
    """stem -> BN -> ReLU -> [conv, conv -> BN] + (identity | 1x1 projection) -> ReLU -> ..."""
    x = inp = L.Input((8, 8, 3))
    x = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(conv(6, "stem")(x)))
    y = conv(5, "res_a", activation="relu")(x)
    y = L.BatchNormalization(name="res_bn")(conv(8 if projection else 6, "res_b")(y))
    short = conv(8, "proj", kernel=1)(x) if projection else x
    x = L.Activation("relu", name="out_relu")(L.Add(name="add")([short, y]))
    x = conv(4, "next", activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inp, L.Dense(3, name="logits")(x))


def concatenated():
    inp = L.Input((8, 8, 3))
    a = L.MaxPooling2D(padding="same", strides=1)(conv(4, "left", activation="relu")(inp))
    b = L.LeakyReLU()(conv(6, "right")(inp))
    x = L.Concatenate(name="cat")([a, b])
    x = L.ELU()(L.BatchNormalization(name="cat_bn")(x))
    x = conv(5, "after")(x)
    x = L.Flatten()(x)
    return tf.keras.Model(inp, L.Dense(3, name="logits")(x))


def mobilenet_block(depth_multiplier=1):
    inp = L.Input((8, 8, 3))
    x = L.ReLU(6.0)(L.BatchNormalization()(conv(8, "expand", kernel=1)(inp)))
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=depth_multiplier, name="dw")(x)
    x = L.ReLU(6.0)(L.BatchNormalization(name="dw_bn")(x))
    x = L.SpatialDropout2D(0.2)(L.GaussianNoise(0.1)(x))
    x = L.BatchNormalization()(conv(6, "project", kernel=1)(x))
    x = L.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inp, L.Dense(3, name="logits")(x))


def separable():
    inp = L.Input((8, 8, 3))
    x = conv(6, "first", activation="relu")(inp)
    x = L.SeparableConv2D(7, 3, depth_multiplier=2, padding="same", name="sep")(x)
    x = L.Activation("swish")(x)
    x = conv(4, "last", activation="relu")(x)
    x = L.GlobalMaxPooling2D()(x)
    return tf.keras.Model(inp, L.Dense(3, name="logits")(x))


def transposed():
    inp = L.Input((6, 6, 3))
    x = conv(5, "down", strides=2)(inp)
    x = L.PReLU(shared_axes=[1, 2], name="prelu")(x)
    x = L.Conv2DTranspose(7, 3, strides=2, padding="same", name="up")(x)
    x = L.PReLU(name="prelu_full")(x)
    x = conv(4, "last")(x)
    x = L.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inp, L.Dense(3, name="logits")(x))


def merges():
    """Every element-wise merge, each fed by two producers pruned alike."""
    inp = L.Input((6, 6, 3))
    outs = []
    for merge in (L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum):
        key = merge.__name__.lower()
        a = conv(5, f"{key}_a")(inp)
        b = L.Activation("tanh")(conv(5, f"{key}_b")(inp))
        outs.append(conv(3, f"{key}_next")(merge(name=key)([a, b])))
    x = L.GlobalAveragePooling2D()(L.Add()(outs))
    return tf.keras.Model(inp, L.Dense(3, name="logits")(x))


def sequential():
    return tf.keras.Sequential(
        [
            L.Input((8, 8, 1)),
            L.Conv2D(6, 3, name="c1"),
            L.BatchNormalization(),
            L.ReLU(),
            L.MaxPooling2D(),
            L.Conv2D(5, 3, padding="same", name="c2", activation="relu"),
            L.Flatten(),
            L.Dense(7, name="d1", activation="relu"),
            L.Dropout(0.3),
            L.Dense(3, name="logits", activation="softmax"),
        ]
    )


def conv1d():
    inp = L.Input((10, 2))
    x = L.Conv1D(6, 3, padding="same", name="c1", activation="relu")(inp)
    x = L.Conv1DTranspose(5, 3, strides=2, name="t1")(x)
    x = L.Conv1D(4, 3, name="c2")(L.UpSampling1D()(x))
    return tf.keras.Model(inp, L.Dense(3, name="logits")(L.GlobalAveragePooling1D()(x)))


def conv3d():
    inp = L.Input((4, 4, 4, 1))
    x = L.Conv3D(6, 2, padding="same", name="c1", activation="relu")(inp)
    x = L.Conv3D(4, 2, name="c2")(L.ZeroPadding3D()(x))
    return tf.keras.Model(inp, L.Dense(3, name="logits")(L.Flatten()(x)))


def dense_on_maps():
    """Dense on 4-d inputs (a per-pixel layer), as producer and as consumer."""
    inp = L.Input((6, 6, 3))
    x = L.Dense(5, name="pixels", activation="relu")(conv(4, "first")(inp))
    x = L.Dense(6, name="mix")(L.ThresholdedReLU(0.1)(x))
    return tf.keras.Model(inp, L.Dense(3, name="logits")(L.GlobalAveragePooling2D()(x)))


def any_size():
    """Unknown height and width; a shortcut both added and concatenated."""
    inp = L.Input((None, None, 3))
    x = L.ReLU()(L.BatchNormalization()(conv(6, "stem")(inp)))
    y = conv(6, "res", kernel=1)(L.DepthwiseConv2D(3, padding="same")(x))
    x = conv(4, "after")(L.Concatenate()([L.Add()([x, y]), x]))
    return tf.keras.Model(inp, L.Dense(3, name="logits")(L.GlobalAveragePooling2D()(x)))


def tf_ops():
    """Element-wise TensorFlow ops in the graph (TFOpLambda) and a call with a keyword."""
    inp = L.Input((6, 6, 3))
    x = conv(6, "a")(inp)
    gate = tf.nn.relu6(conv(6, "b")(inp) + 3.0) * (1.0 / 6.0)  # hard sigmoid
    x = L.BatchNormalization(name="bn")(x * gate, training=False)
    x = conv(4, "after")(tf.nn.silu(x))
    return tf.keras.Model(inp, L.Dense(3, name="logits")(L.GlobalAveragePooling2D()(x)))


def squeeze_excite():
    """EfficientNet's squeeze-excite: pool, Reshape to (1, 1, C), two 1x1 convs, rescale."""
    inp = L.Input((6, 6, 3))
    x = conv(6, "a", activation="relu")(inp)
    se = L.Reshape((1, 1, 6), name="se_reshape")(L.GlobalAveragePooling2D()(x))
    se = conv(2, "se_reduce", kernel=1, activation="relu")(se)
    se = conv(6, "se_expand", kernel=1, activation="sigmoid")(se)
    x = conv(4, "after")(L.Multiply(name="se_scale")([x, se]))
    return tf.keras.Model(inp, L.Dense(3, name="logits")(L.GlobalAveragePooling2D()(x)))


CASES = {
    "identity shortcut": (
        lambda: residual(False),
        {"stem": [1, 4], "res_b": [1, 4], "res_a": [0, 2]},
    ),
    "projection shortcut": (
        lambda: residual(True),
        {"stem": [0, 5], "proj": [2, 3, 7], "res_b": [2, 3, 7]},
    ),
    "concatenate": (concatenated, {"left": [0, 3], "right": [1, 2, 5], "after": [4]}),
    "depthwise + BN + ReLU": (mobilenet_block, {"expand": [0, 6, 7], "project": [1]}),
    "separable conv": (separable, {"first": [0, 5], "sep": [1, 2, 6]}),
    "conv transpose + PReLU": (transposed, {"down": [1, 3], "up": [0, 4, 6]}),
    "merges": (
        merges,
        {
            f"{k}_{s}": [1, 3]
            for k in ("subtract", "multiply", "average", "maximum", "minimum")
            for s in "ab"
        },  # fmt: skip
    ),
    "sequential": (sequential, {"c1": [2], "c2": [0, 4], "d1": [1, 2, 6]}),
    "conv1d + transpose": (conv1d, {"c1": [2, 3], "t1": [0]}),
    "conv3d": (conv3d, {"c1": [1, 5], "c2": [3]}),
    "tf ops + keyword call": (tf_ops, {"a": [0, 5], "b": [0, 5]}),
    "unknown spatial size": (any_size, {"stem": [1, 3], "res": [1, 3]}),
    "squeeze-excite reshape": (
        squeeze_excite,
        {"a": [1, 4], "se_expand": [1, 4], "se_reduce": [0]},
    ),
    "dense on feature maps": (dense_on_maps, {"first": [0, 2], "pixels": [4], "mix": [1]}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pruned_model_equals_the_masked_original(case):
    build, removed = CASES[case]
    model = randomized(build())
    pruned = delete_units(model, removed)
    assert relative_error(model, pruned, removed) <= TOLERANCE
    for name, channels in removed.items():
        assert pruned.get_layer(name).output_shape[-1] == (
            model.get_layer(name).output_shape[-1] - len(channels)
        )
    assert pruned.count_params() < model.count_params()


def test_cut_weights_are_the_right_slices():
    model = randomized(transposed())
    pruned = delete_units(model, {"down": [1, 3], "up": [0, 4, 6]})
    keep_down, keep_up = [0, 2, 4], [1, 2, 3, 5]
    up = model.get_layer("up").get_weights()[0]  # (kh, kw, out, in)
    np.testing.assert_array_equal(
        pruned.get_layer("up").get_weights()[0], up[:, :, keep_up][..., keep_down]
    )
    alpha = model.get_layer("prelu_full").get_weights()[0]  # (h, w, channels)
    np.testing.assert_array_equal(
        pruned.get_layer("prelu_full").get_weights()[0], alpha[..., keep_up]
    )


def test_add_inputs_losing_different_channels_is_refused():
    model = residual(False)
    with pytest.raises(SurgeryError) as caught:
        delete_units(model, {"stem": [1, 4], "res_b": [1, 5]})
    message = str(caught.value)
    assert "Add 'add'" in message and "lose different channels" in message
    assert "'stem_relu' loses [1, 4]" in message and "'res_bn' loses [1, 5]" in message
    assert isinstance(caught.value, UserError)


def test_one_add_input_pruned_alone_is_refused():
    with pytest.raises(SurgeryError, match="inputs of Add 'add' lose different channels"):
        delete_units(residual(True), {"proj": [0]})


def shared():
    inp = L.Input((6, 6, 4))
    twice = conv(4, "twice")
    x = twice(twice(inp))
    return tf.keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling2D()(x)))


def per_channel_constant():
    inp = L.Input((6, 6, 3))
    x = conv(4, "a")(inp) * np.arange(4, dtype=np.float32)
    return tf.keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling2D()(conv(2, "b")(x))))


REFUSALS = {
    "depth multiplier": (
        lambda: mobilenet_block(2),
        {"expand": [0]},
        "DepthwiseConv2D 'dw' has depth_multiplier=2",
    ),
    "depthwise producer": (mobilenet_block, {"dw": [0]}, "DepthwiseConv2D 'dw' has no output"),
    "every unit": (sequential, {"d1": list(range(7))}, "removing all 7 units of Dense 'd1'"),
    "shared producer": (shared, {"twice": [1]}, "Conv2D 'twice' is called more than once"),
    "per-channel constant": (
        per_channel_constant,
        {"a": [1]},
        "TFOpLambda 'tf.math.multiply\\w*' takes a constant of shape \\(4,\\)",
    ),
    "unknown layer": (sequential, {"c9": [0]}, "no layer named 'c9'"),
    "out of range": (sequential, {"c1": [6]}, "Conv2D 'c1' has units 0..5"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_name_the_layer(case):
    build, units, needle = REFUSALS[case]
    with pytest.raises(SurgeryError, match=needle):
        delete_units(build(), units)


def test_softmax_over_cut_channels_is_refused():
    inp = L.Input((6, 6, 3))
    x = L.Softmax(name="attention")(conv(4, "scores")(inp))
    x = conv(2, "after")(x)
    model = tf.keras.Model(inp, L.GlobalAveragePooling2D()(x))
    with pytest.raises(SurgeryError, match="Softmax 'attention' normalizes over the channels"):
        delete_units(model, {"scores": [1]})


def test_channels_reaching_the_output_are_refused():
    inp = L.Input((6, 6, 3))
    x = L.GlobalAveragePooling2D()(conv(4, "features")(inp))
    model = tf.keras.Model(inp, L.Activation("sigmoid", name="scores")(x))
    with pytest.raises(SurgeryError, match="reach the model output Activation 'scores'"):
        delete_units(model, {"features": [1]})


def test_unsupported_layer_is_a_surgery_error_naming_it():
    inp = L.Input((6, 6, 3))
    x = L.LayerNormalization(name="ln")(conv(4, "features")(inp))
    model = tf.keras.Model(inp, L.Dense(2)(L.Flatten()(x)))
    with pytest.raises(SurgeryError, match="LayerNormalization 'ln'"):
        delete_units(model, {"features": [1]})


@pytest.mark.slow
def test_mobilenet_v2_every_coupled_group_in_one_pass():
    """keras.applications MobileNetV2: 30% of every group (the project convs of each
    residual chain together) removed at once; outputs equal the masked original."""
    model = tf.keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )
    model = randomized(model)
    groups = coupled_producers(model)
    assert max(len(group) for group in groups) == 4  # block_6 .. block_9 project convs
    rng = np.random.default_rng(0)
    removed = {}
    for group in groups:
        width = model.get_layer(group[0]).output_shape[-1]
        channels = sorted(rng.choice(width, size=max(1, width * 3 // 10), replace=False))
        removed.update({name: [int(c) for c in channels] for name in group})
    pruned = delete_units(model, removed)
    assert relative_error(model, pruned, removed) <= TOLERANCE
    assert pruned.count_params() < 0.6 * model.count_params()
