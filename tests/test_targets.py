"""What may be pruned in a graph: groups of coupled units, their scores and selections."""

from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from test_criteria import criterion_cfg

from avlsi.criteria import ScoringContext, get_scorer
from avlsi.errors import UserError
from avlsi.graph import equivalence_error
from avlsi.surgery import delete_units
from avlsi.targets import check_something_goes, group_scores, prune_targets, select_group_units

layers = tf.keras.layers


def residual_cnn(logits: bool = False) -> tf.keras.Model:
    """stem conv -> two residual blocks (identity, then projection) -> GAP -> Dense."""
    inputs = tf.keras.Input((12, 12, 3))
    stem = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    x = layers.Conv2D(8, 3, padding="same", name="a1")(stem)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(8, 3, padding="same", name="a2")(x)
    x = layers.Add(name="add1")([stem, x])  # identity shortcut: couples stem with a2
    y = layers.Conv2D(12, 3, padding="same", activation="relu", name="b1")(x)
    y = layers.Conv2D(12, 3, padding="same", name="b2")(y)
    shortcut = layers.Conv2D(12, 1, name="proj")(x)  # projection shortcut: couples with b2
    x = layers.Add()([shortcut, y])
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(16, activation="relu", name="fc")(x)
    outputs = layers.Dense(5, activation=None if logits else "softmax", name="out")(x)
    tf.keras.utils.set_random_seed(0)
    return tf.keras.Model(inputs, outputs)


def fake_group(*producers, channels=4):
    return SimpleNamespace(producers=producers, channels=channels, prunable=True, reason="")


@pytest.mark.parametrize(
    ("reduce", "expected"),
    [
        ("mean", [2.0, 2.0, 5.0]),
        ("sum", [4.0, 4.0, 10.0]),
        ("max", [3, 4, 9]),
        ("first", [1, 0, 9]),
    ],
)
def test_group_scores_reduce_the_producers_scores(reduce, expected):
    scores = {"a": np.array([1.0, 0.0, 9.0]), "b": np.array([3.0, 4.0, 1.0])}
    out = group_scores(scores, [fake_group("a", "b")], reduce)
    np.testing.assert_allclose(out["a"], expected)


def test_unknown_group_reduce_is_a_user_error():
    with pytest.raises(UserError, match="group_reduce=median.*mean, sum, max, first"):
        group_scores({"a": np.ones(2)}, [fake_group("a")], "median")


def test_every_producer_of_a_group_loses_the_same_units():
    targets = SimpleNamespace(groups=[fake_group("a", "b"), fake_group("c")])
    cfg = SimpleNamespace(scope="layerwise", normalize="rms", min_units=1, group_reduce="mean")
    scores = {"a": np.array([1.0, 5, 2, 8]), "b": np.array([1.0, 0, 9, 9]), "c": np.arange(4.0)}
    units = select_group_units(scores, targets, cfg, 0.5)
    assert units == {"a": [0, 1], "b": [0, 1], "c": [0, 1]}


@pytest.mark.parametrize("logits", [False, True])
def test_residual_groups_exclude_the_stem_and_the_output(logits):
    model = residual_cnn(logits)
    targets = prune_targets(model, criterion_cfg("l1"))
    chosen = sorted(tuple(sorted(g.producers)) for g in targets.groups)
    # stem + a2 form one group, kept whole by the first-conv rule; the output is never pruned
    assert chosen == [("a1",), ("b1",), ("b2", "proj"), ("fc",)]


def test_a_pruned_residual_cnn_computes_what_the_masked_original_does():
    model = residual_cnn()
    cfg = criterion_cfg("l1")
    targets = prune_targets(model, cfg)
    scores = get_scorer(cfg)(model, targets.layers, ScoringContext(None, None, 0))
    units = select_group_units(scores, targets, cfg, 0.5)
    pruned = delete_units(model, units)
    assert equivalence_error(model, pruned, units) <= 1e-5
    assert pruned.count_params() < model.count_params()
    assert pruned.output_shape == model.output_shape


def test_scope_layer_names_why_a_layer_cannot_be_pruned():
    model = residual_cnn()
    cfg = criterion_cfg("l1", "criterion.scope=layer", "criterion.layer=out")
    with pytest.raises(UserError, match="out cannot be pruned: .*output"):
        prune_targets(model, cfg)
    cfg = criterion_cfg("l1", "criterion.scope=layer", "criterion.layer=add1")
    with pytest.raises(UserError, match="add1 \\(Add\\) has no units"):
        prune_targets(model, cfg)
    cfg = criterion_cfg("l1", "criterion.scope=layer", "criterion.layer=a2")  # stem's group
    assert sorted(lyr.name for lyr in prune_targets(model, cfg).layers) == ["a2", "stem"]


@pytest.mark.parametrize(
    ("name", "overrides", "psize", "needles"),
    [
        ("l1", ["criterion.scope=global"], 0.001, ["psize=0.001", "all prunable layers"]),
        ("magnitude", [], 0.0001, ["psize=0.0001", "removes no weight"]),
    ],
)
def test_a_psize_that_removes_nothing_is_refused(name, overrides, psize, needles):
    """The messages of the job's check (the command line's path: tests/test_inputs.py)."""
    cfg = criterion_cfg(name, *overrides)
    with pytest.raises(UserError) as refused:
        check_something_goes(prune_targets(residual_cnn(), cfg), cfg, psize)
    assert all(needle in str(refused.value) for needle in needles), refused.value
