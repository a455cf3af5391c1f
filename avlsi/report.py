"""The report of an experiment: accuracy against the size kept, per configuration, over seeds.

    python run.py task=report [mlflow.experiment=avlsi] [report.out=DIR] [report.filter="..."]
    python -m avlsi.report    (the same options; both compose conf/config.yaml)

Reads the experiment's finished job runs from MLflow (see `avlsi.runs`: one record per
configuration and seed) and writes to `report.out`:

- `accuracy_<model>_<dataset>.png`: one figure per model x dataset; test accuracy after
  fine-tuning (top row) and right after pruning (bottom row) against the fraction of
  non-zero parameters kept (left) and of multiply-adds kept (middle), and, where the runs
  measured them (latency.*, the .keras file), of the inference time kept (unpruned / pruned
  images per second at the large batch) and of the size on disk kept. One line per series
  (the criterion, plus every other key that differs between the configurations of that
  model x dataset, e.g. `l1 · finetune.epochs=5`), points labelled with their psize (or
  magnitude's threshold), mean over seeds with a +-1 std band; `random` in black dashes;
  `criterion=none` (no pruning, the same fine-tuning) as a reference line; the unpruned
  accuracy as a grey dotted line; Pareto-optimal points ringed;
- `report.csv`: one row per configuration (everything but the seed) with the mean and
  standard deviation over seeds of every metric, `n_seeds`, the keys that differ and
  the `pareto` flags;
- `report.md`: the same rows, the readable columns, accuracies in percent;

and logs them as artifacts: to the run `run_id` when given (a sweep's parent run), else to
a new run named `report` (tag `avlsi.report=true`) of the experiment.

A point is Pareto-optimal when no other pruned point of its model x dataset keeps at most
as many non-zero parameters with at least its mean fine-tuned *validation* accuracy (one of
the two strictly better); test accuracy stands in, with a note, where runs have no
validation accuracy. `pareto_macs` is the same with MACs. The `none` control is a
reference, not a candidate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from omegaconf import DictConfig

from avlsi.config import PROJECT_ROOT
from avlsi.errors import UserError
from avlsi.runs import (
    METRICS,
    REPORT_TAG,
    THRESHOLD,
    label_keys,
    open_experiment,
    percent,
    runs_frame,
    search_all,
    select_records,
    short_name,
)

# Per run: fractions kept and the ratios Blalock et al. (2020) ask for, on the final model.
DERIVED = ("kept_params", "kept_macs", "compression", "speedup")
# Measured (runs with latency.enabled / a .keras file): time and size on disk kept, the
# measured speed-up (throughput at the large batch) and its ratio to the MACs' speed-up.
DERIVED += ("kept_time", "kept_bytes", "speedup_measured", "speedup_ratio")
REFERENCE, UNPRUNED_CONTROL, SCRATCH = "random", "none", "scratch"
IDENTITY = ["model", "dataset", "criterion", "scope", "psize", THRESHOLD]
BASELINE_KEYS = ("model.", "dataset.", "train.", "data")  # keys that change the baseline


@dataclass
class ReportResult:
    """What `make_report` wrote, and the runs it read."""

    out_dir: Path
    csv: Path
    markdown: Path
    plots: list[Path]
    table: pd.DataFrame
    n_runs: int
    run_id: str | None = None  # where the files were logged; None with log_to_mlflow=False
    notes: list[str] = field(default_factory=list)
    own_run: bool = True  # the files went to a new `report` run (not a sweep's run)
    legends: dict[str, list[str]] = field(default_factory=dict)  # plot name -> title, labels

    @property
    def files(self) -> list[Path]:
        return [self.csv, self.markdown, *self.plots]

    def summary(self) -> str:
        pairs = self.table.groupby(["model", "dataset"]).ngroups
        lines = [
            f"avlsi: report of {self.n_runs} runs ({len(self.table)} configurations, "
            f"{pairs} model x dataset) in {self.out_dir}"
        ]
        lines += [f"  {path}" for path in self.files]
        if self.run_id:
            where = "as run 'report'" if self.own_run else "to the sweep's run"
            lines.append(f"  logged to MLflow {where} ({self.run_id})")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------- reading and aggregating


def load_records(
    tracking_uri: str, experiment: str, filter_string: str = ""
) -> tuple[pd.DataFrame, list[str]]:
    """One record per configuration and seed (see `avlsi.runs`), and notes on what was left."""
    client, experiment_id = open_experiment(tracking_uri, experiment)
    frame = runs_frame(search_all(client, experiment_id, filter_string))
    selection = select_records(frame)
    if selection.records.empty:
        data = frame[frame["is_data"]] if len(frame) else frame
        counts = data["status"].value_counts().to_dict()
        seen = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no runs"
        where = f"experiment '{experiment}'"
        if filter_string:
            where += f" with report.filter={filter_string!r}"
        raise UserError(
            f"{where} has no finished pruning runs ({seen}; a run needs "
            "baseline.* and pruned.* or finetuned.* metrics); run a sweep first, e.g. "
            "python run.py -m criterion=l1,random psize=0.1,0.3,0.5 seed=0,1,2"
        )
    return selection.records, selection.notes


def add_ratios(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: fractions kept and ratios, measured on the fine-tuned model (else the pruned).

    Non-zero parameters, so that zeroed single weights (criterion=magnitude) count as removed.
    """
    runs = runs.copy()

    def final(what: str) -> pd.Series:
        return runs[f"finetuned.{what}"].fillna(runs[f"pruned.{what}"])

    runs["kept_params"] = final("nonzero_params") / runs["baseline.nonzero_params"]
    runs["kept_macs"] = final("macs") / runs["baseline.macs"]
    runs["compression"] = runs["baseline.params"] / final("nonzero_params")
    runs["speedup"] = runs["baseline.macs"] / final("macs")
    runs["speedup_measured"] = final("throughput") / runs["baseline.throughput"]
    runs["kept_time"] = 1 / runs["speedup_measured"]
    runs["kept_bytes"] = final("bytes.keras") / runs["baseline.bytes.keras"]
    runs["speedup_ratio"] = runs["speedup_measured"] / runs["speedup"]
    return runs


