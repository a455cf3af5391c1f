"""Do the two surgery engines agree on keras.applications models, and how fast is each?

    .venv/bin/python benchmarks/engines.py                           # all 12 models, 96x96x3
    .venv/bin/python benchmarks/engines.py --models MobileNetV2 --repeat 3

Each model is built, unsettled and given the l1 30% layerwise selection exactly as in
benchmarks/prunability.py, in tf-keras; then pruned by the kerassurgeon engine and by the
native engine. They agree when every weight array of every layer is equal and the outputs
differ by at most 1e-6. The same model is then built in Keras 3 and pruned by the native
engine (kerassurgeon cannot run there). Surgery times are wall seconds (CPU seconds of the
process) of the fastest of `--repeat` runs of `delete_units` alone (selection excluded).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow loads (avlsi does too)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's avlsi first

import prunability  # noqa: E402


def selection(model, psize: float) -> dict[str, list[int]]:
    from avlsi.criteria.l1 import score
    from avlsi.targets import prune_targets, select_group_units

    criterion = prunability.l1_criterion()
    targets = prune_targets(model, criterion)
    return select_group_units(score(model, targets.layers, None), targets, criterion, psize)


def timed(model, units, engine: str, repeat: int):
    """("wall s (CPU s)" of the fastest of `repeat` surgeries, pruned model). CPU seconds of
    this process (all threads) are steadier than wall seconds on a shared machine."""
    from avlsi.surgery import delete_units

    best, pruned = (float("inf"), 0.0), None
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):  # kerassurgeon prints every layer
            pruned = delete_units(model, units, engine=engine)
        best = min(best, (time.perf_counter() - start, time.process_time() - cpu))
    return f"{best[0]:.2f} ({best[1]:.2f})", pruned


def differences(model, a, b) -> tuple[int, float]:
    """(weight arrays that differ, max |output a - output b|)."""
    import numpy as np

    differ = 0
    for layer in model.layers:
        want = a.get_layer(layer.name).get_weights()
        got = b.get_layer(layer.name).get_weights()
        differ += abs(len(want) - len(got))
        differ += sum(
            w.shape != g.shape or not np.array_equal(w, g) for w, g in zip(want, got, strict=False)
        )
    x = np.random.default_rng(1).standard_normal((2, *model.input_shape[1:]), dtype=np.float32)
    out = float(np.max(np.abs(np.asarray(a(x, training=False)) - np.asarray(b(x, training=False)))))
    return differ, out


def row(name: str, size: int, psize: float, repeat: int) -> str:
    from avlsi.errors import UserError

    cells = [name]
    try:
        model, _, _ = prunability.build(name, size)
        prunability.unsettle(model)
        units = selection(model, psize)
        slow, by_kerassurgeon = timed(model, units, "kerassurgeon", repeat)
        fast, by_native = timed(model, units, "native", repeat)
        differ, out = differences(model, by_kerassurgeon, by_native)
        agree = "yes" if not differ and out <= 1e-6 else f"NO ({differ} arrays differ)"
        cells += [f"{len(units)}", agree, f"{out:.1e}", slow, fast]
    except UserError as error:
        cells += ["-", f"refused: {error}", "-", "-", "-"]
    try:
        model3, _, _ = prunability.build(name, size, keras_version=3)
        prunability.unsettle(model3)
        seconds, _ = timed(model3, selection(model3, psize), "native", repeat)
        cells.append(seconds)
    except UserError as error:
        cells.append(f"refused: {error}")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(prunability.MODELS))
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--psize", type=float, default=0.3)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    lines = [
        "| model | producers pruned | engines agree (tf-keras) | max output difference "
        "| kerassurgeon s (CPU) | native s (CPU), tf-keras | native s (CPU), Keras 3 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in (n.strip() for n in args.models.split(",") if n.strip()):
        lines.append(row(name, args.size, args.psize, args.repeat))
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
