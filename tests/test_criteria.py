"""Criteria on hand-built models with known weights: scores, selection, masks, refusals."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import stack_config
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import avlsi.criteria.grad_activation as grad_activation
from avlsi import masking
from avlsi.config import Normalize, register
from avlsi.criteria import ScoringContext, get_scorer
from avlsi.criteria.reference import grad_activation_per_unit
from avlsi.errors import UserError
from avlsi.metrics import size_metrics
from avlsi.models.stack import build
from avlsi.select import (
    lowest_within_caps,
    n_to_remove,
    normalise,
    select_units,
    share_of,
)
from avlsi.surgery import delete_units
from avlsi.targets import prune_targets

CONF = Path(__file__).resolve().parents[1] / "conf"
layers = tf.keras.layers
register()

DATA_CRITERIA = ("mean_activation", "grad_activation", "gradient", "apoz", "taylor")


def prunable_layers(model, criterion) -> list:
    return prune_targets(model, criterion).layers


def criterion_cfg(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[f"criterion={name}", *overrides]).criterion


def scorer(name: str):
    return get_scorer(criterion_cfg(name))


def accepted_scopes(name: str) -> set[str]:
    return {scope for scope, types in criterion_cfg(name).layer_types.items() if types}


# --- a dense model whose units' activations and gradients are known -------------------------
#
# x has 3 features in [0.5, 1.5]. dense0's five units (post-ReLU):
#   u0 = 0.3 (x0 + x1 + x2)   always active, mean ~0.9
#   u1 = 0.05 x0              always active, mean ~0.05
#   u2 = relu(4 - 4 x0)       active about half the time, mean ~0.5
#   u3 = relu(-x0 - x1 - x2)  never active
#   u4 = 2 (x0 + x1)          always active, mean ~4
# The output has two classes; unit j adds +d_j/2 to logit 0 and -d_j/2 to logit 1, so
# dL/du_j = (p0 - [y == 0]) * d_j: the loss gradient of unit j is proportional to d_j.
W0 = np.array(
    [[0.3, 0.05, -4.0, -1.0, 2.0], [0.3, 0.0, 0.0, -1.0, 2.0], [0.3, 0.0, 0.0, -1.0, 0.0]],
    dtype=np.float32,
)
B0 = np.array([0.0, 0.0, 4.0, 0.0, 0.0], dtype=np.float32)
D = np.array([0.1, 3.0, 2.0, 5.0, 0.01], dtype=np.float32)
W1 = np.stack([D / 2, -D / 2], axis=1)


def dense_model():
    inputs = tf.keras.Input((3,), name="input")
    h = layers.Dense(5, name="dense0")(inputs)
    h = layers.Activation("relu", name="dense0_relu")(h)
    outputs = layers.Dense(2, activation="softmax", name="output")(h)
    model = tf.keras.Model(inputs, outputs, name="known")
    model.get_layer("dense0").set_weights([W0, B0])
    model.get_layer("output").set_weights([W1, np.zeros(2, np.float32)])
    return model


def dense_context(batch_size: int = 128) -> ScoringContext:
    rng = np.random.default_rng(1)
    x = (0.5 + rng.random((40, 3))).astype(np.float32)
    y = rng.integers(0, 2, 40)
    return ScoringContext(x=x, y=y, seed=0, batch_size=batch_size)


def dense_expected(context: ScoringContext) -> dict[str, np.ndarray]:
    """Every data-driven score of dense0, in numpy from the formulas (no TensorFlow)."""
    z = context.x.astype(np.float64) @ W0 + B0
    h = np.maximum(z, 0)
    logits = h @ W1
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(2)[context.y]) @ W1.T  # dL_n/dh_n
    return {
        "mean_activation": h.mean(0),
        "grad_activation": (z > 0).mean(0) * np.abs(W0).sum(0),
        "gradient": np.abs(grad).mean(0),
        "apoz": (h > 0).mean(0),
        "taylor": np.abs(h * grad).mean(0),
    }


@pytest.mark.parametrize("name", DATA_CRITERIA)
def test_dense_scores_match_the_formulas(name):
    model, context = dense_model(), dense_context()
    scores = scorer(name)(model, [model.get_layer("dense0")], context)
    assert list(scores) == ["dense0"] and scores["dense0"].shape == (5,)
    np.testing.assert_allclose(
        scores["dense0"], dense_expected(context)[name], rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("name", DATA_CRITERIA)
def test_scores_do_not_depend_on_the_batch_size(name):
    model = dense_model()
    whole = scorer(name)(model, [model.get_layer("dense0")], dense_context(128))
    batched = scorer(name)(model, [model.get_layer("dense0")], dense_context(7))
    np.testing.assert_allclose(batched["dense0"], whole["dense0"], rtol=1e-5, atol=1e-7)


# psize=0.6 of 5 units removes 3. apoz: units 0, 1, 4 tie at "always active"; the lower
# index goes first, so unit 0 joins the never-active 3 and the half-active 2.
REMOVED = {
    "mean_activation": [1, 2, 3],  # means 0.05, 0.5, 0
    "grad_activation": [0, 1, 3],  # active fraction x L1 of weights: 0.9, 0.05, 0 (u2: 2)
    "gradient": [0, 2, 4],  # |d|: 0.1, 2, 0.01 (the dead unit 3 has the largest gradient)
    "apoz": [0, 2, 3],
    "taylor": [0, 3, 4],  # |activation x gradient|: the dead unit is 0, u4 0.01 x ~4
}


@pytest.mark.parametrize("name", DATA_CRITERIA)
def test_each_criterion_removes_exactly_its_units(name):
    model, context = dense_model(), dense_context()
    scores = scorer(name)(model, [model.get_layer("dense0")], context)
    units = select_units(scores, "layer", 0.6)
    assert units == {"dense0": REMOVED[name]}
    pruned = delete_units(model, units)
    kept = [i for i in range(5) if i not in REMOVED[name]]
    np.testing.assert_array_equal(pruned.get_layer("dense0").get_weights()[0], W0[:, kept])
    np.testing.assert_array_equal(pruned.get_layer("output").get_weights()[0], W1[kept])


def test_l1_and_random_score_every_unit():
    model, context = dense_model(), dense_context()
    layer = [model.get_layer("dense0")]
    np.testing.assert_allclose(scorer("l1")(model, layer, context)["dense0"], np.abs(W0).sum(0))
    first, again = (scorer("random")(model, layer, context)["dense0"] for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert len(set(first)) == 5


# --- conv models --------------------------------------------------------------------------


def one_by_one_conv():
    """conv0: three 1x1 filters with weights 1, -1, 2 on a one-channel image."""
    inputs = tf.keras.Input((4, 4, 1), name="input")
    h = layers.Conv2D(3, 1, name="conv0")(inputs)
    h = layers.Activation("relu", name="conv0_relu")(h)
    h = layers.Flatten(name="flatten")(h)
    outputs = layers.Dense(2, activation="softmax", name="output")(h)
    model = tf.keras.Model(inputs, outputs)
    model.get_layer("conv0").set_weights(
        [np.array([1.0, -1.0, 2.0], np.float32).reshape(1, 1, 1, 3), np.zeros(3, np.float32)]
    )
    return model


def test_conv_activation_scores_with_known_filters():
    model = one_by_one_conv()
    x = np.random.default_rng(2).uniform(0.1, 1.0, (6, 4, 4, 1)).astype(np.float32)
    context = ScoringContext(x=x, y=np.zeros(6, np.int64), seed=0, batch_size=4)
    conv0 = [model.get_layer("conv0")]
    m = x.mean()
    mean = scorer("mean_activation")(model, conv0, context)["conv0"]
    np.testing.assert_allclose(mean, [m, 0.0, 2 * m], rtol=1e-6)
    np.testing.assert_array_equal(scorer("apoz")(model, conv0, context)["conv0"], [1, 0, 1])
    # d mean(relu(w x)) / dx = w / (N H W) wherever active: summed |.| is |w| x active share.
    grads = scorer("grad_activation")(model, conv0, context)["conv0"]
    np.testing.assert_allclose(grads, [1.0, 0.0, 2.0], rtol=1e-6)


CONV = stack_config("cnn", [3, 4], [])


def random_conv(seed: int = 3):
    model = build((6, 6, 2), 3, CONV)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def conv_context(batch_size: int = 5) -> ScoringContext:
    rng = np.random.default_rng(4)
    x = rng.random((12, 6, 6, 2), dtype=np.float32)
    return ScoringContext(x=x, y=rng.integers(0, 3, 12), seed=0, batch_size=batch_size)


def activations_and_gradients(model, names, context):
    """Post-ReLU outputs and d(sum of per-sample losses)/d(output), over the whole sample."""
    outs = [model.get_layer(f"{n}_relu").output for n in names]
    probe = tf.keras.Model(model.inputs, [*outs, model.output])
    with tf.GradientTape() as tape:
        *acts, probs = probe(tf.constant(context.x))
        loss = tf.reduce_sum(tf.keras.losses.sparse_categorical_crossentropy(context.y, probs))
    grads = tape.gradient(loss, acts)
    return [a.numpy() for a in acts], [g.numpy() for g in grads]


def test_conv_scores_reduce_over_samples_and_positions():
    model, context = random_conv(), conv_context()
    names = ["conv0", "conv1"]
    acts, grads = activations_and_gradients(model, names, context)
    expected = {
        "mean_activation": [a.mean((0, 1, 2)) for a in acts],
        "apoz": [(a > 0).mean((0, 1, 2)) for a in acts],
        "gradient": [np.abs(g).mean((0, 1, 2)) for g in grads],
        "taylor": [np.abs((a * g).sum((1, 2))).mean(0) for a, g in zip(acts, grads, strict=True)],
    }
    chosen = [model.get_layer(n) for n in names]
    for name, values in expected.items():
        scores = scorer(name)(model, chosen, context)
        assert list(scores) == names
        for layer_name, value in zip(names, values, strict=True):
            np.testing.assert_allclose(
                scores[layer_name], value, rtol=1e-5, atol=1e-8, err_msg=f"{name} {layer_name}"
            )
    assert all(0 < np.mean(a > 0) < 1 for a in acts)  # some positions zero, some not


@pytest.mark.parametrize("max_floats", [grad_activation.MAX_FLOATS, 1, 2000])
def test_grad_activation_equals_the_per_unit_reference(monkeypatch, max_floats):
    """The seed's one-pass-per-unit method gives the same scores, however samples are chunked."""
    monkeypatch.setattr(grad_activation, "MAX_FLOATS", max_floats)
    model, context = random_conv(), conv_context(batch_size=5)
    chosen = [model.get_layer("conv0"), model.get_layer("conv1")]
    scores = grad_activation.score(model, chosen, context)
    for layer in chosen:
        reference = grad_activation_per_unit(model, layer, context.x)
        assert np.all(reference > 0)
        np.testing.assert_allclose(scores[layer.name], reference, rtol=1e-5)