def point_label(psize: str | None, threshold: str | None) -> str:
    """What a point of a series stands for: its psize, or magnitude's threshold."""
    if threshold not in (None, "None"):
        return f"t={threshold}"
    return "—" if psize in (None, "None") else f"{float(psize):g}"


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: mean and sample std over seeds (std NaN for one seed).

    Adds `point` (psize or threshold), `series` (criterion plus the keys that tell the
    configuration apart within its model x dataset) and a column per such key.
    """
    values = [*METRICS, *DERIVED]
    grouped = runs.groupby("group", sort=False)
    first = grouped[[*IDENTITY, "config"]].first()
    mean = grouped[values].mean().add_suffix("_mean")
    std = grouped[values].std(ddof=1).add_suffix("_std")
    stats = [f"{v}_{s}" for v in values for s in ("mean", "std")]
    table = pd.concat([first, grouped["seed"].nunique().rename("n_seeds"), mean, std], axis=1)
    table = table.reset_index()
    points = zip(table["psize"], table[THRESHOLD], strict=True)
    table["point"] = [point_label(psize, threshold) for psize, threshold in points]
    table["series"], extra = "", []
    for _, rows in table.groupby(["model", "dataset"]):
        for index, keys in zip(rows.index, label_keys(list(rows["config"])), strict=True):
            config = table.at[index, "config"]
            parts = [table.at[index, "criterion"]]
            parts += [f"{short_name(k)}={config.get(k)}" for k in keys]
            table.at[index, "series"] = " · ".join(parts)
            extra += [k for k in keys if k not in extra and k not in IDENTITY]
    for key in sorted(extra):
        table[key] = [config.get(key) for config in table["config"]]
    table["_psize"] = pd.to_numeric(table["psize"], errors="coerce")
    table["_threshold"] = pd.to_numeric(table[THRESHOLD], errors="coerce")
    table = table.sort_values(["model", "dataset", "series", "_psize", "_threshold"])
    table = table.drop(columns=["_psize", "_threshold"]).reset_index(drop=True)
    front = ["model", "dataset", "series", "criterion", "scope", "psize", THRESHOLD, "point"]
    return table[[*front, *sorted(extra), "n_seeds", *stats, "group", "config"]]


def pareto_front(size: np.ndarray, accuracy: np.ndarray, rtol: float = 1e-3) -> np.ndarray:
    """True where no other point has size <= and accuracy >= (one strictly better).

    Sizes within `rtol` of each other count as equal: runs of one psize differ by a few
    weights that happen to be exactly zero, which must not make a worse point optimal.
    """
    size, accuracy = np.asarray(size, float), np.asarray(accuracy, float)
    valid = np.isfinite(size) & np.isfinite(accuracy)
    front = valid.copy()
    for i in np.flatnonzero(valid):
        no_bigger = valid & (size <= size[i] * (1 + rtol)) & (accuracy >= accuracy[i])
        better = no_bigger & ((size < size[i] * (1 - rtol)) | (accuracy > accuracy[i]))
        front[i] = not better.any()
    return front


def mark_pareto(table: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """`pareto` (params kept) and `pareto_macs` by fine-tuned validation accuracy.

    Within each model x dataset, over the pruned configurations (not the `none` control).
    Where a candidate has no validation accuracy, test accuracy decides, with a note.
    """
    table = table.copy()
    table["pareto"] = table["pareto_macs"] = False
    table["pareto_by"] = ""
    for (model, dataset), group in table.groupby(["model", "dataset"]):
        group = group[group["criterion"] != UNPRUNED_CONTROL]
        scored = group[group["finetuned.test_accuracy_mean"].notna()]
        by = "val_accuracy"
        if scored["finetuned.val_accuracy_mean"].isna().any():
            by = "test_accuracy"
            notes.append(
                f"{model} on {dataset}: Pareto marks use test accuracy "
                "(some runs have no finetuned.val_accuracy)"
            )
        accuracy = group[f"finetuned.{by}_mean"]
        table.loc[group.index, "pareto_by"] = f"finetuned.{by}"
        for column, size in (("pareto", "kept_params_mean"), ("pareto_macs", "kept_macs_mean")):
            table.loc[group.index, column] = pareto_front(group[size], accuracy)
    return table


# ---------------------------------------------------------------- plotting

AXES_X = (
    ("kept_params", "fraction of parameters kept (non-zero params / unpruned)", "pareto"),
    ("kept_macs", "fraction of multiply-adds kept (MACs / unpruned)", "pareto_macs"),
)
MEASURED_X = (  # a third column where runs measured them (no Pareto marks: noisy numbers)
    ("kept_time", "measured time kept (unpruned images/s / images/s, large batch)", None),
    ("kept_bytes", "size on disk kept (.keras bytes / unpruned)", None),
)
TITLES = {
    "kept_params": "parameters kept",
    "kept_macs": "multiply-adds kept",
    "kept_time": "measured time kept",
    "kept_bytes": "size on disk kept",
}


def axes_of(table: pd.DataFrame) -> tuple:
    """The x axes of a figure: parameters and MACs kept, then what its runs measured."""
    measured = [axis for axis in MEASURED_X if table[f"{axis[0]}_mean"].notna().any()]
    return (*AXES_X, *measured)


ROWS = (("finetuned", "after fine-tuning"), ("pruned", "after pruning, before fine-tuning"))
CONTROL_COLOR = "C4"  # purple: the `none` control
PALETTE = [f"C{i}" for i in range(10) if i not in (4, 7)]  # C7 is grey like the references


def _is_scratch(config: dict) -> bool:
    return config.get("finetune.init") == SCRATCH


def _styles(series: pd.DataFrame) -> dict[str, dict]:
    """Per series label: random black dashed, scratch dotted squares, others solid."""
    styles, others, dashes = {}, 0, ["--", "-.", (0, (1, 1))]
    for label, config, criterion in series[["series", "config", "criterion"]].values:
        if criterion == REFERENCE:
            dash = dashes[sum(s["color"] == "black" for s in styles.values()) % len(dashes)]
            styles[label] = {"color": "black", "linestyle": dash, "marker": "x"}
            continue
        scratch = _is_scratch(config)
        styles[label] = {
            "color": PALETTE[others % len(PALETTE)],
            "linestyle": (0, (1, 1.5)) if scratch else "-",
            "marker": "s" if scratch else "o",
        }
        others += 1
    return styles


def seeds_text(table: pd.DataFrame) -> str:
    """`mean ± std over N seeds` when there is a spread to show, else `one seed`."""
    low, high = int(table["n_seeds"].min()), int(table["n_seeds"].max())
    if high == 1:
        return "one seed"
    count = f"{low}" if low == high else f"{low}-{high}"
    return f"mean ± std over {count} seeds"


def unpruned_lines(table: pd.DataFrame, runs: pd.DataFrame) -> list[tuple[str, float, float]]:
    """(label, mean, std) of the unpruned test accuracy per distinct baseline configuration."""
    keys = sorted({k for k in table.columns if k.startswith(BASELINE_KEYS) and k not in IDENTITY})
    runs = runs.assign(_base=runs["baseline_key"].fillna("seed=" + runs["seed"].astype(str)))
    lines = []
    values = runs["config"].map(lambda c: tuple(c.get(k) for k in keys))
    for value in sorted(set(values), key=str):
        mine = runs[values == value].drop_duplicates("_base")["baseline.test_accuracy"]
        label = " · ".join(["unpruned", *(f"{k}={v}" for k, v in zip(keys, value, strict=True))])
        lines.append((label, mine.mean(), np.nan_to_num(mine.std(ddof=1))))
    return lines


def _plot_series(ax, rows: pd.DataFrame, size: str, accuracy: str, style: dict, label: str):
    """One series' mean line and ±1 std band; returns its points (x, y, psize label)."""
    rows = rows.dropna(subset=[f"{size}_mean", f"{accuracy}_mean"]).sort_values(f"{size}_mean")
    x, y = rows[f"{size}_mean"], rows[f"{accuracy}_mean"]
    spread = rows[f"{accuracy}_std"].fillna(0.0)
    ax.plot(x, y, label=label, linewidth=2, markersize=5, **style)
    ax.fill_between(x, y - spread, y + spread, color=style["color"], alpha=0.12, linewidth=0)
    return list(zip(x, y, rows["point"], strict=True))


