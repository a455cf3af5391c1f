"""The native surgery engine: on tf-keras models it gives exactly what the kerassurgeon engine
gives (every weight array equal, outputs within 1e-6); on Keras 3 models, where kerassurgeon
cannot run, the pruned model computes what the original computes with the removed channels'
consumer weights zeroed (`avlsi.graph.equivalence_error`) and reloads with plain Keras 3.

Every architecture is written once for either Keras (`K` is `tf_keras` or `keras`); the
selection removes about a third of every prunable group's channels, all in one surgery."""

import keras
import numpy as np
import pytest
import tf_keras
from conftest import stack_config
from surgery_check import randomized

from avlsi.graph import equivalence_error, pruning_groups
from avlsi.models import stack
from avlsi.surgery import SurgeryError, delete_units, resolve_engine

KERASES = {"tf-keras": tf_keras, "keras3": keras}
STACKS = {  # the built-in stacks at tiny widths: conf/model/{cnn,dnn,fer_cnn}.yaml's shapes
    "cnn": ((12, 12, 1), 5, {"conv_filters": [4, 6, 8, 8], "dense_units": [10]}),
    "dnn": ((6, 6, 1), 4, {"conv_filters": [], "dense_units": [12, 10, 8, 8, 6, 6]}),
    "fer_cnn": (
        (12, 12, 1),
        7,
        {
            "conv_filters": [4, 4, 6, 6, 8, 8],
            "dense_units": [10, 8],
            "batch_norm": True,
            "dropout": 0.25,
        },
    ),  # fmt: skip
}


def stack_model(K, name: str):
    """`avlsi.models.stack.build`'s graph in Keras `K` (tf-keras or Keras 3)."""
    shape, classes, sizes = STACKS[name]
    cfg = stack_config(name, sizes["conv_filters"], sizes["dense_units"])
    cfg.batch_norm, cfg.dropout = sizes.get("batch_norm", False), sizes.get("dropout", 0.0)
    cfg.keras = 2 if K is tf_keras else 3
    return stack.build(shape, classes, cfg)


def residual(K):
    """examples/my_models.residual_cnn's blocks, with an identity and a projection shortcut;
    layers unnamed (the engines must not depend on names)."""
    L = K.layers
    x = inputs = K.Input((8, 8, 3))
    x = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(6, 3, padding="same")(x)))
    for width in (6, 8):  # identity shortcut, then a 1x1 projection to 8 channels
        y = L.Conv2D(5, 3, padding="same", activation="relu")(x)
        y = L.BatchNormalization()(L.Conv2D(width, 3, padding="same", use_bias=False)(y))
        short = x if width == x.shape[-1] else L.Conv2D(width, 1)(x)
        x = L.Activation("relu")(L.Add()([short, y]))
    x = L.GlobalAveragePooling2D()(x)
    return K.Model(inputs, L.Dense(3)(x), name="residual")


def concatenated(K):
    """Two branches concatenated, BN across both, then a conv and Flatten -> Dense."""
    L = K.layers
    inputs = K.Input((8, 8, 3))
    a = L.MaxPooling2D(padding="same", strides=1)(L.Conv2D(4, 3, padding="same")(inputs))
    b = L.LeakyReLU()(L.Conv2D(6, 1)(inputs))
    c = L.Conv2D(3, 3, padding="same", activation="relu")(inputs)
    x = L.Concatenate()([a, b, c])
    x = L.ELU()(L.BatchNormalization()(x))
    x = L.Conv2D(5, 3, padding="same", strides=2)(x)
    x = L.Flatten()(L.PReLU(shared_axes=[1, 2])(x))
    return K.Model(inputs, L.Dense(3)(x), name="concatenated")


def depthwise(K):
    """MobileNet-style: 1x1 expand, depthwise + BN, separable (depth multiplier 2), SE-like
    rescaling through Reshape, global pooling."""
    L = K.layers
    inputs = K.Input((8, 8, 3))
    x = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(8, 1)(inputs)))
    x = L.DepthwiseConv2D(3, padding="same")(x)
    x = L.ReLU(6.0)(L.BatchNormalization()(x))
    x = L.SeparableConv2D(7, 3, depth_multiplier=2, padding="same")(x)
    x = L.Activation("swish")(x)
    squeeze = L.Reshape((1, 1, 7))(L.GlobalAveragePooling2D()(x))
    squeeze = L.Conv2D(7, 1, activation="sigmoid")(L.Conv2D(3, 1, activation="relu")(squeeze))
    x = L.Multiply()([x, squeeze])
    x = L.BatchNormalization()(L.Conv2D(6, 1)(x))
    x = L.GlobalMaxPooling2D()(x)
    return K.Model(inputs, L.Dense(3)(x), name="depthwise")