def varied_model():
    """Strides, valid padding, batch norm, dilation, an inline ReLU: every path of the code."""
    inputs = tf.keras.Input((9, 9, 2), name="input")
    h = layers.Conv2D(3, 3, strides=2, padding="valid", name="conv0")(inputs)
    h = layers.BatchNormalization(name="conv0_bn")(h)
    h = layers.Activation("relu", name="conv0_relu")(h)
    h = layers.Conv2D(4, 3, dilation_rate=2, padding="same", name="conv1")(h)
    h = layers.Activation("relu", name="conv1_relu")(h)
    h = layers.Conv2D(4, 2, strides=(1, 2), padding="valid", name="conv2")(h)
    h = layers.Activation("relu", name="conv2_relu")(h)
    h = layers.Flatten(name="flatten")(h)
    h = layers.Dense(5, name="dense0")(h)
    h = layers.Activation("relu", name="dense0_relu")(h)
    h = layers.Dense(4, activation="relu", name="dense1")(h)
    outputs = layers.Dense(3, activation="softmax", name="output")(h)
    model = tf.keras.Model(inputs, outputs)
    rng = np.random.default_rng(6)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    bn = model.get_layer("conv0_bn")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma, beta, mean, np.abs(var) + 0.5])
    return model


def test_grad_activation_equals_the_reference_on_every_kind_of_layer():
    model = varied_model()
    x = np.random.default_rng(7).random((10, 9, 9, 2), dtype=np.float32)
    context = ScoringContext(x=x, y=np.zeros(10, np.int64), seed=0, batch_size=4)
    closed_form = {"conv0": True, "conv1": False, "conv2": True, "dense0": True, "dense1": False}
    for name, fast in closed_form.items():
        layer = model.get_layer(name)
        assert (grad_activation._fast_path(model, layer) is not None) == fast, name
        scores = grad_activation.score(model, [layer], context)[name]
        reference = grad_activation_per_unit(model, layer, x)
        assert reference.max() > 0, name
        np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-9, err_msg=name)
    cnn = build((12, 12, 1), 10, SEED_CNN)  # every layer of the stack models: closed form
    for name in ("conv0", "conv3", "dense0"):
        assert grad_activation._fast_path(cnn, cnn.get_layer(name)) is not None, name


