"""Nested models made one graph (avlsi/models/flatten.py), in tf-keras and Keras 3."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from avlsi.models.flatten import flatten_nested, has_nested_model

KERASES = ["tf_keras", "keras"]


def _outputs(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False))


def _nested(keras, frozen: bool = False):
    """A functional classifier calling a residual functional block, then a Sequential one
    (BatchNormalization inside; the first block frozen, as a transfer-learning backbone)."""
    layers = keras.layers
    keras.utils.set_random_seed(0)
    inner_in = keras.Input((8, 8, 3))
    a = layers.Conv2D(4, 3, padding="same", name="a")(inner_in)
    b = layers.Conv2D(4, 1, name="b")(layers.Conv2D(6, 1, activation="relu", name="a2")(a))
    block = keras.Model(inner_in, layers.Add(name="merge")([a, b]), name="block")
    block.trainable = not frozen
    tail = keras.Sequential(
        [keras.Input((8, 8, 4)), layers.Conv2D(5, 1, name="c"),
         layers.BatchNormalization(name="bn"), layers.ReLU(name="relu")],
        name="tail",
    )  # fmt: skip
    inputs = keras.Input((8, 8, 3))
    x = layers.GlobalAveragePooling2D(name="gap")(tail(block(inputs)))
    return keras.Model(inputs, layers.Dense(3, activation="softmax", name="out")(x))


@pytest.mark.parametrize("keras_name", KERASES)
def test_nested_models_become_their_layers_with_the_same_outputs(keras_name):
    keras = importlib.import_module(keras_name)
    model = _nested(keras, frozen=True)
    bn = model.get_layer("tail").get_layer("bn")  # moving statistics that are not the defaults
    bn.set_weights([w + 0.5 for w in bn.get_weights()])
    flat = flatten_nested(model)
    assert not has_nested_model(flat) and has_nested_model(model)
    names = [layer.name for layer in flat.layers[1:]]
    assert names == ["a", "a2", "b", "merge", "c", "bn", "relu", "gap", "out"]
    assert {layer.name for layer in flat.layers if not layer.trainable} == {"a", "a2", "b", "merge"}
    x = np.random.default_rng(1).random((5, 8, 8, 3), dtype=np.float32)
    np.testing.assert_allclose(_outputs(flat, x), _outputs(model, x), rtol=1e-6, atol=1e-7)
    assert flat.count_params() == model.count_params()
    assert flatten_nested(flat) is flat  # nothing nested: the model itself


@pytest.mark.parametrize("keras_name", KERASES)
def test_a_flattened_model_is_analysed_pruned_and_reloaded(keras_name, tmp_path):
    from avlsi.graph import pruning_groups
    from avlsi.models.file import load_saved
    from avlsi.surgery import delete_units

    keras = importlib.import_module(keras_name)
    flat = flatten_nested(_nested(keras))
    prunable = {g.producers[0]: g for g in pruning_groups(flat) if g.prunable}
    assert "a2" in prunable and "c" in prunable  # inside the former nested models
    pruned = delete_units(flat, {"a2": [0, 5], "c": [1]}, engine="native")
    assert pruned.get_layer("a2").filters == 4 and pruned.get_layer("c").filters == 4
    pruned.save(tmp_path / "pruned.keras")
    again = load_saved(tmp_path / "pruned.keras")
    x = np.random.default_rng(2).random((2, 8, 8, 3), dtype=np.float32)
    np.testing.assert_allclose(_outputs(again, x), _outputs(pruned, x), rtol=1e-6, atol=1e-7)


def test_a_keras_applications_backbone_in_a_sequential_classifier_is_flattened():
    import tf_keras as keras

    from avlsi.graph import pruning_groups

    backbone = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), include_top=False, weights=None, alpha=0.35
    )
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), backbone, keras.layers.GlobalAveragePooling2D(),
         keras.layers.Dense(5, activation="softmax")]
    )  # fmt: skip
    flat = flatten_nested(model)
    assert len(flat.layers) == len(backbone.layers) + 2
    groups = pruning_groups(flat)
    assert sum(g.prunable for g in groups) >= 20  # MobileNetV2's expansions and outputs
    x = np.random.default_rng(3).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(_outputs(flat, x), _outputs(model, x), rtol=1e-5, atol=1e-6)


def test_a_name_used_inside_and_outside_keeps_the_model_nested_saying_why(caplog):
    import logging

    import tf_keras as keras

    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, keras.layers.Dense(4, name="dense")(inner_in), name="inner")
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, name="hidden")(inner(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense_out")(x))
    model.get_layer("hidden")._name = "dense"  # the same name as the inner layer
    with caplog.at_level(logging.WARNING, logger="avlsi.models.flatten"):
        assert flatten_nested(model, "model=file") is model
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("model=file: its nested models stay nested")
    assert "layer name 'dense' is used both inside a nested model and outside it" in line


def test_a_nested_model_called_twice_stays_nested_and_its_groups_are_refused():
    import tf_keras as keras

    from avlsi.graph import pruning_groups

    inner_in = keras.Input((6,))
    shared = keras.Model(inner_in, keras.layers.Dense(6, name="shared_dense")(inner_in))
    inputs = keras.Input((6,))
    x = keras.layers.Dense(6, activation="relu", name="first")(inputs)
    x = shared(shared(x))  # the same weights twice: no single graph place for them
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    assert flatten_nested(model) is model
    first = next(g for g in pruning_groups(model) if "first" in g.producers)
    assert not first.prunable and "nested model" in first.reason


@pytest.mark.parametrize("keras_name", KERASES)
@pytest.mark.parametrize("training", [False, None])
def test_a_backbone_called_with_training_false_keeps_that_mode_once_flat(keras_name, training):
    """Keras' transfer-learning guide calls `base(x, training=False)` so that its batch
    normalisation stays in inference mode while the rest fine-tunes: so does the flat model."""
    keras = importlib.import_module(keras_name)
    keras.utils.set_random_seed(0)
    base_in = keras.Input((8, 8, 3))
    h = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3, padding="same")(base_in))
    base = keras.Model(base_in, keras.layers.ReLU()(h), name="base")
    bn = base.layers[2]
    bn.set_weights([w + 0.5 for w in bn.get_weights()])  # moving statistics far from a batch's
    inputs = keras.Input((8, 8, 3))
    x = base(inputs) if training is None else base(inputs, training=training)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    flat = flatten_nested(model)
    x = np.random.default_rng(4).random((4, 8, 8, 3), dtype=np.float32)
    in_training = np.asarray(model(x, training=True))
    np.testing.assert_allclose(np.asarray(flat(x, training=True)), in_training, atol=1e-6)
    if keras_name == "tf_keras":  # Keras 3 lets the outer call's training= win (its
        # functional.operation_fn): there the nested model trains too, flat or not
        inference = np.asarray(model(x, training=False))
        assert np.allclose(in_training, inference, atol=1e-6) == (training is False)


def test_frozen_layers_are_reported_once_flat(caplog):
    """A frozen backbone stays frozen, and the job says so (fine-tuning will not move it)."""
    import logging

    import tf_keras as keras

    from avlsi.models import report_frozen

    flat = flatten_nested(_nested(keras, frozen=True))
    with caplog.at_level(logging.INFO, logger="avlsi.models"):
        report_frozen(flat, "model=file")
        report_frozen(flatten_nested(_nested(keras)), "model=file")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "avlsi.models"]
    assert line.startswith("model=file: 3 of 6 layers with weights are frozen")
    assert line.endswith(": a, a2, b")


@pytest.mark.parametrize("unfreeze", [False, True])
def test_unfreeze_trains_the_frozen_backbone_too(unfreeze):
    """`finetune.unfreeze=true` (or train.): every layer trains, the frozen ones too."""
    import tf_keras as keras
    from omegaconf import OmegaConf

    from avlsi import train
    from avlsi.config import FinetuneConfig
    from avlsi.data import Dataset

    model = flatten_nested(_nested(keras, frozen=True))
    before = model.get_layer("a").get_weights()[0].copy()
    rng = np.random.default_rng(5)
    x, y = rng.random((32, 8, 8, 3), dtype=np.float32), rng.integers(0, 3, 32)
    data = Dataset(name="d", x_train=x, y_train=y, x_test=x, y_test=y, num_classes=3)
    settings = OmegaConf.merge(OmegaConf.structured(FinetuneConfig), {"unfreeze": unfreeze})
    train.fit(model, data, settings, verbose=0)
    moved = not np.array_equal(model.get_layer("a").get_weights()[0], before)
    assert moved == unfreeze


def test_the_transfer_learning_example_is_flat_and_prunable_with_a_frozen_backbone():
    """examples/my_models.transfer through build_model (as `model=builder` calls it)."""
    from omegaconf import OmegaConf

    from avlsi.graph import pruning_groups
    from avlsi.models import build_model

    cfg = OmegaConf.create({"_target_": "examples.my_models.transfer", "name": "builder"})
    model = build_model(cfg, (32, 32, 3), 10)
    assert not has_nested_model(model) and len(model.layers) > 100
    layers_with_weights = [layer for layer in model.layers if layer.weights]
    assert [layer.trainable for layer in layers_with_weights].count(True) == 1  # the head
    assert sum(g.prunable for g in pruning_groups(model)) >= 20