def sequential(K):
    L = K.layers
    return K.Sequential(
        [
            K.Input((8, 8, 2)),
            L.Conv2D(6, 3, padding="same"),
            L.BatchNormalization(),
            L.ReLU(),
            L.MaxPooling2D(),
            L.Conv2D(5, 3, padding="same", activation="relu"),
            L.Flatten(),
            L.Dense(7, activation="relu"),
            L.Dropout(0.2),
            L.Dense(3),
        ],
        name="sequential",
    )


ARCHITECTURES = {
    **{name: (lambda K, name=name: stack_model(K, name)) for name in STACKS},
    "residual": residual,
    "concatenated": concatenated,
    "depthwise": depthwise,
    "sequential": sequential,
}


def third_of_every_group(model, seed: int = 0) -> dict[str, list[int]]:
    """About a third of every prunable group's channels, the same for all its producers."""
    rng = np.random.default_rng(seed)
    units = {}
    for group in pruning_groups(model):
        if group.prunable:
            chosen = rng.choice(group.channels, size=max(1, group.channels // 3), replace=False)
            units.update({name: sorted(int(c) for c in chosen) for name in group.producers})
    return units


def sample(model, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, *model.input_shape[1:])).astype("float32")


def assert_engines_agree(model, units) -> None:
    """kerassurgeon and native prune `model` alike: every weight array equal, outputs within
    1e-6."""
    by_kerassurgeon = delete_units(model, units, engine="kerassurgeon")
    by_native = delete_units(model, units, engine="native")
    assert type(by_native) is type(model)  # a Sequential stays a Sequential
    compared = 0
    for layer in model.layers:
        want = by_kerassurgeon.get_layer(layer.name).get_weights()
        got = by_native.get_layer(layer.name).get_weights()
        assert [w.shape for w in got] == [w.shape for w in want], layer.name
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(g, w, err_msg=layer.name)
            compared += 1
    assert compared == len(model.get_weights())
    x = sample(model)
    np.testing.assert_allclose(by_native(x), by_kerassurgeon(x), rtol=0, atol=1e-6)
    assert by_native.count_params() < model.count_params()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_both_engines_give_the_same_model_on_tf_keras(name):
    model = randomized(ARCHITECTURES[name](tf_keras))
    units = third_of_every_group(model)
    assert len({tuple(v) for v in units.values()}) >= 2, units  # several groups cut at once
    assert_engines_agree(model, units)


@pytest.mark.slow
def test_both_engines_give_the_same_mobilenet_v2():
    """keras.applications' MobileNetV2 (residual adds across depthwise blocks, 25 groups)."""
    model = tf_keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )
    model = randomized(model)
    units = third_of_every_group(model)
    assert len({tuple(v) for v in units.values()}) >= 20
    assert_engines_agree(model, units)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_native_engine_prunes_keras3_models_exactly(name, tmp_path):
    model = randomized(ARCHITECTURES[name](keras))
    assert resolve_engine(model, "auto") == "native"
    units = third_of_every_group(model)
    pruned = delete_units(model, units)
    assert type(pruned) is type(model) and pruned.name == model.name
    for producer, removed in units.items():
        width = model.get_layer(producer).output.shape[-1]
        assert pruned.get_layer(producer).output.shape[-1] == width - len(removed)
    assert pruned.count_params() < model.count_params()
    assert equivalence_error(model, pruned, units) <= 1e-5
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    x = sample(model)
    np.testing.assert_allclose(loaded(x), pruned(x), rtol=0, atol=1e-6)