def test_grad_activation_reference_on_dense_model():
    model, context = dense_model(), dense_context()
    reference = grad_activation_per_unit(model, model.get_layer("dense0"), context.x)
    np.testing.assert_allclose(reference, dense_expected(context)["grad_activation"], rtol=1e-5)


# --- selection: ties, rounding, floors, global scaling ----------------------------------------


@pytest.mark.parametrize(
    ("psize", "n", "expected"),
    [
        (0.5, 5, 3),
        (0.5, 3, 2),
        (0.1, 4, 0),
        (0.3, 10, 3),
        (0.25, 2, 1),
        (0.9, 2, 1),
        (0.99, 8, 7),
        (0.29, 50, 15),  # 14.5: float arithmetic gives 14.499999999999998
        (0.57, 50, 29),  # 28.5: float 28.499999999999996
        (0.07, 50, 4),  # 3.5: float 3.5000000000000004
    ],
)
def test_psize_rounds_half_up_and_never_takes_every_unit(psize, n, expected):
    assert n_to_remove(psize, n) == expected


def test_psize_rounding_matches_exact_decimal_arithmetic_on_the_grid():
    """p = 0.01 .. 0.99 as typed (k / 100), n = 1 .. 512: round(k n / 100) half up, in integers."""
    k = np.arange(1, 100)[:, None]
    n = np.arange(1, 513)[None, :]
    expected = (2 * k * n + 100) // 200  # floor(k n / 100 + 1/2), exactly
    typed = [float(f"0.{i:02d}") for i in range(1, 100)]  # what Hydra makes of psize=0.29
    got = np.array([[share_of(p, m) for m in range(1, 513)] for p in typed])
    np.testing.assert_array_equal(got, expected)
    removed = np.array([[n_to_remove(p, m) for m in range(1, 513)] for p in typed])
    np.testing.assert_array_equal(removed, np.minimum(expected, n - 1))
    naive = np.floor(np.array(typed)[:, None] * n + 0.5).astype(int)
    assert (naive != expected).sum() > 0  # the grid does catch float rounding