def _label_points(ax, points: list[tuple[float, float, str]]) -> None:
    """Each psize once per spot: above the highest of the points that share it (x within 1%)."""
    spots: dict[tuple[str, float], float] = {}
    for x, y, text in points:
        spot = next((s for s in spots if s[0] == text and abs(s[1] - x) <= 0.01), (text, x))
        spots[spot] = max(spots.get(spot, -np.inf), y)
    for (text, x), y in spots.items():
        ax.annotate(
            text, (x, y), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8,
            color="0.2",
        )  # fmt: skip


def _plot_control(ax, rows: pd.DataFrame, accuracy: str, label: str) -> None:
    """criterion=none: its fine-tuned accuracy as a line, and a star at kept 1.0."""
    mean = rows[f"{accuracy}_mean"].mean()
    if np.isnan(mean):
        return
    label += f" ({percent(mean)})"
    ax.axhline(mean, color=CONTROL_COLOR, linestyle="-.", linewidth=1.5, label=label)
    ax.plot([1.0], [mean], marker="*", markersize=12, color=CONTROL_COLOR, linestyle="none")


def plot_group(table: pd.DataFrame, runs: pd.DataFrame, path: Path) -> list[str]:
    """One figure for one model x dataset (2 x 2 panels, see the module docstring) at path.

    Returns its title and legend labels.
    """
    model, dataset = table["model"].iloc[0], table["dataset"].iloc[0]
    control = table[table["criterion"] == UNPRUNED_CONTROL]
    pruned = table[table["criterion"] != UNPRUNED_CONTROL]
    order = pruned.drop_duplicates("series")
    order = order.assign(_ref=order["criterion"] == REFERENCE).sort_values(["_ref", "series"])
    styles = _styles(order)
    seeds_vary = table["n_seeds"].nunique() > 1  # else the title says it for all
    unpruned = unpruned_lines(table, runs)

    columns = axes_of(table)
    fig = Figure(figsize=(6.5 * len(columns), 10.5), layout="constrained")
    axes = fig.subplots(2, len(columns), sharex="col", sharey="row", squeeze=False)
    for (stage, row_title), row in zip(ROWS, axes, strict=True):
        accuracy = f"{stage}.test_accuracy"
        for (size, xlabel, pareto), ax in zip(columns, row, strict=True):
            points = []
            for label, config in order[["series", "config"]].values:
                if stage == "pruned" and _is_scratch(config):
                    continue  # right after pruning, scratch's model is its criterion's: no news
                rows = pruned[pruned["series"] == label]
                shown = label + (f" ({seeds_text(rows)})" if seeds_vary else "")
                points += _plot_series(ax, rows, size, accuracy, styles[label], shown)
            _label_points(ax, points)
            if stage == "finetuned":
                for label, rows in control.groupby("series", sort=True):
                    rest = label.removeprefix(UNPRUNED_CONTROL)
                    _plot_control(ax, rows, accuracy, f"none (unpruned, same fine-tuning){rest}")
            for i, (label, mean, std) in enumerate(unpruned):
                grey = str(0.4 + 0.15 * i)
                ax.axhline(mean, color=grey, linestyle=":", linewidth=1.5,
                           label=f"{label} ({percent(mean)})")  # fmt: skip
                if std > 0:
                    ax.axhspan(mean - std, mean + std, color=grey, alpha=0.1)
                ax.plot([1.0], [mean], marker="D", color=grey, linestyle="none")
            if stage == "finetuned" and pareto:
                best = pruned[pruned[pareto]]
                by_val = (best["pareto_by"] == "finetuned.val_accuracy").all()
                by = "validation" if by_val else "test"
                ax.scatter(
                    best[f"{size}_mean"], best[f"{accuracy}_mean"], marker="o", s=220,
                    facecolor="none", edgecolor="black", linewidth=1.6, zorder=5,
                    label=f"ringed: Pareto-optimal by {by} accuracy (best for its size)",
                )  # fmt: skip
            ax.set_title(f"{row_title}, vs. {TITLES[size]}", fontsize=11)
            ax.grid(alpha=0.3)
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
            if stage == "pruned":
                ax.set_xlabel(xlabel)
        row[0].set_ylabel("test accuracy")

    title = f"{model} on {dataset}: test accuracy vs. size kept ({seeds_text(table)})"
    if REFERENCE not in set(table["criterion"]):
        title += "\nno random-pruning runs: no reference baseline to compare with"
    fig.suptitle(title, fontsize=13, fontweight="bold")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    legend_title = "points labelled with psize (t= : magnitude threshold)"
    if int(table["n_seeds"].max()) > 1:
        legend_title += "; line = mean, band = ±1 std over seeds"
    fig.legend(
        handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize=9,
        title=legend_title, title_fontsize=9,
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return [title, *labels]


def plot_all(table: pd.DataFrame, runs: pd.DataFrame, out_dir: Path) -> dict[Path, list[str]]:
    """One figure per model x dataset: path -> its title and legend labels."""
    plots = {}
    for (model, dataset), group in table.groupby(["model", "dataset"]):
        mine = runs[(runs["model"] == model) & (runs["dataset"] == dataset)]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"accuracy_{model}_{dataset}") + ".png"
        plots[out_dir / name] = plot_group(group, mine, out_dir / name)
    return plots


