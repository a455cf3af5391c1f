"""avlsi.surgery: kerassurgeon works on this TensorFlow and removes exactly what it is told."""

import numpy as np
import pytest
from conftest import stack_config
from omegaconf import OmegaConf

import avlsi.surgery as surgery
from avlsi.metrics import count_macs, count_params
from avlsi.models.stack import build

CNN = stack_config("cnn", [4, 6, 8, 8], [10])


def zero_units(model, units):
    for name, idx in units.items():
        kernel, bias = model.get_layer(name).get_weights()
        kernel[..., idx] = 0.0
        bias[idx] = 0.0
        model.get_layer(name).set_weights([kernel, bias])


@pytest.mark.parametrize(
    "units", [{"conv1": [0, 3]}, {"conv2": [1], "conv3": [0, 7], "dense0": [2, 5, 9]}]
)
def test_removing_zeroed_units_keeps_outputs(units):
    model = build((12, 12, 1), 5, CNN)
    zero_units(model, units)
    x = np.random.default_rng(0).random((16, 12, 12, 1), dtype=np.float32)
    before = model.predict(x, verbose=0)
    pruned = surgery.delete_units(model, units)
    after = pruned.predict(x, verbose=0)
    np.testing.assert_allclose(after, before, atol=1e-6)
    for name, idx in units.items():
        assert pruned.get_layer(name).get_weights()[0].shape[-1] == (
            model.get_layer(name).get_weights()[0].shape[-1] - len(idx)
        )
    assert count_params(pruned) < count_params(model)
    assert count_macs(pruned) < count_macs(model)


def test_keeps_the_right_units():
    model = build((12, 12, 1), 5, CNN)
    pruned = surgery.delete_units(model, {"conv3": [1, 2]})
    kept = model.get_layer("conv3").get_weights()[0][..., [0, 3, 4, 5, 6, 7]]
    np.testing.assert_array_equal(pruned.get_layer("conv3").get_weights()[0], kept)


def test_nothing_to_remove_returns_the_same_model():
    model = build((12, 12, 1), 5, CNN)
    assert surgery.delete_units(model, {"conv1": []}) is model


def test_macs_of_the_seed_cnn():
    cfg = OmegaConf.merge(CNN, {"conv_filters": [32, 32, 64, 64], "dense_units": [128]})
    model = build((28, 28, 1), 10, cfg)
    assert count_params(model) == 467_818
    conv = 28 * 28 * 9 * (1 * 32 + 32 * 32) + 14 * 14 * 9 * (32 * 64 + 64 * 64)
    assert count_macs(model) == conv + 7 * 7 * 64 * 128 + 128 * 10