def test_global_budget_and_magnitude_counts_round_exactly():
    # 0.29 x 50 units = 14.5 -> 15, over two layers of 25 (global) and in one layer.
    scores = {"a": np.arange(25.0), "b": np.arange(25.0)}
    chosen = select_units(scores, "global", 0.29)
    assert sum(len(v) for v in chosen.values()) == 15
    assert len(select_units({"a": np.arange(50.0)}, "layerwise", 0.29)["a"]) == 15
    kernel = Kernel("k", np.arange(1.0, 51.0).reshape(5, 10))
    for scope in ("layerwise", "global"):
        assert (~masking.magnitude_masks([kernel], scope, 0.29)["k"]).sum() == 15, scope
    halves = [Kernel("a", np.arange(1.0, 26.0)[None]), Kernel("b", np.arange(26.0, 51.0)[None])]
    masks = masking.magnitude_masks(halves, "global", 0.29)
    assert sum(int((~m).sum()) for m in masks.values()) == 15


def test_ties_go_lower_index_first():
    assert select_units({"a": np.ones(4)}, "layerwise", 0.5) == {"a": [0, 1]}
    tied = {"a": np.array([1.0, 2.0]), "b": np.array([1.0, 2.0])}
    assert select_units(tied, "global", 0.25) == {"a": [0], "b": []}


def test_layerwise_never_empties_a_layer():
    assert select_units({"a": np.zeros(3), "b": np.arange(2.0)}, "layerwise", 0.9) == {
        "a": [0, 1],
        "b": [0],
    }