# ---------------------------------------------------------------- tables


def _cell(mean: float, std: float, digits: int, scale: float = 1.0) -> str:
    if pd.isna(mean):
        return "—"
    text = f"{scale * mean:.{digits}f}"
    return text if pd.isna(std) or std == 0 else f"{text} ± {scale * std:.{digits}f}"


MD_COLUMNS = (  # header, value, digits, scale
    ("params kept %", "kept_params", 1, 100),
    ("MACs kept %", "kept_macs", 1, 100),
    ("compression", "compression", 2, 1),
    ("speed-up", "speedup", 2, 1),
    ("measured speed-up", "speedup_measured", 2, 1),
    ("measured / MACs", "speedup_ratio", 2, 1),
    ("baseline acc %", "baseline.test_accuracy", 2, 100),
    ("pruned acc %", "pruned.test_accuracy", 2, 100),
    ("fine-tuned acc %", "finetuned.test_accuracy", 2, 100),
    ("fine-tuned val acc %", "finetuned.val_accuracy", 2, 100),
)


def extra_columns(table: pd.DataFrame) -> list[str]:
    """The columns of keys that differ between configurations (beyond the fixed ones)."""
    fixed = {"series", "point", "n_seeds", "group", "config", "pareto", "pareto_macs"}
    fixed |= set(IDENTITY) | {"pareto_by"}
    return [c for c in table.columns if c not in fixed and not c.endswith(("_mean", "_std"))]


