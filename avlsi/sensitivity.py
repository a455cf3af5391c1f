"""task=sensitivity: how much each prunable group (or, for magnitude, each kernel) matters.

Li et al. (2017), "Pruning Filters for Efficient ConvNets", Fig. 2: one baseline (trained,
or the store's); every prunable group of coupled channels is pruned ALONE at each of
`sensitivity.psizes`, with the criterion's scores of the baseline, without fine-tuning, and
evaluated on the validation split. A group alone can look insensitive when its coupled
partners are what matters (fasterai PR #40): groups here are whole coupled groups.

Writes `sensitivity.png` (validation accuracy against psize, one line per group),
`sensitivity.csv` / `.md` (one row per group and psize) and `ratios.yaml`: per group the
largest psize whose drop, and every smaller psize's, stays within `sensitivity.max_drop`
percentage points, as a criterion option (`criterion.ratios`, honoured by `layerwise`).
All logged to one MLflow run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from avlsi.config import job_command

log = logging.getLogger(__name__)

PLOT, TABLE, RATIOS = "sensitivity.png", "sensitivity", "ratios.yaml"
# The printed job with the ratios keeps the analysis' overrides (model, dataset, sizes, seed,
# stores) but these: the ratios job sets the criterion's scope and ratios itself.
NOT_IN_RATIOS_COMMAND = ("task", "sensitivity", "stage", "hydra", "verbose", "rerun", "report")
RATIOS_REPLACE = ("criterion", "criterion.scope", "criterion.ratios", "criterion.layer")


def _targets(model, criterion) -> list[tuple[str, list[str]]]:
    """(name, producer layers) of every unit of analysis: each prunable group (named by its
    first producer), or for magnitude each kernel layer but the output layer(s)."""
    if criterion.structured:
        from avlsi.graph import pruning_groups

        return [(g.producers[0], list(g.producers)) for g in pruning_groups(model) if g.prunable]
    from avlsi.models import output_layers
    from avlsi.units import MASKABLE_TYPES

    outputs = {layer.name for layer in output_layers(model)}
    return [
        (layer.name, [layer.name])
        for layer in model.layers
        if type(layer).__name__ in MASKABLE_TYPES and layer.name not in outputs
    ]


def prune_alone(model, criterion, producers: list[str], scores, psize: float):
    """`model` with `psize` of one group's units removed (or of one kernel's weights zeroed)."""
    from avlsi import masking
    from avlsi.surgery import delete_units
    from avlsi.targets import n_to_remove_lowest

    if not criterion.structured:
        from avlsi.pipeline import _copy

        twin = _copy(model)
        layer = twin.get_layer(producers[0])
        masks = masking.magnitude_masks([layer], "layer", psize, None, "none", criterion.min_units)
        masking.apply_masks(twin, masks)
        return twin
    chosen = n_to_remove_lowest(scores, psize, criterion.min_units)
    return delete_units(model, {p: chosen for p in producers})


def group_scores_of(model, criterion, targets, context) -> dict[str, np.ndarray]:
    """One score per channel of each group, from the criterion's scores of the baseline."""
    if not criterion.structured:
        return {}
    from avlsi.criteria import get_scorer
    from avlsi.graph import pruning_groups
    from avlsi.targets import group_scores

    names = {name for name, _ in targets}
    groups = [g for g in pruning_groups(model) if g.prunable and g.producers[0] in names]
    layers = [model.get_layer(p) for g in groups for p in g.producers]
    scores = get_scorer(criterion)(model, layers, context)
    return group_scores(scores, groups, criterion.group_reduce)


def analyse(model, data, criterion, psizes, context) -> tuple[float, pd.DataFrame]:
    """(baseline validation accuracy, one row per group x psize: units removed, validation
    accuracy, drop in percentage points)."""
    from avlsi import train

    split = "val" if data.y_val is not None and len(data.y_val) else "test"
    base = train.evaluate(model, data, split=split)
    targets = _targets(model, criterion)
    scores = group_scores_of(model, criterion, targets, context)
    rows = []
    for name, producers in targets:
        for psize in psizes:
            pruned = prune_alone(model, criterion, producers, scores.get(name), float(psize))
            accuracy = train.evaluate(pruned, data, split=split)
            rows.append(
                {
                    "group": name,
                    "layers": " ".join(producers),
                    "psize": float(psize),
                    "val_accuracy": accuracy,
                    "drop_pp": (base - accuracy) * 100,
                }
            )
            log.info("%s at psize %g: %.2f%% (drop %.2f pp)", name, psize, accuracy * 100,
                     rows[-1]["drop_pp"])  # fmt: skip
    return base, pd.DataFrame(rows)