def test_keras3_ops_and_normalization_are_followed(tmp_path):
    """Element-wise Keras 3 ops with number arguments (`x * 2.0`, `keras.ops.relu`, `a + b`)
    pass channels like TFOpLambda does in tf-keras; Normalization's per-channel mean and
    variance (given in its config) lose the removed channels."""
    L = keras.layers
    inputs = keras.Input((6, 6, 3))
    a = L.Conv2D(5, 3, padding="same", name="a")(inputs) * 2.0
    b = keras.ops.relu(L.Conv2D(5, 1, name="b")(inputs))
    x = L.Normalization(mean=np.arange(5.0), variance=np.arange(1.0, 6.0))(a + b)
    x = L.Conv2D(4, 3, name="c")(x)
    model = randomized(keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(x))))
    units = {"a": [1, 3], "b": [1, 3], "c": [0]}
    pruned = delete_units(model, units)
    (norm,) = [layer for layer in pruned.layers if isinstance(layer, L.Normalization)]
    assert norm.get_config()["mean"] == [0.0, 2.0, 4.0]
    assert equivalence_error(model, pruned, units) <= 1e-5
    pruned.save(tmp_path / "ops.keras")
    x = sample(model)
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "ops.keras")(x), pruned(x))


def test_the_keras3_equivalence_check_sees_a_wrong_cut():
    """Prune some channels but claim others: the masked copy differs (the check is not
    vacuous on Keras 3)."""
    model = randomized(residual(keras))
    units = third_of_every_group(model)
    claimed = third_of_every_group(model, seed=5)
    assert claimed != units
    assert equivalence_error(model, delete_units(model, units), claimed) > 1e-2


def test_nothing_to_remove_returns_the_model():
    model = residual(keras)
    assert delete_units(model, {model.layers[1].name: []}) is model


def keras3_refusals():
    L = keras.layers
    inputs = keras.Input((6, 6, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(4, 3, padding="same", name="b")(inputs)
    x = L.Add(name="merge")([a, b])
    x = L.LayerNormalization(name="ln")(L.Conv2D(5, 3, name="c")(x))
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Conv2D(6, 1, name="d")(x)
    x = keras.ops.multiply(x, np.arange(6, dtype="float32"))  # a constant per channel
    x = L.Conv2D(4, 1, name="e")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3, name="logits")(x))


REFUSALS = {
    "output layer": ({"logits": [0]}, "units of Dense 'logits': its units are the model's outputs"),
    "unknown layer": ({"nope": [0]}, "the model has no layer named 'nope'"),
    "depthwise": ({"dw": [0]}, "DepthwiseConv2D 'dw' has no output units"),
    "all units": ({"e": [0, 1, 2, 3]}, "removing all 4 units of Conv2D 'e'"),
    "out of range": ({"e": [4]}, "Conv2D 'e' has units 0..3"),
    "merge inputs differ": ({"a": [1], "b": [2]}, "'a' and 'b' are coupled"),
    "merge input alone": ({"a": [1]}, "'a' and 'b' are coupled .* 'b' does not lose"),
    "unknown layer type": ({"c": [1]}, "LayerNormalization 'ln'"),
    "per-channel constant": ({"d": [1]}, "Multiply 'multiply\\w*'"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_keras3_refusals_name_the_layer(case):
    units, needle = REFUSALS[case]
    with pytest.raises(SurgeryError, match=needle) as caught:
        delete_units(keras3_refusals(), {**units, "e": units.get("e", [0])})
    assert "\n" not in str(caught.value)


def test_a_layer_called_twice_is_refused_by_name():
    L = keras.layers
    inputs = keras.Input((6, 6, 3))
    twice = L.Conv2D(3, 3, padding="same", name="twice")
    x = L.GlobalAveragePooling2D()(twice(twice(inputs)))
    model = keras.Model(inputs, L.Dense(2)(x))
    with pytest.raises(SurgeryError, match="Conv2D 'twice' is not a producer the coupled"):
        delete_units(model, {"twice": [0]})


def test_a_refusal_leaves_nothing_half_done():
    """A selection with one prunable and one unprunable group is refused as a whole."""
    model = keras3_refusals()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(SurgeryError, match="LayerNormalization 'ln'"):
        delete_units(model, {"e": [0], "c": [1]})
    assert all(np.array_equal(w, v) for w, v in zip(model.get_weights(), before, strict=True))


def test_engine_choice():
    k3, k2 = sequential(keras), sequential(tf_keras)
    assert resolve_engine(k2, "auto") == "kerassurgeon"
    assert resolve_engine(k2, "native") == "native" and resolve_engine(k3, "native") == "native"
    with pytest.raises(SurgeryError, match="kerassurgeon engine cannot prune Keras 3 model"):
        delete_units(k3, {"dense_1": [0]}, engine="kerassurgeon")
    with pytest.raises(SurgeryError, match="unknown surgery engine 'fast'"):
        resolve_engine(k2, "fast")