def markdown(
    table: pd.DataFrame, experiment: str, n_runs: int, notes: list[str], plots: list[Path]
) -> str:
    extra = extra_columns(table)
    header = ["model", "dataset", "criterion", "scope", *map(short_name, extra), "psize", "seeds"]
    measured = {"speedup_measured", "speedup_ratio"}
    shown = [c for c in MD_COLUMNS if c[1] not in measured or table[f"{c[1]}_mean"].notna().any()]
    header += [h for h, *_ in shown] + ["Pareto"]
    lines = [
        f"# Pruning report: experiment `{experiment}`",
        "",
        f"{n_runs} runs, {len(table)} configurations; mean ± sample standard deviation over "
        "seeds (no ± means one seed or no spread). Sizes are those of the fine-tuned model: "
        "non-zero parameters and multiply-adds, as percentages of the unpruned model's. "
        "Compression = unpruned params / non-zero params; speed-up = unpruned MACs / MACs; "
        "measured speed-up = images/s / unpruned images/s at the large batch, measured in "
        "the same job (latency.*; compare runs of one machine and thread count), and its "
        "ratio to the MACs' speed-up. "
        "Accuracies are test accuracies except the validation column. Pareto: no other pruned "
        "configuration of the same model x dataset keeps at most as many non-zero parameters "
        "with at least the same fine-tuned validation accuracy (one of the two strictly "
        "better). psize `t=...` is magnitude's threshold; criterion `none` is the unpruned "
        "model with the same fine-tuning.",
        "",
        *(f"- note: {note}" for note in notes),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for _, row in table.iterrows():
        cells = [row["model"], row["dataset"], row["criterion"], str(row["scope"])]
        cells += [str(row[key]) for key in extra]
        cells += [row["point"], str(row["n_seeds"])]
        cells += [_cell(row[f"{v}_mean"], row[f"{v}_std"], d, s) for _, v, d, s in shown]
        cells.append("yes" if row["pareto"] else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"![{p.stem}]({p.name})" for p in plots), ""]
    return "\n".join(lines)


