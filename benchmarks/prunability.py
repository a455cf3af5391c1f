"""Which keras.applications models AVLSI can prune: the prunability table of issues 9 and 10.

    .venv/bin/python benchmarks/prunability.py                     # all 12 models, 96x96x3
    .venv/bin/python benchmarks/prunability.py --models MobileNetV2,ResNet50 --size 64
    .venv/bin/python benchmarks/prunability.py --keras 3           # Keras 3 only

Every model is measured in each Keras of `--keras` (default both): tf-keras (2), pruned by
the kerassurgeon engine as a job does by default, and Keras 3 (3), pruned by the native engine
(`avlsi.surgery`'s "auto"). A table per Keras, then one that puts them side by side.

Each model is built with `weights=None` for `--size`x`--size`x3 inputs and 10 classes (a
model that refuses that size is built at the smallest of 96, 128, ..., 224 it accepts, and
the table says so), with logits as outputs (`classifier_activation=None`) and its
normalization statistics, scales and biases drawn at random (`unsettle`): at Keras'
initial values (mean 0, variance 1, scale 1, bias 0, ConvNeXt's layer scale 1e-6) the
outputs of these models are near-constant (MobileNet's logits are ~1e-17 for any input),
and the equivalence check below would pass whichever channels were cut (measured: with
shifted channel indices it still gave 0.0; after `unsettle`, 0.9).

Then, as a `criterion=l1 criterion.scope=layerwise psize=0.3` job does: the pruning groups
(`avlsi.graph.pruning_groups`); the groups the job would prune (`avlsi.targets.
prune_targets`: every prunable group but the first conv's and the outputs'); l1 scores
(sum |kernel| per output unit, averaged over a group's producers); 30% of each group's
channels removed in one surgery (`avlsi.surgery.delete_units`); the equivalence check
(`avlsi.graph.equivalence_error` <= 1e-5); the pruned model saved to `.keras`, reloaded
and run (its outputs must equal the pruned model's); Keras 3 models reload with plain
`keras.saving.load_model`, no custom objects. A model that fails a step is a row
with the step and the message, e.g. the surgery's refusal naming the layer; an exception
that is not a clean `avlsi` error is marked NOT CLEAN with its type and source line.

Columns: groups prunable / found; `prunable params` = share of the parameters in layers
that are members of a prunable group (their weights change when its channels go); params
and multiply-adds (`avlsi.metrics`) before -> after and the fraction kept; the equivalence
error; seconds for the whole row (build to reload); seconds of the surgery alone. MACs
show "-" where `avlsi.metrics` cannot count the model (Keras 3 before it learns to).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow loads (avlsi does too)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's avlsi first

MODELS = (
    "VGG16",
    "ResNet50",
    "ResNet50V2",
    "MobileNet",
    "MobileNetV2",
    "MobileNetV3Small",
    "DenseNet121",
    "EfficientNetB0",
    "Xception",
    "NASNetMobile",
    "ConvNeXtTiny",
    "InceptionV3",
)
FALLBACK_SIZES = (96, 128, 160, 192, 224)
TOLERANCE = 1e-5  # the equivalence bound (relative)


@dataclass
class Row:
    """One model's line of the table; `error` names the step that failed and why."""

    model: str
    keras: int = 2  # 2: tf-keras, 3: Keras 3
    engine: str = ""
    size: int = 0
    note: str = ""
    groups: int = 0
    prunable: int = 0
    pruned_groups: int = 0
    prunable_params: float = 0.0
    params: int = 0
    params_after: int = 0
    macs: int = 0
    macs_after: int = 0
    coverage: float = 0.0
    refusals: dict[str, int] = field(default_factory=dict)  # why groups are not prunable
    equivalence: float = float("nan")
    reloaded: bool = False
    error: str = ""
    seconds: float = 0.0
    surgery_seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.error and self.reloaded and self.equivalence <= TOLERANCE


