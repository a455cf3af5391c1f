"""Models found from their graph, not their names: output layers, activations, logits; and
the optimizer settings that compile them."""

import math

import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from avlsi import train
from avlsi.config import TrainConfig
from avlsi.criteria import ScoringContext, sample_means, spatial_sum, unit_output_layer
from avlsi.models import ends_in_softmax, output_layers

layers = tf.keras.layers


def nameless_sequential(head: list) -> tf.keras.Model:
    """A user's Sequential model, no layer named, ending in `head`."""
    return tf.keras.Sequential(
        [
            layers.Input((8, 8, 1)),
            layers.Conv2D(4, 3, activation="relu"),
            layers.Conv2D(6, 3),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.Flatten(),
            layers.Dense(8, activation="relu"),
            *head,
        ]
    )


HEADS = {  # built inside the test: Keras' automatic names restart with each session
    "logits": (lambda: [layers.Dense(5)], False),
    "dense softmax": (lambda: [layers.Dense(5, activation="softmax")], True),
    "Softmax layer": (lambda: [layers.Dense(5), layers.Softmax()], True),
    "softmax then dropout": (
        lambda: [layers.Dense(5), layers.Activation("softmax"), layers.Dropout(0.1)],
        True,
    ),
    "BN then softmax": (
        lambda: [layers.Dense(5), layers.BatchNormalization(), layers.Activation("softmax")],
        True,
    ),
    "linear activation": (lambda: [layers.Dense(5), layers.Activation("linear")], False),
    "softmax then dense": (
        lambda: [layers.Dense(5, activation="softmax"), layers.Dense(5)],
        False,
    ),
}


@pytest.mark.parametrize("head", list(HEADS))
def test_the_output_layer_and_softmax_come_from_the_graph(head):
    make_head, softmax = HEADS[head]
    model = nameless_sequential(make_head())
    dense = [lyr for lyr in model.layers if isinstance(lyr, layers.Dense)]
    assert output_layers(model) == [dense[-1]]
    assert ends_in_softmax(model) is softmax


def test_output_layers_follow_every_branch_of_a_merge():
    inputs = tf.keras.Input((6,))
    first, second, third, hidden = (layers.Dense(n) for n in (3, 3, 3, 4))
    h = layers.Activation("relu")(hidden(inputs))
    merged = layers.Add()([first(inputs), layers.Average()([second(inputs), third(h)])])
    model = tf.keras.Model(inputs, layers.Softmax()(merged))
    found = output_layers(model)
    assert {id(lyr) for lyr in found} == {id(first), id(second), id(third)}  # not hidden


def test_unit_output_layer_follows_the_graph():
    inputs = tf.keras.Input((8, 8, 2))
    own = layers.Conv2D(3, 3, activation="relu", padding="same")
    x = own(inputs)
    via_bn = layers.Conv2D(3, 3, padding="same")
    relu_after_bn = layers.ReLU()
    x = relu_after_bn(layers.BatchNormalization()(via_bn(x)))
    via_dropout = layers.Conv2D(3, 3, padding="same")
    tanh = layers.Activation("tanh")
    x = tanh(layers.Dropout(0.2)(via_dropout(x)))
    forked = layers.Conv2D(3, 3, padding="same")
    y = forked(x)
    x = layers.Activation("relu")(layers.Add()([y, layers.ReLU()(y)]))
    bare = layers.Dense(4)
    out = layers.Dense(2)(bare(layers.Flatten()(x)))
    model = tf.keras.Model(inputs, out)
    assert unit_output_layer(model, own) is own
    assert unit_output_layer(model, via_bn) is relu_after_bn
    assert unit_output_layer(model, via_dropout) is tanh
    assert unit_output_layer(model, forked) is forked  # two consumers: no single chain
    assert unit_output_layer(model, bare) is bare  # feeds another Dense: no activation


