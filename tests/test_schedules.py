"""Schedules (iterative, gradual), rewinding: their bookkeeping, on tiny models and data."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from avlsi.select import n_to_remove, share_of


def _criterion(scope="layerwise", **more):
    base = {"scope": scope, "normalize": "none", "min_units": 1, "ratios": None}
    return OmegaConf.create({**base, **more})


def test_round_fractions_reach_psize_linearly_or_geometrically():
    from avlsi.schedules import round_fractions

    assert round_fractions(0.9, 3, "linear") == pytest.approx([0.3, 0.6, 0.9])
    geometric = round_fractions(0.92, 4, "geometric")
    kept = [1 - f for f in geometric]  # each round keeps the same share of what is left
    assert [b / a for a, b in zip([1, *kept], kept, strict=False)] == pytest.approx(
        [0.08**0.25] * 4
    )
    assert geometric[-1] == 0.92


def test_polynomial_sparsity_follows_zhu_and_gupta():
    from avlsi.schedules import polynomial_sparsity

    assert polynomial_sparsity(10, 0.1, 0.9, 10, 110) == pytest.approx(0.1)
    assert polynomial_sparsity(60, 0.1, 0.9, 10, 110) == pytest.approx(0.9 - 0.8 * 0.5**3)
    assert polynomial_sparsity(500, 0.1, 0.9, 10, 110) == pytest.approx(0.9)


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_iterative_rounds_end_at_the_one_shot_unit_counts(scope):
    """Round by round, each group is cut to the round's share of its ORIGINAL units; after
    the last round the counts are those of a one-shot prune at psize."""
    from avlsi.schedules import round_fractions, structured_round_units

    rng = np.random.default_rng(0)
    original = {"a": 32, "b": 50, "c": 7}
    current = {name: rng.random(n) for name, n in original.items()}
    criterion, psize = _criterion(scope), 0.7
    for fraction in round_fractions(psize, 3, "geometric"):
        chosen = structured_round_units(current, original, fraction, criterion, psize)
        current = {n: np.delete(s, chosen[n]) for n, s in current.items()}
        gone = {n: original[n] - len(s) for n, s in current.items()}
        if scope == "layerwise":
            assert gone == {n: n_to_remove(fraction, c) for n, c in original.items()}
        else:
            assert sum(gone.values()) == share_of(fraction, sum(original.values()))
    assert sum(original[n] - len(s) for n, s in current.items()) == share_of(psize, 89)


def test_ratios_set_each_groups_share():
    from avlsi.schedules import structured_round_units

    scores = {"a": np.arange(10.0), "b": np.arange(20.0)}
    criterion = _criterion(ratios={"a": 0.5})
    chosen = structured_round_units(scores, {"a": 10, "b": 20}, 0.3, criterion, 0.3)
    assert chosen == {"a": [0, 1, 2, 3, 4], "b": [0, 1, 2, 3, 4, 5]}


def _dense_model(seed=0, keras_name="tf_keras"):
    import importlib

    keras = importlib.import_module(keras_name)  # tf_keras, or keras (Keras 3)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16, activation="relu", name="d0")(inputs)
    x = keras.layers.Dense(16, activation="relu", name="d1")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(x)
    return keras.Model(inputs, outputs)


def _data(n=64):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 8)).astype("float32"), rng.integers(0, 3, n)


@pytest.mark.parametrize("keras_name", ["tf_keras", "keras"])
def test_gradual_reaches_psize_with_masks_held_between_updates(keras_name):
    from avlsi import train
    from avlsi.schedules import GradualPruning, VariableMask

    model = _dense_model(keras_name=keras_name)
    layers = [model.get_layer("d0"), model.get_layer("d1")]
    schedule = OmegaConf.create({"initial_sparsity": 0.0, "begin_step": 0, "frequency": 3})
    seen = []
    callback = GradualPruning(
        layers, _criterion(), 0.75, schedule, end=7, on_update=lambda *a: seen.append(a)
    )
    train.compile_model(model, 0.01)
    x, y = _data()
    zeros = []  # after each step: the zero positions of each kernel

    class Watch(train.tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            zeros.append([set(np.flatnonzero(lyr.kernel.numpy() == 0)) for lyr in layers])

    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback, Watch()])
    assert [s for s, *_ in seen] == [1, 2, 3, 4]  # steps 0, 3, 6 and end_step 7
    assert seen[-1][1] == pytest.approx(0.75)
    for layer in layers:  # psize of each kernel (layerwise), the masks still in place
        assert np.mean(layer.kernel.numpy() == 0) == pytest.approx(0.75)
        assert isinstance(layer.kernel.constraint, VariableMask)
    assert len(zeros) == 16
    for later in zeros[7:]:  # after the last update (step 7), no pruned weight came back
        for before, after in zip(zeros[7], later, strict=True):
            assert before == after


@pytest.mark.parametrize("keras_name", ["tf_keras", "keras"])
def test_rewinding_restores_the_stored_weights_of_that_epoch_masked(
    tmp_path, monkeypatch, keras_name
):
    from avlsi import masking, train
    from avlsi.rewind import KeepWeights, has_point, rewind, store_points
    from avlsi.store import ModelStore

    model = _dense_model(keras_name=keras_name)
    keep = KeepWeights(model, [0, 1])
    initial = [w.copy() for w in model.get_weights()]
    train.compile_model(model, 0.01)
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[keep])
    after_one = [w.copy() for w in model.get_weights()]
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert keep.meta() == {"rewind_epochs": [0, 1]}
    assert all(np.array_equal(a, b) for a, b in zip(keep.kept[0], initial, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(keep.kept[1], after_one, strict=True))

    cfg = OmegaConf.create(
        {
            "finetune": {"init": "rewind", "rewind_epoch": 1},
            "model": {"name": "m"},
            "dataset": {"name": "d"},
            "seed": 0,
        }
    )
    store = ModelStore(tmp_path)
    key = "m-d-s0-test"
    store.put("baselines", key, model, {"metrics": {}, **keep.meta()})
    store_points(store, key, model, keep)
    baseline_meta = store.get("baselines", key)[1]
    assert has_point(store, key, baseline_meta, 1)
    meta = store.get("rewind", f"{key}-e1")[1]
    assert (meta["baseline_key"], meta["epoch"]) == (key, 1)

    pruned = _dense_model(seed=5, keras_name=keras_name)
    masks = masking.magnitude_masks([pruned.get_layer("d0")], "layerwise", 0.5)
    masking.apply_masks(pruned, masks)
    monkeypatch.setattr("avlsi.keys.baseline_key", lambda _cfg: key)
    rewind(SimpleNamespace(cfg=cfg, store=store), pruned, masks)
    # model.get_weights(): d0 kernel, d0 bias, d1 kernel, d1 bias, out kernel, out bias
    assert np.array_equal(pruned.get_layer("d0").get_weights()[0], keep.kept[1][0] * masks["d0"])
    assert np.array_equal(pruned.get_layer("d1").get_weights()[0], keep.kept[1][2])
    assert np.array_equal(pruned.get_layer("out").get_weights()[1], keep.kept[1][5])

    store.put("baselines", key, _dense_model(9, keras_name), {"metrics": {}})  # retrained elsewhere
    assert not has_point(store, key, store.get("baselines", key)[1], 1)  # tied to its file


def test_lr_rewinding_replays_the_tail_of_trains_schedule():
    from avlsi import train
    from avlsi.rewind import lr_rewind_settings

    cfg = OmegaConf.create(
        {
            "train": {"epochs": 10, "batch_size": 10, "learning_rate": 0.1, "optimizer": "sgd",
                      "momentum": 0.9, "weight_decay": None, "lr_schedule": "cosine"},
            "finetune": {"epochs": 4},
        }
    )  # fmt: skip
    settings = lr_rewind_settings(cfg, train_size=100)
    assert (settings.epochs, settings.step_offset, settings.optimizer) == (4, 60, "sgd")
    import tf_keras  # what compile_model passes for a tf-keras model (kerasapi.keras_of)

    optimizer = train.make_optimizer(settings, total_steps=40, keras=tf_keras)
    rate = optimizer._learning_rate  # the schedule (learning_rate is its current value)
    whole = train.make_optimizer(cfg.train, total_steps=100)._learning_rate
    for step in (0, 20, 39):
        assert float(rate(step)) == pytest.approx(float(whole(step + 60)))


@pytest.mark.slow
def test_iterative_rewind_job_retrains_an_old_baseline_and_logs_rounds(cli):
    """A baseline stored without rewind weights is trained again to keep them; each round's
    size is logged with step=round; the final model has psize of its kernels zeroed."""
    dnn = ("model=dnn", "model.conv_filters=[]", "model.dense_units=[16,8]")
    first = cli("criterion=magnitude", "stage=train", *dnn)
    assert first.returncode == 0, first.stderr
    proc = cli(
        "criterion=magnitude", *dnn, "psize=0.75",
        "schedule=iterative", "schedule.rounds=2", "schedule.steps=linear",
        "finetune.init=rewind", "finetune.rewind_epoch=1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "no weights of epoch 1 to rewind to; training it again" in proc.stderr + proc.stdout
    (run,) = [r for r in cli.runs() if r.data.params.get("schedule") == "iterative"]
    assert run.data.tags["baseline.source"] == "trained"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cli.uri)
    history = client.get_metric_history(run.info.run_id, "round.sparsity")
    assert [(m.step, m.value) for m in history] == [(1, 0.375), (2, 0.75)]
    rounds = client.get_metric_history(run.info.run_id, "round.nonzero_params")
    nonzero = {m.step: m.value for m in rounds}
    params = run.data.metrics["baseline.params"]
    for step, fraction in ((1, 0.375), (2, 0.75)):  # (a bias may be 0 too: 34 biases)
        zeroed = share_of(fraction, 144 * 16) + share_of(fraction, 128)
        assert params - zeroed - 34 <= nonzero[step] <= params - zeroed
    final = params - share_of(0.75, 144 * 16) - share_of(0.75, 128)
    assert final - 34 <= run.data.metrics["finetuned.nonzero_params"] <= final  # masks held
    metas = [json.loads(p.read_text()) for p in (cli.store / "rewind").glob("*/meta.json")]
    assert [m["epoch"] for m in metas] == [1]
    baseline = json.loads((cli.store / "baselines" / metas[0]["baseline_key"] / "meta.json")
                          .read_text())  # fmt: skip
    assert baseline["rewind_epochs"] == [1] and baseline["sha256"] == metas[0]["baseline_sha256"]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"schedule": {"name": "gradual"}}, "needs criterion=magnitude"),
        ({"schedule": {"name": "iterative", "rounds": 0}}, "schedule.rounds=0"),
        ({"finetune": {"init": "rewind"}}, "finetune.init=rewind"),
        ({"finetune": {"rewind_epoch": 9}, "criterion": {"structured": False}}, "rewind_epoch=9"),
        ({"train": {"lr_schedule": "rewind"}}, "train.lr_schedule=rewind"),
        ({"criterion": {"ratios": {"conv1": 0.5}, "scope": "global"}}, "criterion.ratios"),
        ({"criterion": {"ratios": {"conv1": 1.5}}}, "criterion.ratios.conv1=1.5"),
    ],
)
def test_settings_that_cannot_work_are_refused_in_one_line(overrides, needle):
    from avlsi.errors import UserError
    from avlsi.schedule_checks import check_schedule

    cfg = OmegaConf.create(
        {
            "psize": 0.5,
            "schedule": {"name": "oneshot", "rounds": 2, "epochs_per_round": 1,
                         "initial_sparsity": 0.0, "frequency": 10, "begin_step": 0,
                         "end_step": None},
            "criterion": {"name": "l1", "prunes": True, "structured": True, "threshold": None,
                          "scope": "layerwise", "ratios": None},
            "train": {"epochs": 3, "lr_schedule": "constant"},
            "finetune": {"init": "pruned", "rewind_epoch": 0},
        }
    )  # fmt: skip
    if "rewind_epoch" in json.dumps(overrides):
        overrides["finetune"]["init"] = "rewind"
    check_schedule(cfg)  # the defaults pass
    with pytest.raises(UserError, match=needle.replace(".", r"\.").replace("[", r"\[")):
        check_schedule(OmegaConf.merge(cfg, overrides))


def test_the_schedule_is_part_of_the_job_group_and_pruned_keys():
    from test_config import composed

    from avlsi.keys import group_key, job_key, pruned_key

    base = ("criterion=magnitude", "psize=0.9")
    oneshot, iterative = composed(*base), composed(*base, "schedule=iterative")
    more_rounds = composed(*base, "schedule=iterative", "schedule.rounds=5")
    for key in (job_key, group_key, pruned_key):
        assert len({key(oneshot), key(iterative), key(more_rounds)}) == 3
    sensitivity = composed(*base, "sensitivity.max_drop=3")  # how to analyse, not a result
    assert job_key(sensitivity) == job_key(oneshot)