def test_min_units_is_a_floor_in_every_scope():
    scores = {"a": np.arange(5.0), "b": np.arange(10.0, 12.0)}
    assert select_units(scores, "layerwise", 0.9, min_units=3) == {"a": [0, 1], "b": []}
    assert select_units({"a": np.arange(5.0)}, "layer", 0.9, min_units=5) == {"a": []}
    assert select_units({"a": np.arange(5.0)}, "layer", 0.9, min_units=9) == {"a": []}
    # global, raw scores, 5 of 10 go: a's units are all lower, but a stops at its floor and
    # b gives the rest; where both reach their floor, fewer than the budget go.
    wide = {"a": np.arange(5.0), "b": np.arange(10.0, 15.0)}
    assert select_units(wide, "global", 0.5, "none") == {"a": [0, 1, 2, 3], "b": [0]}
    assert select_units(wide, "global", 0.5, "none", min_units=2) == {"a": [0, 1, 2], "b": [0, 1]}
    assert select_units(wide, "global", 0.5, "none", min_units=3) == {"a": [0, 1], "b": [0, 1]}


def test_each_normaliser_divides_by_its_scale():
    s = np.array([0.0, 3.0, 4.0])
    expected = {
        "rms": s / np.sqrt(25 / 3),
        "l2": s / 5,
        "max": s / 4,
        "mean": s / (7 / 3),
        "none": s,
    }
    for how, values in expected.items():
        np.testing.assert_allclose(normalise(s, how), values, err_msg=how)
        np.testing.assert_allclose(normalise(s, Normalize(how)), values, err_msg=how)
        np.testing.assert_array_equal(normalise(np.zeros(3), how), np.zeros(3))
    assert [n.value for n in Normalize] == list(expected)
    with pytest.raises(UserError, match="rms, l2, max, mean, none"):
        normalise(s, "L2")


def test_global_ranks_normalised_scores_and_keeps_one_unit_per_layer():
    scores = {"a": np.array([1.0, 4.0, 4.0, 4.0]), "b": np.array([100.0, 200.0, 300.0, 400.0])}
    # rms: a -> 0.29, 1.14, 1.14, 1.14; b -> 0.37, 0.73, 1.10, 1.46 (raw: all of a first).
    assert select_units(scores, "global", 0.25) == {"a": [0], "b": [0]}
    assert select_units(scores, "global", 0.5) == {"a": [0], "b": [0, 1, 2]}
    assert select_units(scores, "global", 0.5, "none") == {"a": [0, 1, 2], "b": [0]}
    lopsided = {"a": np.array([1e-6, 2e-6]), "b": np.array([5.0, 6.0, 1e9])}
    assert select_units(lopsided, "global", 0.9) == {"a": [0], "b": [0, 1]}


def test_l2_normalisation_prunes_larger_layers_more_than_rms():
    """Same score pattern, 2 vs 8 units: rms scales them alike, l2 (Molchanov) does not."""
    scores = {"a": np.array([1.0, 2.0]), "b": np.tile([1.0, 2.0], 4)}
    # rms: both 0.63, 1.26 -> ties, a first.  l2: a 0.45, 0.89; b 0.22, 0.45 -> b first.
    assert select_units(scores, "global", 0.3) == {"a": [0], "b": [0, 2]}
    assert select_units(scores, "global", 0.3, Normalize.l2) == {"a": [], "b": [0, 2, 4]}


def test_lowest_within_caps_is_the_greedy_walk():
    rng = np.random.default_rng(8)
    for _ in range(200):
        size, owners = int(rng.integers(1, 30)), int(rng.integers(1, 5))
        values = rng.integers(0, 6, size).astype(float)  # many ties
        owner = rng.integers(0, owners, size)
        caps = rng.integers(0, 6, owners)
        budget = int(rng.integers(0, size + 2))
        taken, greedy = np.zeros(owners, int), []
        for pos in sorted(range(size), key=lambda i: (values[i], i)):
            if len(greedy) < budget and taken[owner[pos]] < caps[owner[pos]]:
                greedy.append(pos)
                taken[owner[pos]] += 1
        assert lowest_within_caps(values, owner, caps, budget).tolist() == greedy


# --- which layers, scopes and layer types each criterion accepts ------------------------------

SEED_CNN = stack_config("cnn", [4, 4, 8, 8], [8])
SEED_DNN = stack_config("dnn", [], [16, 8])