def test_loss_gradients_read_logits_as_logits():
    """Gradient criteria see the same loss whether the model outputs logits or softmax."""
    tf.keras.utils.set_random_seed(0)
    body = nameless_sequential([layers.Dense(5)])
    probabilities = tf.keras.Model(body.inputs, layers.Softmax()(body.outputs[0]))
    rng = np.random.default_rng(0)
    context = ScoringContext(rng.random((6, 8, 8, 1), dtype=np.float32), rng.integers(0, 5, 6), 0)
    targets = [lyr for lyr in body.layers if type(lyr).__name__ in ("Conv2D", "Dense")][:-1]

    def taylor(model):
        return sample_means(
            model, targets, context, lambda a, g: spatial_sum(a * g), gradients=True
        )

    from_logits, from_probabilities = taylor(body), taylor(probabilities)
    for name, scores in from_logits.items():
        np.testing.assert_allclose(scores, from_probabilities[name], rtol=1e-4, atol=1e-7)
        assert np.abs(scores).sum() > 0


GRADS = {"gradients": True}


def settings(**values):
    return OmegaConf.merge(OmegaConf.structured(TrainConfig), values)


def test_optimizer_settings_reach_the_compiled_model():
    model = nameless_sequential([layers.Dense(5)])
    train.compile_model(model, settings(optimizer="sgd", momentum=0.7, learning_rate=0.1))
    assert isinstance(model.optimizer, tf.keras.optimizers.SGD)
    assert model.optimizer.momentum == pytest.approx(0.7)
    assert model.loss.get_config()["from_logits"] is True
    train.compile_model(model, settings(optimizer="adamw", lr_schedule="cosine"), total_steps=40)
    assert isinstance(model.optimizer, tf.keras.optimizers.AdamW)
    assert model.optimizer.weight_decay == pytest.approx(train.ADAMW_DEFAULT_DECAY)
    saved = model.optimizer.get_config()["learning_rate"]  # as the .keras file records it
    assert saved["class_name"] == "CosineDecay" and saved["config"]["decay_steps"] == 40
    schedule = tf.keras.optimizers.schedules.deserialize(saved)
    assert float(schedule(40)) == pytest.approx(0.0, abs=1e-9)
    assert float(schedule(20)) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 2)))
    train.compile_model(model, settings(optimizer="sgd", weight_decay=0.01))
    assert model.optimizer.weight_decay == pytest.approx(0.01)
    softmax = nameless_sequential([layers.Dense(5, activation="softmax")])
    train.compile_model(softmax)  # evaluation's default: Adam, probabilities
    assert isinstance(softmax.optimizer, tf.keras.optimizers.Adam)
    assert softmax.loss.get_config()["from_logits"] is False


def test_saved_files_load_in_safe_mode_in_every_format(tmp_path):
    """.keras, .h5 and SavedModel load; a Python lambda is refused in .h5 too (where
    tf-keras' own safe_mode does not reach)."""
    from avlsi.errors import UserError
    from avlsi.models.file import load

    model = nameless_sequential([layers.Dense(5)])
    for name in ("model.keras", "model.h5", "saved_model"):
        model.save(tmp_path / name)
        loaded = load((8, 8, 1), 5, OmegaConf.create({"path": str(tmp_path / name)}))
        x = np.ones((2, 8, 8, 1), np.float32)
        np.testing.assert_allclose(loaded(x), model(x), rtol=1e-5, atol=1e-6)
    inputs = tf.keras.Input((4,))
    risky = tf.keras.Model(inputs, layers.Lambda(lambda t: t * 2)(layers.Dense(3)(inputs)))
    for name in ("lambda.keras", "lambda.h5"):
        risky.save(tmp_path / name)
        with pytest.raises(UserError, match="lambda"):
            load((4,), 3, OmegaConf.create({"path": str(tmp_path / name)}))


def test_a_stored_convnext_reloads(tmp_path):
    """tf-keras cannot reload its own ConvNeXt files without their LayerScale class; the
    stored baselines and pruned models of a keras_app job are reloaded with it."""
    from tf_keras.src.applications.convnext import ConvNeXt

    from avlsi.pipeline import _load

    model = ConvNeXt(  # ConvNeXtTiny's layout (LayerScale included), one block a stage
        depths=[1, 1, 1, 1], projection_dims=[8, 16, 32, 64], model_name="convnext_mini",
        weights=None, input_shape=(32, 32, 3), classes=3,
    )  # fmt: skip
    model.save(tmp_path / "convnext.keras")
    again = _load(tmp_path / "convnext.keras")
    assert again.count_params() == model.count_params()