def write_tables(table: pd.DataFrame, out_dir: Path, text: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / "report.csv", out_dir / "report.md"
    table.drop(columns="config").to_csv(csv, index=False, float_format="%.10g")
    md.write_text(text, encoding="utf-8")
    return csv, md


# ---------------------------------------------------------------- MLflow and the command


def log_report(
    tracking_uri: str,
    experiment: str,
    files: list[Path],
    description: str,
    params: dict[str, str],
    run_id: str | None = None,
) -> str:
    """Log `files` to the run `run_id`, or to a new FINISHED run named `report`; its id."""
    client, experiment_id = open_experiment(tracking_uri, experiment)
    if run_id is not None:
        for name, value in params.items():
            client.set_tag(run_id, f"avlsi.report.{name}", value)
        for path in files:
            client.log_artifact(run_id, str(path))
        return run_id
    from avlsi.record import process_tags

    # host / pid: a report killed mid-write is closed as an orphan by the next job
    tags = {REPORT_TAG: "true", "mlflow.note.content": description, **process_tags()}
    run = client.create_run(experiment_id, run_name="report", tags=tags)
    run_id = run.info.run_id
    try:
        for name, value in params.items():
            client.log_param(run_id, name, value)
        for path in files:
            client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def default_out_dir(experiment: str) -> Path:
    return PROJECT_ROOT / "reports" / re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment)