def test_every_criterion_yaml_names_a_scorer_that_exists():
    names = sorted(p.stem for p in (CONF / "criterion").glob("*.yaml"))
    assert {*DATA_CRITERIA, "l1", "random", "magnitude"} <= set(names)
    for name in names:
        assert callable(get_scorer(criterion_cfg(name))), name


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_first_conv_and_output_are_never_candidates(scope):
    cnn = build((12, 12, 1), 10, SEED_CNN)
    dnn = build((12, 12, 1), 10, SEED_DNN)
    cfg = criterion_cfg("taylor", f"criterion.scope={scope}")
    assert [lyr.name for lyr in prunable_layers(cnn, cfg)] == ["conv1", "conv2", "conv3", "dense0"]
    assert [lyr.name for lyr in prunable_layers(dnn, cfg)] == ["dense0", "dense1"]


def test_scope_layer_takes_the_first_conv():
    cnn = build((12, 12, 1), 10, SEED_CNN)
    cfg = criterion_cfg("apoz", "criterion.scope=layer", "criterion.layer=conv0")
    assert [lyr.name for lyr in prunable_layers(cnn, cfg)] == ["conv0"]


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("gradient", ["criterion.scope=global"], r"criterion=gradient.*scope=global"),
        ("taylor", ["criterion.scope=layer"], r"needs criterion.layer=NAME"),
        ("taylor", ["criterion.scope=layer", "criterion.layer=output"], r"output cannot be pruned"),
        (
            "apoz",
            ["criterion.scope=layer", "criterion.layer=pool0"],
            r"pool0 \(MaxPooling2D\) has no units",
        ),
        ("apoz", ["criterion.scope=layer", "criterion.layer=nope"], r"no layer 'nope'"),
        (
            "mean_activation",
            [
                "criterion.scope=layer",
                "criterion.layer=conv1",
                "criterion.layer_types.layer=[Dense]",
            ],
            r"cannot prune conv1",
        ),
        ("taylor", ["criterion.layer_types.layerwise=[Dense]"], None),
    ],
)
def test_wrong_scope_or_layer_type_is_a_user_error(name, overrides, message):
    cnn = build((12, 12, 1), 10, SEED_CNN)
    cfg = criterion_cfg(name, *overrides)
    if message is None:  # restricting the types narrows the candidates instead
        assert [lyr.name for lyr in prunable_layers(cnn, cfg)] == ["dense0"]
        with pytest.raises(UserError, match="found no Dense layer"):
            prunable_layers(
                build((12, 12, 1), 10, OmegaConf.merge(SEED_CNN, {"dense_units": []})), cfg
            )
        return
    with pytest.raises(UserError, match=message):
        prunable_layers(cnn, cfg)


# --- magnitude: unstructured masks ---------------------------------------------------------


class Kernel:
    """Just enough of a layer for magnitude_masks."""

    def __init__(self, name, kernel):
        self.name, self.kernel = name, np.asarray(kernel, dtype=np.float32)

    def get_weights(self):
        return [self.kernel, np.zeros(self.kernel.shape[-1], np.float32)]


def test_magnitude_zeroes_the_smallest_weights_per_layer():
    a = Kernel("a", [[0.1, -0.5], [0.3, -0.05]])
    b = Kernel("b", [[10.0, 20.0, 30.0]])
    masks = masking.magnitude_masks([a, b], "layerwise", 0.5)
    np.testing.assert_array_equal(masks["a"], [[False, True], [True, False]])
    np.testing.assert_array_equal(masks["b"], [[False, False, True]])  # 1.5 -> 2
    only_a = masking.magnitude_masks([a], "layer", 0.25)
    np.testing.assert_array_equal(only_a["a"], [[True, True], [True, False]])


