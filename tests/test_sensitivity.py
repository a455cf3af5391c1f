"""task=sensitivity: each group pruned alone; what it reports is what a real prune gives."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from avlsi.config import CriterionConfig


@pytest.fixture(scope="module")
def trained():
    """A small CNN trained one epoch on synthetic data with a validation split."""
    from conftest import stack_config

    from avlsi import train
    from avlsi.data import hold_out_validation
    from avlsi.data.synthetic import load
    from avlsi.models.stack import build

    train.seed_everything(0)
    data = hold_out_validation(
        load(OmegaConf.create({"shape": [12, 12, 1], "num_classes": 4, "train_size": 320,
                               "test_size": 64, "noise": 0.3, "limit": None,
                               "test_limit": None}), seed=0),
        0.25,
    )  # fmt: skip
    model = build(data.input_shape, data.num_classes, stack_config("cnn", [4, 8], [8]))
    train.fit(model, data, OmegaConf.create({"epochs": 2, "batch_size": 32, "learning_rate": 0.01}),
              verbose=0)  # fmt: skip
    return model, data


def _l1(**more):
    cfg = OmegaConf.structured(CriterionConfig(_target_="avlsi.criteria.l1.score", name="l1"))
    return OmegaConf.merge(cfg, more)


def test_reported_drop_equals_a_real_prune_of_that_group(trained):
    from avlsi import train
    from avlsi.criteria import ScoringContext, get_scorer
    from avlsi.sensitivity import analyse, derive_ratios
    from avlsi.surgery import delete_units
    from avlsi.targets import prune_targets, select_group_units

    model, data = trained
    context = ScoringContext(x=data.x_train[:16], y=data.y_train[:16], seed=0)
    base, table = analyse(model, data, _l1(), [0.25, 0.5, 0.75], context)
    assert list(dict.fromkeys(table["group"])) == ["conv0", "conv1", "dense0"]
    assert base == train.evaluate(model, data, split="val")
    for layer, psize in (("conv1", 0.5), ("dense0", 0.75)):  # a real job's prune, scope=layer
        criterion = _l1(scope="layer", layer=layer)
        targets = prune_targets(model, criterion)
        scores = get_scorer(criterion)(model, targets.layers, context)
        pruned = delete_units(model, select_group_units(scores, targets, criterion, psize))
        drop = (base - train.evaluate(pruned, data, split="val")) * 100
        row = table[(table["group"] == layer) & (table["psize"] == psize)]
        assert float(row["drop_pp"].iloc[0]) == pytest.approx(drop, abs=1e-9)
    drops = {(r.group, r.psize): r.drop_pp for r in table.itertuples()}
    ratios = derive_ratios(table, max_drop=2.0)
    for group, ratio in ratios.items():  # the largest psize with every smaller one in bounds
        within = [p for p in (0.25, 0.5, 0.75) if p <= ratio]
        assert all(drops[(group, p)] <= 2.0 for p in within)
        following = [p for p in (0.25, 0.5, 0.75) if p > ratio]
        assert not following or drops[(group, following[0])] > 2.0


def test_layerwise_ratios_prune_each_group_its_own_share(trained):
    from avlsi.criteria import ScoringContext, get_scorer
    from avlsi.targets import prune_targets, select_group_units

    model, data = trained
    criterion = _l1(ratios={"conv1": 0.5, "dense0": 0.25})
    targets = prune_targets(model, criterion)
    scores = get_scorer(criterion)(
        model, targets.layers, ScoringContext(data.x_train[:8], data.y_train[:8], 0)
    )
    units = select_group_units(scores, targets, criterion, 0.3)
    assert {k: len(v) for k, v in units.items()} == {"conv1": 4, "dense0": 2}
    assert units["conv1"] == sorted(np.argsort(scores["conv1"], kind="stable")[:4].tolist())


@pytest.mark.slow
def test_the_printed_ratios_job_runs_on_the_analysed_model_and_data(cli):
    """`task=sensitivity` writes its files and one run, and prints a job that keeps the
    analysis' model, data and stores: run as printed, it prunes with those ratios."""
    import shlex

    proc = cli("task=sensitivity", "criterion=l1", "sensitivity.psizes=[0.25,0.5]", "seed=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (cli.tmp / "run1" / "ratios.yaml").is_file()
    printed = proc.stdout.split("a job with those ratios: ")[1].split("; uniform")[0]
    words = shlex.split(printed)
    assert words[:2] == ["python", "run.py"] and "task=sensitivity" not in words
    assert "dataset.shape=[12,12,1]" in words and "seed=1" in words  # the analysed job's
    (analysis,) = cli.runs()
    assert any(key.startswith("ratio.") for key in analysis.data.metrics)
    ratios_job = cli(*[w for w in words[2:] if not w.startswith(("hydra.", "store.", "mlflow."))],
                     tiny=False)  # fmt: skip
    assert ratios_job.returncode == 0, ratios_job.stderr[-3000:]
    (pruned,) = [r for r in cli.runs() if r.info.run_id != analysis.info.run_id]
    ratios = OmegaConf.load(cli.tmp / "run1" / "ratios.yaml").ratios
    assert {f"criterion.ratios.{group}": str(r) for group, r in ratios.items()}.items() <= (
        pruned.data.params.items()
    )
    assert pruned.data.tags["baseline.source"] == "reused"  # the analysed baseline