def derive_ratios(table: pd.DataFrame, max_drop: float) -> dict[str, float]:
    """Per group, the largest psize whose drop and every smaller psize's are <= max_drop."""
    ratios = {}
    for name, rows in table.groupby("group", sort=False):
        ratio = 0.0
        for psize, drop in rows.sort_values("psize")[["psize", "drop_pp"]].values:
            if drop > max_drop:
                break
            ratio = float(psize)
        ratios[str(name)] = ratio
    return ratios


def plot(table: pd.DataFrame, base: float, title: str, path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, rows in table.groupby("group", sort=False):
        ax.plot(rows["psize"], rows["val_accuracy"], marker="o", label=str(name))
    ax.axhline(base, color="grey", linestyle="-.", label=f"unpruned ({base:.2%})")
    ax.set_xlabel("fraction of the group's units removed (psize), no fine-tuning")
    ax.set_ylabel("validation accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def markdown(table: pd.DataFrame, base: float, ratios: dict[str, float]) -> str:
    """Validation accuracy (%) per group (rows) and psize (columns), and the derived ratio."""
    wide = table.pivot(index="group", columns="psize", values="val_accuracy")
    wide = wide.loc[list(dict.fromkeys(table["group"]))]  # graph order
    header = ["group", *(f"p={p:g}" for p in wide.columns), "ratio"]
    lines = [
        f"Validation accuracy (%) with one group pruned alone, no fine-tuning; unpruned "
        f"{base:.2%}. ratio: the largest psize within max_drop (blank: not pruned by "
        "layerwise).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for group, row in wide.iterrows():
        ratio = ratios.get(str(group))
        cells = [str(group), *(f"{100 * v:.2f}" for v in row.values)]
        lines.append("| " + " | ".join([*cells, "" if ratio is None else f"{ratio:g}"]) + " |")
    return "\n".join(lines) + "\n"


def ratios_yaml(criterion, ratios: dict[str, float], note: str) -> str:
    """A criterion option (`conf/criterion/NAME.yaml`) with these ratios."""
    body = {"defaults": [str(criterion.name), "_self_"], "scope": "layerwise", "ratios": ratios}
    return f"# {note}\n{OmegaConf.to_yaml(OmegaConf.create(body))}"


def params_with(model, groups: list[tuple[str, list[str], int]], share) -> int:
    """Parameters of `model` once each (name, producers, channels) group loses
    n_to_remove(share(name), channels) units (which ones does not change the count)."""
    from avlsi.select import n_to_remove
    from avlsi.surgery import delete_units

    units = {}
    for name, producers, channels in groups:
        count = n_to_remove(share(name), channels)
        units.update({p: list(range(count)) for p in producers})
    units = {p: idx for p, idx in units.items() if idx}
    return int(delete_units(model, units).count_params()) if units else model.count_params()


def matching_psize(model, groups, ratios: dict[str, float]) -> tuple[float, int, int]:
    """(uniform layerwise psize, its parameter count, the ratios' count): the psize on a 0.01
    grid whose pruned model's parameter count is closest to the one the ratios give."""
    target = params_with(model, groups, lambda name: ratios.get(name, 0.0))
    low, high = 1, 99  # the count falls as psize grows: bisect on hundredths
    while low < high:
        mid = (low + high) // 2
        if params_with(model, groups, lambda _n, m=mid: m / 100) > target:
            low = mid + 1
        else:
            high = mid
    best = min(
        (p for p in (low - 1, low) if p >= 1),
        key=lambda p: abs(params_with(model, groups, lambda _n, q=p: q / 100) - target),
    )
    return best / 100, params_with(model, groups, lambda _n: best / 100), target


def override_line(ratios: dict[str, float]) -> str:
    inner = ",".join(f"{name}:{ratio:g}" for name, ratio in ratios.items())
    return f"criterion.ratios={{{inner}}}"


def run_sensitivity(cfg: DictConfig, output_dir: Path, choices: dict[str, str]) -> str:
    """Baseline (trained or stored), analysis, files, one MLflow run; returns a summary."""
    import mlflow

    from avlsi import record, train
    from avlsi.keys import baseline_key, code_fingerprint
    from avlsi.pipeline import Job, load_data, model_label
    from avlsi.targets import prune_targets

    out = Path(str(cfg.sensitivity.out)) if cfg.sensitivity.out else output_dir
    out.mkdir(parents=True, exist_ok=True)
    criterion = cfg.criterion
    name = f"sensitivity-{model_label(cfg, choices.get('model'))}-{criterion.name}-s{cfg.seed}"
    tags = {"task": "sensitivity", "avlsi.code": code_fingerprint(), "output_dir": str(out)}
    with record.mlflow_run(cfg, name, tags):
        record.log_config(cfg, {**choices, "task": "sensitivity"}, output_dir)
        mlflow.log_params({"sensitivity.psizes": list(cfg.sensitivity.psizes),
                           "sensitivity.max_drop": cfg.sensitivity.max_drop})  # fmt: skip
        train.seed_everything(cfg.seed)  # as run_job: the stored baseline is a job's baseline
        job = Job(cfg, output_dir)
        job.data = load_data(cfg)
        model = job.baseline()
        base, table = analyse(model, job.data, criterion, cfg.sensitivity.psizes,
                              job.scoring_context())  # fmt: skip
        ratios = derive_ratios(table, float(cfg.sensitivity.max_drop))
        layerwise = OmegaConf.merge(criterion, {"scope": "layerwise", "layer": None})
        pruned_groups = prune_targets(model, layerwise).groups
        kept = {g.producers[0] for g in pruned_groups}
        ratios = {n: r for n, r in ratios.items() if n in kept}  # layerwise's groups only
        same = ""
        if criterion.structured:
            groups = [(g.producers[0], list(g.producers), g.channels) for g in pruned_groups]
            psize, uniform, target = matching_psize(model, groups, ratios)
            record.log_metrics({"ratios.params": target, "uniform.params": uniform,
                                "uniform.psize": psize})  # fmt: skip
            same = (f"; uniform layerwise at about the same parameter count: psize={psize:g} "
                    f"({uniform:,} parameters; the ratios: {target:,})")  # fmt: skip
        title = (f"{cfg.model.name}, {criterion.name}: each group pruned alone "
                 f"(baseline {baseline_key(cfg)[:24]}...)")  # fmt: skip
        plot(table, base, title, out / PLOT)
        table.to_csv(out / f"{TABLE}.csv", index=False)
        (out / f"{TABLE}.md").write_text(markdown(table, base, ratios))
        note = (f"criterion={criterion.name} ratios from task=sensitivity of model="
                f"{cfg.model.name}, max_drop={cfg.sensitivity.max_drop} pp; put this file in "
                "conf/criterion/ and pass criterion=<its name>, or: "
                f"{override_line(ratios)}")  # fmt: skip
        (out / RATIOS).write_text(ratios_yaml(criterion, ratios, note))
        for group, rows in table.groupby("group", sort=False):
            for psize, accuracy in rows[["psize", "val_accuracy"]].values:
                record.log_metrics({f"sensitivity.{group}": accuracy}, step=round(psize * 100))
        record.log_metrics({f"ratio.{group}": r for group, r in ratios.items()})
        for file in (PLOT, f"{TABLE}.csv", f"{TABLE}.md", RATIOS):
            mlflow.log_artifact(str(out / file), artifact_path="sensitivity")
    first = [f"criterion={criterion.name}", "criterion.scope=layerwise", override_line(ratios)]
    command = job_command(first, NOT_IN_RATIOS_COMMAND, RATIOS_REPLACE) or " ".join(first)
    return (f"sensitivity of {len(set(table['group']))} groups written to {out} ({PLOT}, "
            f"{TABLE}.csv, {RATIOS}); a job with those ratios: {command}{same}")  # fmt: skip