def make_report(
    tracking_uri: str,
    experiment: str,
    out_dir: str | Path | None = None,
    log_to_mlflow: bool = True,
    filter_string: str = "",
    run_id: str | None = None,
) -> ReportResult:
    """Read the experiment's runs; write plots and tables to out_dir; log them to MLflow.

    run_id: log the files to this run (a sweep's parent run) instead of a new `report` run.
    Raises UserError for a missing store, an unknown experiment, a bad filter, or an
    experiment without finished pruning runs.
    """
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(experiment)
    runs, notes = load_records(tracking_uri, experiment, filter_string)
    runs = add_ratios(runs)
    table = mark_pareto(aggregate(runs), notes)
    for (model, dataset), group in table.groupby(["model", "dataset"]):
        if REFERENCE not in set(group["criterion"]):
            notes.append(f"{model} on {dataset} has no random-pruning runs to compare with")
    legends = plot_all(table, runs, out_dir)
    plots = list(legends)
    text = markdown(table, experiment, len(runs), notes, plots)
    csv, md = write_tables(table, out_dir, text)
    result = ReportResult(out_dir, csv, md, plots, table, len(runs), notes=notes)
    result.legends = {path.name: labels for path, labels in legends.items()}
    if log_to_mlflow:
        params = {"filter": filter_string or "(none)", "n_runs": str(len(runs))}
        files = result.files
        result.run_id = log_report(tracking_uri, experiment, files, text, params, run_id)
        result.own_run = run_id is None
    return result


def report_from_config(
    cfg: DictConfig, out: str | Path | None = None, run_id: str | None = None
) -> ReportResult:
    """The report a composed config asks for (mlflow.*, report.*); `out` if report.out unset."""
    return make_report(
        str(cfg.mlflow.tracking_uri),
        str(cfg.mlflow.experiment),
        cfg.report.out or out,
        log_to_mlflow=bool(cfg.report.log),
        filter_string=str(cfg.report.filter or ""),
        run_id=run_id,
    )


USAGE = """\
usage: python -m avlsi.report [key=value ...]   (or: python run.py task=report [key=value ...])

Plots and tables of accuracy against size kept, from an experiment's runs in MLflow; the
files are logged back to MLflow as a run named 'report'. Options (Hydra overrides of
conf/config.yaml):
  mlflow.experiment=NAME      the experiment to read (default: {experiment})
  mlflow.tracking_uri=URI     the MLflow store (default: {uri})
  report.out=DIR              output folder (default: <project>/reports/<experiment>)
  report.filter="FILTER"      an MLflow search filter picking runs, quoted for Hydra, e.g.
                              "report.filter=\\"params.model = 'cnn'\\""  (bash)
  report.log=false            only write the files, log nothing to MLflow
"""


def compose_config(overrides: list[str]) -> DictConfig:
    """conf/config.yaml composed with Hydra's compose API and these overrides."""
    from hydra import compose, initialize_config_dir

    from avlsi.config import register

    register()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def check_overrides(overrides: list[str]) -> None:
    """Each override parses; a value with spaces needs quotes, which the message shows."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except HydraException as err:
            key, _, value = override.partition("=")
            raise UserError(
                f"cannot read {override!r} ({str(err).splitlines()[-1]}); quote a value with "
                f'spaces for Hydra, so that the argument reads {key}="{value}"'
            ) from None


def main(argv: list[str] | None = None) -> None:
    """`python -m avlsi.report key=value ...`: every mistake is one line."""
    from avlsi.cli import module_main

    def usage() -> str:
        cfg = compose_config([])
        return USAGE.format(experiment=cfg.mlflow.experiment, uri=cfg.mlflow.tracking_uri)

    module_main(
        argv,
        "report",
        "mlflow.experiment=NAME",
        usage,
        lambda cfg: report_from_config(cfg).summary(),
    )


if __name__ == "__main__":
    main()