def build(name: str, size: int, classes: int = 10, keras_version: int = 2, **kwargs):
    """`keras.applications.<name>` (tf-keras for 2, Keras 3 for 3) with no weights for size x
    size x 3 inputs, or at the smallest FALLBACK_SIZES size it accepts; returns (model, size
    used, note)."""
    from avlsi.kerasapi import keras_module

    constructor = getattr(keras_module(keras_version).applications, name)
    first_error = None
    for tried in (size, *(s for s in FALLBACK_SIZES if s > size)):
        try:
            model = constructor(
                input_shape=(tried, tried, 3),
                weights=None,
                classes=classes,
                classifier_activation=None,
                **kwargs,
            )
        except ValueError as error:
            first_error = first_error or error
            continue
        note = "" if tried == size else f"built at {tried}x{tried}: {size} refused ({first_error})"
        return model, tried, note
    raise first_error


def unsettle(model, seed: int = 0) -> None:
    """Random normalization statistics, scales and biases, as training would leave them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    scales = ("gamma", "moving_variance")  # variable names of both Kerases' own layers
    shifts = ("beta", "moving_mean", "bias")
    for variable in model.weights:
        name = variable.name.split("/")[-1].split(":")[0]
        if name in scales:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
        elif name in shifts:
            variable.assign(rng.normal(0.0, 0.2, variable.shape).astype("float32"))
    for layer in model.layers:  # ConvNeXt's layer scale (Keras 3 names it `variable`)
        if type(layer).__name__ == "LayerScale":
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in layer.get_weights()])


def l1_criterion():
    """The `criterion=l1 criterion.scope=layerwise` section of the real config schema."""
    from omegaconf import OmegaConf

    from avlsi.config import CriterionConfig

    return OmegaConf.structured(
        CriterionConfig(_target_="avlsi.criteria.l1.score", name="l1", scope="layerwise")
    )


def member_params(model, groups) -> int:
    """Parameters of the layers that belong to at least one prunable group."""
    names = {name for g in groups if g.prunable for name in g.members}
    return sum(model.get_layer(name).count_params() for name in names)


def prune_l1(model, psize: float):
    """What a `criterion=l1` layerwise job removes, and the pruned model (the engine a job
    uses by default: kerassurgeon for tf-keras, native for Keras 3)."""
    from avlsi.criteria.l1 import score
    from avlsi.surgery import delete_units
    from avlsi.targets import prune_targets, select_group_units

    criterion = l1_criterion()
    targets = prune_targets(model, criterion)
    scores = score(model, targets.layers, None)
    units = select_group_units(scores, targets, criterion, psize)
    return targets, units, delete_units(model, units)


def own_classes(model) -> dict[str, type]:
    """The model's layer classes from outside Keras' layers (e.g. ConvNeXt's LayerScale)."""
    builtin = ("tf_keras.src.layers.", "tf_keras.src.engine.", "keras.src.layers.")
    return {
        type(layer).__name__: type(layer)
        for layer in model.layers
        if not type(layer).__module__.startswith(builtin)
    }


def reload_and_run(pruned, folder: Path) -> str:
    """Save to .keras, load (safe mode), check the reloaded model computes the same; returns
    a note when loading needed `custom_objects` (tf-keras cannot reload its own ConvNeXt
    without them, pruned or not; Keras 3 gets no such help)."""
    import numpy as np

    from avlsi.kerasapi import is_keras3, keras_of

    keras = keras_of(pruned)
    path = folder / f"{pruned.name}.keras"
    pruned.save(path)
    note = ""
    try:
        loaded = keras.saving.load_model(path, compile=False)
    except Exception:
        custom = own_classes(pruned)
        if not custom or is_keras3(pruned):
            raise
        loaded = keras.saving.load_model(path, compile=False, custom_objects=custom)
        note = f"reloaded with custom_objects={{{', '.join(custom)}}}"
    x = np.random.default_rng(1).standard_normal((2, *pruned.input_shape[1:]), dtype=np.float32)
    want, got = pruned(x, training=False), loaded(x, training=False)
    if not np.allclose(np.asarray(want), np.asarray(got), rtol=1e-5, atol=1e-6):
        raise AssertionError("the reloaded model computes something else than the pruned one")
    return note


def macs_of(model):
    """`avlsi.metrics.macs_report(model)`, or None for a Keras 3 model it cannot count yet."""
    from avlsi.kerasapi import is_keras3
    from avlsi.metrics import macs_report

    if not is_keras3(model):
        return macs_report(model)
    try:
        report = macs_report(model)
    except Exception:  # noqa: BLE001 - the counter does not know Keras 3 (yet)
        return None
    return report if report.total else None


def measure(name: str, size: int = 96, psize: float = 0.3, keras_version: int = 2, **kwargs):
    """Build, analyse, prune, check, save and reload one model; a failure is a row too."""
    from avlsi.errors import UserError
    from avlsi.graph import equivalence_error, pruning_groups
    from avlsi.kerasapi import keras_module
    from avlsi.metrics import count_params
    from avlsi.surgery import resolve_engine

    start = time.perf_counter()
    row = Row(name, keras=keras_version)
    step = "build"
    try:
        keras_module(keras_version).backend.clear_session()
        model, row.size, row.note = build(name, size, keras_version=keras_version, **kwargs)
        row.engine = resolve_engine(model, "auto")
        unsettle(model)
        before = macs_of(model)
        row.params = count_params(model)
        if before is not None:
            row.macs, row.coverage = before.total, before.coverage
        step = "graph"
        groups = pruning_groups(model)
        row.groups, row.prunable = len(groups), sum(g.prunable for g in groups)
        row.prunable_params = member_params(model, groups) / max(1, row.params)
        row.refusals = dict(Counter(g.reason for g in groups if not g.prunable))
        step = "prune"
        surgery_start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # kerassurgeon prints every layer
            targets, units, pruned = prune_l1(model, psize)
        row.surgery_seconds = time.perf_counter() - surgery_start
        row.pruned_groups = len(targets.groups)
        after = macs_of(pruned)
        row.params_after, row.macs_after = count_params(pruned), after.total if after else 0
        step = "equivalence"
        row.equivalence = equivalence_error(model, pruned, units, samples=2, seed=0)
        step = "save/reload"
        with tempfile.TemporaryDirectory() as folder:
            row.note = "; ".join(filter(None, [row.note, reload_and_run(pruned, Path(folder))]))
        row.reloaded = True
    except UserError as error:  # SurgeryError included: a clean refusal naming the layer
        row.error = f"{step}: {error}"
    except Exception as error:  # noqa: BLE001 - a crash is a row of the table, not the end
        where = traceback.extract_tb(error.__traceback__)[-1]
        row.error = (
            f"{step}: NOT CLEAN {type(error).__name__}: {error} "
            f"({Path(where.filename).name}:{where.lineno})"
        )
    row.seconds = time.perf_counter() - start
    return row


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _before_after(before: int, after: int) -> str:
    if not before:
        return "-"
    if not after:
        return f"{_millions(before)} -> -"
    return f"{_millions(before)} -> {_millions(after)} ({after / before:.2f})"


def _coverage(r: Row) -> str:
    return f"{r.coverage:.3f}" if r.macs else "-"


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table, then one line per failure or note."""
    header = (
        "| model | input | groups prunable / found | pruned groups | prunable params "
        "| params before -> after (kept) | MACs before -> after (kept) | MACs coverage "
        "| equivalence | reload | seconds | surgery s |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.size or ''} | {r.prunable} / {r.groups} | {r.pruned_groups} "
            f"| {r.prunable_params:.0%} | {_before_after(r.params, r.params_after)} "
            f"| {_before_after(r.macs, r.macs_after)} | {_coverage(r)} "
            f"| {r.equivalence:.1e} | {'ok' if r.reloaded else 'FAIL'} | {r.seconds:.0f} "
            f"| {r.surgery_seconds:.1f} |"
        )
    passed = sum(r.passed for r in rows)
    lines.append("")
    lines.append(f"{passed} of {len(rows)} models pass (equivalence <= {TOLERANCE:g}, reload ok).")
    for r in rows:
        if r.note:
            lines.append(f"- {r.model}: {r.note}")
        if r.refusals:
            outputs = [why for why in r.refusals if "model's outputs" in why]
            reasons = [why for why in r.refusals if why not in outputs][:2] or outputs
            lines.append(
                f"- {r.model}: {sum(r.refusals.values())} groups not prunable, e.g. "
                + "; ".join(reasons)
            )
        if r.error:
            lines.append(f"- {r.model} failed at {' '.join(r.error.split())}")
    return "\n".join(lines)


KERAS_NAMES = {2: "tf-keras", 3: "Keras 3"}


def _kept(before: int, after: int) -> str:
    return f"{after / before:.2f}" if before and after else "-"


def _summary(r: Row | None) -> list[str]:
    if r is None:
        return ["", "", "", ""]
    if not r.passed:
        step = r.error.split(":")[0] if r.error else "check"
        return [f"{r.prunable} / {r.groups}", "-", "-", f"FAIL ({step})"]
    return [
        f"{r.prunable} / {r.groups}",
        _kept(r.params, r.params_after),
        _kept(r.macs, r.macs_after),
        f"{r.equivalence:.1e}, {r.surgery_seconds:.1f} s",
    ]


def side_by_side(rows: list[Row]) -> str:
    """One line per model: groups prunable / found, params and MACs kept, equivalence and
    surgery seconds, in tf-keras (kerassurgeon engine) and in Keras 3 (native engine)."""
    versions = sorted({r.keras for r in rows})
    by = {(r.model, r.keras): r for r in rows}
    names = list(dict.fromkeys(r.model for r in rows))
    header = ["model"]
    for v in versions:
        engine = next((r.engine for r in rows if r.keras == v and r.engine), "")
        label = f"{KERAS_NAMES[v]} ({engine})" if engine else KERAS_NAMES[v]
        header += [f"{label}: prunable / found", "params kept", "MACs kept", "equivalence, surgery"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        cells = [name]
        for v in versions:
            cells += _summary(by.get((name, v)))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for v in versions:
        mine = [r for r in rows if r.keras == v]
        passed = sum(r.passed for r in mine)
        lines.append(f"{KERAS_NAMES[v]}: {passed} of {len(mine)} models pass.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    parser.add_argument("--size", type=int, default=96, help="input height and width")
    parser.add_argument("--psize", type=float, default=0.3, help="share of each group to remove")
    parser.add_argument("--keras", default="2,3", help="2 (tf-keras), 3 (Keras 3) or 2,3")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    versions = [v.strip() for v in args.keras.split(",") if v.strip()]
    if not versions or any(v not in ("2", "3") for v in versions):
        print(f"avlsi: error: --keras takes 2, 3 or 2,3, not {args.keras!r}", file=sys.stderr)
        return 2
    from avlsi.kerasapi import keras_module

    unknown = [n for n in names if not hasattr(keras_module(2).applications, n)]
    if unknown:
        print(f"avlsi: error: not in keras.applications: {', '.join(unknown)}", file=sys.stderr)
        return 2
    rows = []
    for version in map(int, versions):
        for name in names:
            row = measure(name, args.size, args.psize, keras_version=version)
            state = "ok" if row.passed else "FAIL"
            print(f"{name} ({KERAS_NAMES[version]}): {state} in {row.seconds:.0f} s", flush=True)
            rows.append(row)
    for version in map(int, versions):
        engine = next((r.engine for r in rows if r.keras == version and r.engine), "?")
        print(f"\n{KERAS_NAMES[version]}, {engine} engine:\n")
        print(table([r for r in rows if r.keras == version]))
    if len(versions) > 1:
        print("\nSide by side:\n")
        print(side_by_side(rows))
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
