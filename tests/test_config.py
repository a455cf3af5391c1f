"""Config composition: every option of every group composes against the schema."""

from pathlib import Path

import pytest
from conftest import assert_one_line_error
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from avlsi.config import Normalize, check_config, effective_psize, register
from avlsi.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GROUPS = ("model", "dataset", "criterion", "stage", "schedule")

register()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# Options with a value the user must give (the model's own name where it is not the option's).
REQUIRED = {
    "model=builder": ["model._target_=examples.my_models.residual_cnn"],
    "model=keras_app": ["model.name=keras_app"],
}


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option):
    cfg = composed(f"{group}={option}", *REQUIRED.get(f"{group}={option}", []))
    section = OmegaConf.to_container(cfg[group], resolve=True, enum_to_str=True)
    # dataset=keras is named by the keras dataset it reads (dataset.name=cifar10, ...)
    assert section["name"] == ("cifar10" if (group, option) == ("dataset", "keras") else option)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def test_paths_resolve_under_the_project_folder():
    cfg = composed()
    assert cfg.mlflow.tracking_uri == f"sqlite:///{ROOT}/mlflow.db"
    assert Path(cfg.store.dir).is_absolute() and Path(cfg.store.dir).is_relative_to(ROOT)


def test_quick_run_knobs_exist_with_their_names():
    cfg = composed(
        "train.epochs=1",
        "finetune.epochs=2",
        "dataset.limit=100",
        "dataset.test_limit=50",
        "seed=3",
        "mlflow.tracking_uri=sqlite:////tmp/x.db",
        "mlflow.experiment=e",
        "psize=0.5",
        "criterion.scope=global",
        "criterion.layer=conv3",
        "criterion.normalize=l2",
        "criterion.min_units=2",
    )
    assert (cfg.train.epochs, cfg.finetune.epochs, cfg.seed, cfg.psize) == (1, 2, 3, 0.5)
    assert (cfg.dataset.limit, cfg.dataset.test_limit) == (100, 50)
    assert cfg.criterion.scope.value == "global"
    assert (cfg.criterion.normalize, cfg.criterion.min_units) == (Normalize.l2, 2)


@pytest.mark.parametrize(
    "override",
    [
        "psize=abc",
        "train.epochs=many",
        "model.nope=1",
        "criterion.scope=everywhere",
        "dataset.limit=1.5",
        "seed=x",
        "criterion.min_units=1.5",
    ],
)
def test_wrong_type_or_unknown_key_fails_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        composed(override)


@pytest.mark.parametrize("choice", [n.value for n in Normalize])
def test_every_normaliser_composes(choice):
    assert composed(f"criterion.normalize={choice}").criterion.normalize == Normalize(choice)


def test_unknown_normaliser_fails_at_compose_time_naming_the_choices():
    with pytest.raises(ConfigCompositionException) as failure:
        composed("criterion.normalize=L2")
    assert "expected one of [rms, l2, max, mean, none]" in str(failure.value.__cause__)


@pytest.mark.parametrize("min_units", [0, -2])
def test_min_units_below_one_is_refused(min_units):
    with pytest.raises(UserError, match=rf"criterion.min_units={min_units} must be at least 1"):
        check_config(composed("dataset=synthetic", f"criterion.min_units={min_units}"))
    check_config(composed("dataset=synthetic", "criterion.min_units=3"))


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["criterion.min_units=0"], ["criterion.min_units=0", "at least 1"]),
        (["criterion.normalize=L2"], ["criterion.normalize=L2", "rms, l2, max, mean, none"]),
    ],
)
def test_bad_normalize_or_min_units_is_one_line_on_the_command_line(cli, overrides, needles):
    proc = cli(*overrides)
    assert_one_line_error(proc, *needles)
    assert cli.runs() == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], 0.3),
        (["psize=0.29"], 0.29),
        (["criterion=magnitude", "psize=0.7"], 0.7),
        (["criterion=magnitude", "criterion.threshold=0.05"], None),
        (["criterion=magnitude", "criterion.threshold=0.0", "psize=0.7"], None),
    ],
)
def test_effective_psize_is_none_where_psize_means_nothing(overrides, expected):
    assert effective_psize(composed(*overrides)) == expected


def test_effective_psize_of_the_no_pruning_control_is_none():
    assert effective_psize(composed("criterion=none", "psize=0.4")) is None
    assert effective_psize(composed("criterion=l1", "psize=0.4")) == 0.4


def study_jobs(name: str) -> list[list[str]]:
    """The override list of every job a named study's sweep launches."""
    import itertools

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={name}"],
                      return_hydra_config=True)  # fmt: skip
    params = {key: str(value).split(",") for key, value in cfg.hydra.sweeper.params.items()}
    return [
        [f"experiment={name}", *(f"{k}={v}" for k, v in zip(params, values, strict=True))]
        for values in itertools.product(*params.values())
    ]


def covering_jobs(jobs: list[list[str]]) -> list[list[str]]:
    """Every combination of group choices, each with some value of every other key."""
    seen, picked = set(), []
    for overrides in jobs:
        groups = tuple(o for o in overrides if o.split("=")[0] in GROUPS)
        others = {o for o in overrides if o.split("=")[0] not in GROUPS}
        if groups not in seen or not others <= {o for job in picked for o in job}:
            seen.add(groups)
            picked.append(overrides)
    return picked


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml")))
def test_every_job_of_every_named_study_is_a_valid_config(name, tmp_path):
    from avlsi.config import check_config

    jobs = study_jobs(name)
    assert jobs
    data_file = tmp_path / "train.csv"  # a study on the user's own data gets a path
    data_file.touch()
    for overrides in covering_jobs(jobs):
        cfg = composed(*overrides)
        if cfg.dataset.name == "fer2013":
            cfg = composed(*overrides, f"dataset.path={data_file}")
        check_config(cfg)
        assert cfg.mlflow.experiment == name
        assert cfg.report.after_sweep is True


def test_the_main_study_is_every_criterion_over_psize_and_three_seeds():
    jobs = [dict(o.split("=", 1) for o in job) for job in study_jobs("cnn_vs_dnn")]
    assert {j["model"] for j in jobs} == {"cnn", "dnn"}
    assert {j["criterion"] for j in jobs} == set(options("criterion"))
    assert sorted({float(j["psize"]) for j in jobs}) == [i / 10 for i in range(1, 10)]
    assert len({j["seed"] for j in jobs}) >= 3