def test_magnitude_global_ranks_raw_magnitudes_and_keeps_one_weight():
    a = Kernel("a", [[0.1, -0.5], [0.3, -0.05]])
    b = Kernel("b", [[10.0, 20.0, 30.0]])
    masks = masking.magnitude_masks([a, b], "global", 0.6)  # 4.2 -> 4 of 7: all of a but
    np.testing.assert_array_equal(masks["a"], [[False, True], [False, False]])  # its largest,
    np.testing.assert_array_equal(masks["b"], [[False, True, True]])  # then b's smallest
    c = Kernel("c", [[10.0, 20.0, 300.0]])  # 2 of 7 go: raw, a's two smallest; divided by
    raw = masking.magnitude_masks([a, c], "global", 0.3)  # each kernel's max, c's two
    np.testing.assert_array_equal(raw["c"], [[True, True, True]])
    scaled = masking.magnitude_masks([a, c], "global", 0.3, normalize="max")  # (0.03, 0.07)
    np.testing.assert_array_equal(scaled["a"], [[True, True], [True, True]])
    np.testing.assert_array_equal(scaled["c"], [[False, False, True]])


def test_magnitude_keeps_min_units_weights_per_kernel():
    a = Kernel("a", [[0.1, -0.5], [0.3, -0.05]])
    b = Kernel("b", [[10.0, 20.0, 30.0]])
    per_layer = masking.magnitude_masks([a, b], "layerwise", 0.9, min_units=2)
    np.testing.assert_array_equal(per_layer["a"], [[False, True], [True, False]])
    np.testing.assert_array_equal(per_layer["b"], [[False, True, True]])
    overall = masking.magnitude_masks([a, b], "global", 0.6, min_units=3)  # of 4, a gives 1
    np.testing.assert_array_equal(overall["a"], [[True, True], [True, False]])
    np.testing.assert_array_equal(overall["b"], [[True, True, True]])  # b is at its floor
    below = masking.magnitude_masks([a], "layer", 0.5, threshold=1.0, min_units=2)["a"]
    np.testing.assert_array_equal(below, [[False, True], [True, False]])


def test_magnitude_threshold_and_ties():
    a = Kernel("a", [[0.04, -0.05], [0.06, -0.01]])
    below = masking.magnitude_masks([a], "global", 0.5, threshold=0.05)["a"]
    np.testing.assert_array_equal(below, [[False, True], [True, False]])
    none = masking.magnitude_masks([a], "layer", 0.5, threshold=1.0)["a"]
    np.testing.assert_array_equal(none, [[False, False], [True, False]])  # the largest stays
    tied = Kernel("t", np.full((2, 2), 0.5))
    np.testing.assert_array_equal(  # equal magnitudes: the lower flat index goes first
        masking.magnitude_masks([tied], "layer", 0.5)["t"], [[False, False], [True, True]]
    )


def _fit(model, x, y, epochs=3):
    model.compile(tf.keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0)


def test_magnitude_mask_holds_through_fine_tuning_and_reloading(tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = build((12,), 3, SEED_DNN)
    rng = np.random.default_rng(5)
    x, y = rng.random((64, 12), dtype=np.float32), rng.integers(0, 3, 64)
    before = size_metrics(model, "m")
    cfg = criterion_cfg("magnitude")
    chosen = prunable_layers(model, cfg)
    masks = masking.magnitude_masks(
        chosen, cfg.scope, 0.5, cfg.threshold, cfg.normalize, cfg.min_units
    )
    masking.apply_masks(model, masks)
    after = size_metrics(model, "m")
    assert after["m.params"] == before["m.params"]
    removed = sum(int((~m).sum()) for m in masks.values())
    assert after["m.nonzero_params"] == before["m.nonzero_params"] - removed
    kernels = {n: model.get_layer(n).get_weights()[0] for n in masks}
    _fit(model, x, y)
    for name, mask in masks.items():
        trained = model.get_layer(name).get_weights()[0]
        assert np.all(trained[~mask] == 0), name
        assert np.mean(trained[mask] != kernels[name][mask]) > 0.5, name  # the rest trained
        assert np.count_nonzero(trained) == mask.sum(), name
    tuned = size_metrics(model, "m")  # (biases start at zero, so they may gain non-zeros)
    assert tuned["m.nonzero_params"] <= tuned["m.params"] - removed
    # A saved model keeps no constraint: masks come back from its zeros (as in stage=finetune).
    model.save(tmp_path / "m.keras")
    loaded = tf.keras.models.load_model(tmp_path / "m.keras", compile=False)
    masking.apply_masks(loaded, masking.masks_from_zeros(loaded, list(masks)))
    _fit(loaded, x, y, epochs=2)
    for name, mask in masks.items():
        assert np.all(loaded.get_layer(name).get_weights()[0][~mask] == 0), name
