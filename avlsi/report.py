"""The report of an experiment: accuracy against the size kept, per criterion, over seeds.

    python -m avlsi.report [--experiment avlsi] [--out reports/avlsi] [--filter ...] [--no-log]

Reads the experiment's finished pruning runs from MLflow, and writes to the output folder

- `accuracy_<model>_<dataset>.png`: one figure per model x dataset; test accuracy after
  fine-tuning (top row) and right after pruning (bottom row) against the fraction of
  non-zero parameters kept (left) and of multiply-adds kept (right). One line per
  criterion (mean over seeds, band +-1 standard deviation), `random` in black dashes as
  the reference, the unpruned accuracy as a horizontal line, Pareto-optimal points ringed;
- `report.csv`: one row per model x dataset x criterion x scope x psize with the mean and
  standard deviation over seeds of every metric, `n_seeds` and the `pareto` flags;
- `report.md`: the same rows, the readable columns only, as `mean +- std`;

and logs them as the artifacts of a run named `report` (tag `avlsi.report=true`) in the
same experiment, so the MLflow UI shows them next to the runs.

A point is Pareto-optimal when no other point of its model x dataset keeps at most as
many non-zero parameters with at least its mean fine-tuned accuracy (one of the two
strictly better): the best accuracy for its size. `pareto_macs` is the same with MACs.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from avlsi.config import PROJECT_ROOT, configured_default
from avlsi.errors import UserError
from avlsi.record import sqlite_path

STAGES = ("baseline", "pruned", "finetuned")
QUANTITIES = ("test_accuracy", "params", "nonzero_params", "macs")
METRICS = [f"{stage}.{what}" for stage in STAGES for what in QUANTITIES]
# Per run: fractions kept and the ratios Blalock et al. (2020) ask for, on the final model.
DERIVED = ("kept_params", "kept_macs", "compression", "speedup")
KEYS = ["model", "dataset", "criterion", "scope", "psize"]
PARAMS = [*KEYS, "seed"]
REPORT_TAG = "avlsi.report"
REFERENCE = "random"


@dataclass
class ReportResult:
    """What `make_report` wrote, and the runs it read."""

    out_dir: Path
    csv: Path
    markdown: Path
    plots: list[Path]
    table: pd.DataFrame
    n_runs: int
    run_id: str | None = None  # the report run in MLflow, None with log_to_mlflow=False
    notes: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [self.csv, self.markdown, *self.plots]

    def summary(self) -> str:
        pairs = self.table.groupby(["model", "dataset"]).ngroups
        lines = [f"avlsi: report of {self.n_runs} runs ({pairs} model x dataset) in {self.out_dir}"]
        lines += [f"  {path}" for path in self.files]
        if self.run_id:
            lines.append(f"  logged to MLflow as run 'report' ({self.run_id})")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------- reading the runs


def local_store(tracking_uri: str) -> Path | None:
    """The file or folder a local tracking URI names (SQLAlchemy's rule for sqlite:///)."""
    if tracking_uri.startswith("sqlite:///"):
        return sqlite_path(tracking_uri)
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "" and tracking_uri:
        return Path(tracking_uri)
    return None  # a server, or an in-memory database


def open_experiment(tracking_uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client and the experiment's id; never creates a store or an experiment."""
    store = local_store(tracking_uri)
    if store is not None and not store.exists():
        raise UserError(
            f"no MLflow store at {store.absolute()} (--tracking-uri {tracking_uri}); "
            "run some jobs first, or point --tracking-uri at the store they used"
        )
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(
            f"no experiment '{experiment}' in {tracking_uri}; "
            f"existing experiments: {', '.join(names) or '(none)'}"
        )
    return client, found.experiment_id


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    runs, token = [], None
    try:
        while True:
            page = client.search_runs(
                [experiment_id], filter_string, max_results=1000, page_token=token
            )
            runs += page
            token = page.token
            if not token:
                return runs
    except MlflowException as err:
        first = (str(err.message).splitlines() or [type(err).__name__])[0]
        message = f"--filter {filter_string!r} is not a valid MLflow filter: {first}"
        raise UserError(message) from err


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run: id, status, start time, report tag, the key params, the metrics."""
    rows = []
    for run in runs:
        row = {
            "run_id": run.info.run_id,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "is_report": run.data.tags.get(REPORT_TAG) == "true",
        }
        row.update({name: run.data.params.get(name) for name in PARAMS})
        row.update({name: run.data.metrics.get(name, np.nan) for name in METRICS})
        rows.append(row)
    columns = ["run_id", "status", "start_time", "is_report", *PARAMS, *METRICS]
    frame = pd.DataFrame(rows, columns=columns)
    frame[METRICS] = frame[METRICS].astype(float)
    frame["psize"] = pd.to_numeric(frame["psize"], errors="coerce")
    return frame


def usable_runs(frame: pd.DataFrame, where: str) -> tuple[pd.DataFrame, list[str]]:
    """Finished pruning runs that have baseline.* and pruned.* or finetuned.* metrics.

    Of several runs with the same model, dataset, criterion, scope, psize and seed (a
    sweep run twice) only the newest is kept.
    """
    frame = frame[~frame["is_report"].astype(bool)]
    finished = frame["status"] == "FINISHED"
    has_baseline = frame[[f"baseline.{what}" for what in QUANTITIES]].notna().all(axis=1)
    has_result = frame["pruned.test_accuracy"].notna() | frame["finetuned.test_accuracy"].notna()
    has_keys = frame[PARAMS].notna().all(axis=1)
    usable = finished & has_baseline & has_result & has_keys
    notes = []
    skipped = int((finished & ~usable).sum())
    if skipped:
        notes.append(
            f"ignored {skipped} finished runs without baseline.* and pruned.*/finetuned.* "
            "metrics (stage=train/prune/finetune runs hold only their own stage's)"
        )
    if not usable.any():
        counts = frame["status"].value_counts().to_dict()
        seen = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no runs"
        raise UserError(
            f"{where} has no finished pruning runs ({seen}; a run needs "
            "baseline.* and pruned.* or finetuned.* metrics); run a sweep first, e.g. "
            "python run.py -m criterion=l1,random psize=0.1,0.3,0.5 seed=0,1,2"
        )
    runs = frame[usable].sort_values("start_time")
    newest = runs.drop_duplicates(PARAMS, keep="last")
    if len(newest) < len(runs):
        notes.append(
            f"ignored {len(runs) - len(newest)} older runs repeating the same model, dataset, "
            "criterion, scope, psize and seed (use --filter to pick runs instead)"
        )
    return newest.reset_index(drop=True), notes


def load_runs(
    tracking_uri: str, experiment: str, filter_string: str = ""
) -> tuple[pd.DataFrame, list[str]]:
    """The experiment's usable pruning runs (see `usable_runs`) and notes on what was skipped."""
    client, experiment_id = open_experiment(tracking_uri, experiment)
    frame = runs_frame(search_all(client, experiment_id, filter_string))
    where = f"experiment '{experiment}'"
    if filter_string:
        where += f" with --filter {filter_string!r}"
    return usable_runs(frame, where)


# ---------------------------------------------------------------- aggregating


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
    return runs


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per model x dataset x criterion x scope x psize: mean and std over seeds.

    The std is the sample standard deviation (NaN for a single seed).
    """
    values = [*METRICS, *DERIVED]
    grouped = runs.groupby(KEYS, sort=True)
    mean = grouped[values].mean().add_suffix("_mean")
    std = grouped[values].std(ddof=1).add_suffix("_std")
    table = pd.concat([grouped["seed"].nunique().rename("n_seeds"), mean, std], axis=1)
    order = ["n_seeds"] + [f"{v}_{s}" for v in values for s in ("mean", "std")]
    return table[order].reset_index()


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


def mark_pareto(table: pd.DataFrame) -> pd.DataFrame:
    """`pareto` (against params kept) and `pareto_macs`, within each model x dataset."""
    table = table.copy()
    table["pareto"] = table["pareto_macs"] = False
    accuracy = "finetuned.test_accuracy_mean"
    for _, group in table.groupby(["model", "dataset"]):
        for column, size in (("pareto", "kept_params_mean"), ("pareto_macs", "kept_macs_mean")):
            table.loc[group.index, column] = pareto_front(group[size], group[accuracy])
    return table


# ---------------------------------------------------------------- plotting

AXES = (
    ("kept_params", "fraction of parameters kept (non-zero params / unpruned)", "pareto"),
    ("kept_macs", "fraction of multiply-adds kept (MACs / unpruned)", "pareto_macs"),
)
ROWS = (("finetuned", "after fine-tuning"), ("pruned", "after pruning, before fine-tuning"))


def _styles(lines: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """Colour per criterion x scope; random always black, dashed."""
    palette = [f"C{i}" for i in range(10) if i != 7]  # C7 is grey, close to the reference
    styles, others, dashes = {}, 0, ["--", "-.", (0, (1, 1))]
    for criterion, scope in lines:
        if criterion == REFERENCE:
            dash = dashes[sum(c == REFERENCE for c, _ in styles) % len(dashes)]
            styles[criterion, scope] = {"color": "black", "linestyle": dash, "marker": "x"}
        else:
            styles[criterion, scope] = {
                "color": palette[others % len(palette)],
                "linestyle": "-",
                "marker": "o",
            }
            others += 1
    return styles


def _seeds(rows: pd.DataFrame) -> str:
    low, high = rows["n_seeds"].min(), rows["n_seeds"].max()
    count = f"{low}" if low == high else f"{low}-{high}"
    return f"{count} seed" + ("" if high == 1 else "s")


def plot_group(table: pd.DataFrame, runs: pd.DataFrame, path: Path) -> Path:
    """One figure for one model x dataset: 2 x 2 panels (see the module docstring)."""
    model, dataset = table["model"].iloc[0], table["dataset"].iloc[0]
    pairs = table.groupby(["criterion", "scope"]).groups
    lines = sorted(pairs, key=lambda pair: (pair[0] == REFERENCE, pair))  # random drawn last
    styles = _styles(lines)
    several_scopes = table["scope"].nunique() > 1
    baseline = runs.drop_duplicates(["seed"])["baseline.test_accuracy"]  # one per seed
    base_mean, base_std = baseline.mean(), np.nan_to_num(baseline.std(ddof=1))

    fig = Figure(figsize=(12, 10), layout="constrained")
    axes = fig.subplots(2, 2, sharex="col", sharey="row", squeeze=False)
    for (stage, row_title), row in zip(ROWS, axes, strict=True):
        accuracy = f"{stage}.test_accuracy"
        for (size, xlabel, pareto), ax in zip(AXES, row, strict=True):
            for criterion, scope in lines:
                rows = table[(table["criterion"] == criterion) & (table["scope"] == scope)]
                rows = rows.dropna(subset=[f"{size}_mean", f"{accuracy}_mean"])
                rows = rows.sort_values(f"{size}_mean")
                x, y = rows[f"{size}_mean"], rows[f"{accuracy}_mean"]
                spread = rows[f"{accuracy}_std"].fillna(0.0)
                label = criterion + (f" [{scope}]" if several_scopes else "")
                label += f" ({_seeds(rows)})" if len(rows) else " (no runs)"
                style = styles[criterion, scope]
                ax.plot(x, y, label=label, linewidth=2, markersize=5, **style)
                ax.fill_between(
                    x, y - spread, y + spread, color=style["color"], alpha=0.15, linewidth=0
                )
            ax.axhline(
                base_mean,
                color="0.4",
                linestyle=":",
                linewidth=1.5,
                label=f"unpruned ({base_mean:.4f})",
            )
            if base_std > 0:
                ax.axhspan(base_mean - base_std, base_mean + base_std, color="0.5", alpha=0.1)
            ax.plot([1.0], [base_mean], marker="D", color="0.4", linestyle="none")
            if stage == "finetuned":
                best = table[table[pareto]]
                ax.scatter(
                    best[f"{size}_mean"],
                    best[f"{accuracy}_mean"],
                    marker="o",
                    s=220,
                    facecolor="none",
                    edgecolor="black",
                    linewidth=1.6,
                    zorder=5,
                    label="ringed: Pareto-optimal (best accuracy for its size)",
                )
            what = "parameters" if size == "kept_params" else "multiply-adds"
            ax.set_title(f"{row_title}, vs. {what} kept", fontsize=11)
            ax.grid(alpha=0.3)
            if stage == "pruned":
                ax.set_xlabel(xlabel)
        row[0].set_ylabel("test accuracy (fraction correct)")

    title = f"{model} on {dataset}: test accuracy vs. size kept (mean ± 1 std over seeds)"
    if REFERENCE not in set(table["criterion"]):
        title += "\nno random-pruning runs in this sweep: no reference baseline to compare with"
    fig.suptitle(title, fontsize=13, fontweight="bold")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=min(len(labels), 4),
        fontsize=10,
        title="criterion: line = mean, band = ±1 std over seeds",
        title_fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_all(table: pd.DataFrame, runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    paths = []
    for (model, dataset), group in table.groupby(["model", "dataset"]):
        mine = runs[(runs["model"] == model) & (runs["dataset"] == dataset)]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"accuracy_{model}_{dataset}") + ".png"
        paths.append(plot_group(group, mine, out_dir / name))
    return paths


# ---------------------------------------------------------------- tables


def _cell(mean: float, std: float, digits: int) -> str:
    if pd.isna(mean):
        return "—"
    text = f"{mean:.{digits}f}"
    return text if pd.isna(std) or std == 0 else f"{text} ± {std:.{digits}f}"


MD_COLUMNS = (  # header, value, digits
    ("params kept", "kept_params", 3),
    ("MACs kept", "kept_macs", 3),
    ("compression", "compression", 2),
    ("speed-up", "speedup", 2),
    ("baseline acc", "baseline.test_accuracy", 4),
    ("pruned acc", "pruned.test_accuracy", 4),
    ("fine-tuned acc", "finetuned.test_accuracy", 4),
)


def markdown(
    table: pd.DataFrame, experiment: str, n_runs: int, notes: list[str], plots: list[Path]
) -> str:
    header = [
        "model",
        "dataset",
        "criterion",
        "scope",
        "psize",
        "seeds",
        *(h for h, _, _ in MD_COLUMNS),
        "Pareto",
    ]
    lines = [
        f"# Pruning report: experiment `{experiment}`",
        "",
        f"{n_runs} runs; mean ± sample standard deviation over seeds. Sizes are those of the "
        "fine-tuned model: non-zero parameters and multiply-adds, as fractions of the unpruned "
        "model's. Compression = unpruned params / non-zero params; speed-up = unpruned MACs / "
        "MACs. No ± means no spread (or one seed). Pareto: no other point of the same model x "
        "dataset keeps at most as many non-zero parameters with at least the same fine-tuned "
        "accuracy (one of the two strictly better).",
        "",
        *(f"- note: {note}" for note in notes),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for _, row in table.iterrows():
        cells = [
            row["model"],
            row["dataset"],
            row["criterion"],
            row["scope"],
            f"{row['psize']:g}",
            str(row["n_seeds"]),
        ]
        cells += [_cell(row[f"{v}_mean"], row[f"{v}_std"], d) for _, v, d in MD_COLUMNS]
        cells.append("yes" if row["pareto"] else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"![{p.stem}]({p.name})" for p in plots), ""]
    return "\n".join(lines)


def write_tables(table: pd.DataFrame, out_dir: Path, text: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / "report.csv", out_dir / "report.md"
    table.to_csv(csv, index=False, float_format="%.10g")
    md.write_text(text, encoding="utf-8")
    return csv, md


# ---------------------------------------------------------------- MLflow and the command


def log_report(
    tracking_uri: str, experiment: str, files: list[Path], description: str, params: dict[str, str]
) -> str:
    """A FINISHED run named `report`, tagged avlsi.report=true, holding `files`; its id."""
    client, experiment_id = open_experiment(tracking_uri, experiment)
    tags = {REPORT_TAG: "true", "mlflow.note.content": description}
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
) -> ReportResult:
    """Read the experiment's runs; write plots and tables to out_dir; log them to MLflow.

    Raises UserError for a missing store, an unknown experiment, a bad filter, or an
    experiment without finished pruning runs.
    """
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(experiment)
    runs, notes = load_runs(tracking_uri, experiment, filter_string)
    runs = add_ratios(runs)
    table = mark_pareto(aggregate(runs))
    for (model, dataset), group in table.groupby(["model", "dataset"]):
        if REFERENCE not in set(group["criterion"]):
            notes.append(f"{model} on {dataset} has no random-pruning runs to compare with")
    plots = plot_all(table, runs, out_dir)
    text = markdown(table, experiment, len(runs), notes, plots)
    csv, md = write_tables(table, out_dir, text)
    result = ReportResult(out_dir, csv, md, plots, table, len(runs), notes=notes)
    if log_to_mlflow:
        params = {"filter": filter_string or "(none)", "n_runs": str(len(runs))}
        result.run_id = log_report(tracking_uri, experiment, result.files, text, params)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m avlsi.report",
        description="Plots and tables of accuracy against size kept, from an experiment's "
        "pruning runs in MLflow; logged back as a run named 'report'.",
    )
    parser.add_argument(
        "--tracking-uri",
        default=configured_default("mlflow.tracking_uri"),
        help="MLflow tracking URI (default: %(default)s)",
    )
    parser.add_argument(
        "--experiment",
        default=configured_default("mlflow.experiment"),
        help="experiment name (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: <project>/reports/<experiment>)",
    )
    parser.add_argument(
        "--filter",
        default="",
        metavar="FILTER",
        help="MLflow search filter, e.g. \"params.model = 'cnn'\"",
    )
    parser.add_argument(
        "--no-log",
        action="store_true",
        help="only write the files, do not log a report run to MLflow",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        result = make_report(
            args.tracking_uri,
            args.experiment,
            args.out,
            log_to_mlflow=not args.no_log,
            filter_string=args.filter,
        )
    except UserError as err:
        print(f"avlsi: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(result.summary())


if __name__ == "__main__":
    main()
