"""Pruning schedules: iterative rounds (Han et al. 2015) and gradual magnitude pruning with
the polynomial sparsity schedule of Zhu & Gupta (2017).

`iterative`: round r of R prunes to the r-th step towards psize, counted on the ORIGINAL
model (linear: r/R x psize; geometric: 1 - (1 - psize)^(r/R), each round the same share of
what is left), scoring the current model again (so data-driven criteria see the pruned
network), then fine-tunes `schedule.epochs_per_round` epochs with the finetune.* settings;
the last round's fine-tuning is the job's usual fine-tune step. The final unit counts equal
a one-shot prune's at the same psize. `gradual`: the masks of `criterion=magnitude` are
recomputed every `frequency` fine-tuning steps by a callback (`GradualPruning`); between
updates they are held by a variable constraint, one multiply per kernel per step, as the
one-shot mask is (avlsi/masking.py).

Each round logs `round.*` metrics with `step=round` in the job's MLflow run.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from avlsi.schedule_checks import schedule_name
from avlsi.select import lowest_within_caps, n_to_remove, normalise, share_of

log = logging.getLogger(__name__)

__all__ = [
    "GradualPruning",
    "first_psize",
    "polynomial_sparsity",
    "prune_iteratively",
    "round_fractions",
    "schedule_name",
]


def round_fractions(psize: float, rounds: int, steps: str = "geometric") -> list[float]:
    """The fraction of the original units / weights pruned after each round (last = psize)."""
    steps = str(getattr(steps, "value", steps))
    if steps == "linear":
        found = [psize * r / rounds for r in range(1, rounds + 1)]
    else:
        found = [1 - (1 - psize) ** (r / rounds) for r in range(1, rounds + 1)]
    found[-1] = psize  # exactly what the user typed (share_of reads its decimal)
    return [round(f, 12) for f in found]


def first_psize(cfg: DictConfig) -> float | None:
    """What the prune step removes: psize (oneshot), the initial sparsity (gradual, tfmot;
    None when 0: nothing is pruned before fine-tuning)."""
    if schedule_name(cfg) in ("gradual", "tfmot"):
        initial = float(cfg.schedule.initial_sparsity)
        return initial if initial > 0 else None
    return float(cfg.psize)


# --- iterative ---------------------------------------------------------------------------


def _group_goals(original: dict[str, int], fraction: float, criterion, psize: float):
    """Units each group has lost in all once the round is done (layer / layerwise scope)."""
    ratios = dict(criterion.get("ratios") or {})
    goals = {}
    for name, count in original.items():
        share = ratios.get(name, psize) * fraction / psize
        goals[name] = n_to_remove(round(share, 12), count, criterion.min_units)
    return goals


def structured_round_units(
    per_group: dict[str, np.ndarray],
    original: dict[str, int],
    fraction: float,
    criterion,
    psize: float,
) -> dict[str, list[int]]:
    """Indices each group (keyed by its first producer) loses this round, lowest scores first,
    so that `fraction` of its ORIGINAL units (`global`: of all the groups' units) are gone."""
    current = {name: len(s) for name, s in per_group.items()}
    removed = {name: original[name] - current[name] for name in per_group}
    scope = str(getattr(criterion.scope, "value", criterion.scope))
    if scope != "global":
        goals = _group_goals({n: original[n] for n in per_group}, fraction, criterion, psize)
        return {
            name: sorted(
                np.argsort(s, kind="stable")[: max(0, goals[name] - removed[name])].tolist()
            )
            for name, s in per_group.items()
        }
    names = list(per_group)
    flat = np.concatenate([normalise(per_group[n], criterion.normalize) for n in names])
    owner = np.repeat(np.arange(len(names)), [current[n] for n in names])
    index = np.concatenate([np.arange(current[n]) for n in names])
    caps = [max(0, current[n] - criterion.min_units) for n in names]
    budget = share_of(fraction, sum(original.values())) - sum(removed.values())
    chosen: dict[str, list[int]] = {n: [] for n in names}
    for pos in lowest_within_caps(flat, owner, caps, budget):
        chosen[names[owner[pos]]].append(int(index[pos]))
    return {name: sorted(idx) for name, idx in chosen.items()}


def _prune_structured_round(job, model, fraction: float, original: dict[str, int]):
    from avlsi.criteria import get_scorer
    from avlsi.targets import group_scores, prune_targets

    criterion = job.cfg.criterion
    targets = prune_targets(model, criterion)
    scores = get_scorer(criterion)(model, targets.layers, job.scoring_context())
    per_group = group_scores(scores, targets.groups, criterion.group_reduce)
    chosen = structured_round_units(per_group, original, fraction, criterion, job.cfg.psize)
    units = {p: chosen[g.producers[0]] for g in targets.groups for p in g.producers}
    units = {name: idx for name, idx in units.items() if idx}
    if not units:
        return model
    removed = sum(len(v) for v in units.values())
    return job.surgery(model, units, f"removing {removed} units from {len(units)} layers")


def _prune_masked_round(job, model, fraction: float, layer_names: list[str], masks: dict):
    from avlsi import masking

    criterion = job.cfg.criterion
    new = masking.magnitude_masks(
        [model.get_layer(name) for name in layer_names],
        criterion.scope,
        fraction,
        None,
        criterion.normalize,
        criterion.min_units,
    )
    masks = {name: new[name] & masks[name] if name in masks else new[name] for name in new}
    masking.apply_masks(model, masks)
    return masks


def log_round(job, model, step: int, fraction: float, when: str) -> None:
    """`round.*` metrics of `model` (step = round): right after its prune (`when="pruned"`:
    size, target sparsity, accuracy) or after its fine-tuning (`when="tuned"`: accuracy)."""
    from avlsi import record, train
    from avlsi.metrics import size_metrics

    acc = "pruned_" if when == "pruned" else ""
    metrics = {f"round.{acc}test_accuracy": train.evaluate(model, job.data)}
    if job.data.y_val is not None and len(job.data.y_val):
        metrics[f"round.{acc}val_accuracy"] = train.evaluate(model, job.data, split="val")
    if when == "pruned":
        metrics.update(size_metrics(model, "round"))
        metrics["round.sparsity"] = fraction
        base = job.metrics.get("baseline.params")
        if base:
            metrics["round.kept_params"] = metrics["round.nonzero_params"] / base
    record.log_metrics(metrics, step=step)


def prune_iteratively(job, model, targets):
    """Rounds 1..R of prune (+ fine-tune but for the last): returns (model, masked layers)."""
    from avlsi.pipeline import _copy, _epochs, heading

    cfg = job.cfg
    schedule, criterion = cfg.schedule, cfg.criterion
    fractions = round_fractions(float(cfg.psize), schedule.rounds, schedule.steps)
    original = {g.producers[0]: g.channels for g in targets.groups}
    layer_names = [layer.name for layer in targets.layers]
    current, masks = _copy(model), {}
    settings = OmegaConf.merge(cfg.finetune, {"epochs": schedule.epochs_per_round})
    for r, fraction in enumerate(fractions, start=1):
        what = "units" if criterion.structured else "weights"
        heading(
            f"round {r} of {len(fractions)}: pruning to {fraction:.2%} of the {what} "
            f"({criterion.name})"
        )
        if criterion.structured:
            current = _prune_structured_round(job, current, fraction, original)
        else:
            masks = _prune_masked_round(job, current, fraction, layer_names, masks)
        log_round(job, current, r, fraction, "pruned")
        if r == len(fractions):
            break
        if str(cfg.finetune.init) == "rewind":
            from avlsi.rewind import rewind

            rewind(job, current, masks)
        if schedule.epochs_per_round > 0:
            heading(f"round {r}: fine-tuning ({_epochs(schedule.epochs_per_round)})")
            job.fit(current, settings, phase=f"round{r}")
        log_round(job, current, r, fraction, "tuned")
    return current, list(masks)


# --- gradual -----------------------------------------------------------------------------


def polynomial_sparsity(step: int, initial: float, final: float, begin: int, end: int) -> float:
    """Zhu & Gupta's s(t) = final + (initial - final) (1 - (t - begin) / (end - begin))^3."""
    progress = min(1.0, max(0.0, (step - begin) / (end - begin)))
    return final + (initial - final) * (1.0 - progress) ** 3


def gradual_end(cfg: DictConfig, train_size: int) -> int:
    """The step at which psize is reached: schedule.end_step, else the last fine-tuning step."""
    if cfg.schedule.end_step is not None:
        return int(cfg.schedule.end_step)
    return cfg.finetune.epochs * math.ceil(train_size / cfg.finetune.batch_size) - 1


class VariableMask:
    """A constraint `w -> w * mask` whose mask is a variable the callback re-assigns."""

    def __init__(self, variable) -> None:
        self.mask = variable

    def __call__(self, weight):
        return weight * tf.cast(self.mask, weight.dtype)


class GradualPruning(tf.keras.callbacks.Callback):
    """Raises the sparsity of `layers`' kernels along the polynomial schedule: at steps
    begin, begin + frequency, ... and at end, magnitude masks for s(t) (scope and min_units
    of the criterion) replace the held ones; `on_update(step, sparsity, nonzero)` is told."""

    def __init__(self, layers, criterion, final: float, schedule, end: int, on_update=None):
        super().__init__()
        self.layers, self.criterion, self.final = list(layers), criterion, final
        self.initial, self.begin = float(schedule.initial_sparsity), int(schedule.begin_step)
        self.frequency, self.end = int(schedule.frequency), end
        self.on_update = on_update
        self.step, self.updates, self.variables = 0, 0, {}

    def on_train_begin(self, logs=None) -> None:
        for layer in self.layers:
            kernel = layer.kernel
            start = (kernel.numpy() != 0).astype(np.float32)  # an initial prune's zeros stay
            self.variables[layer.name] = tf.Variable(start, trainable=False, dtype=tf.float32)
            kernel._constraint = VariableMask(self.variables[layer.name])

    def due(self, step: int) -> bool:
        if not self.begin <= step <= self.end:
            return False
        return (step - self.begin) % self.frequency == 0 or step == self.end

    def on_train_batch_begin(self, batch, logs=None) -> None:
        if self.due(self.step):
            self.update(polynomial_sparsity(self.step, self.initial, self.final, self.begin,
                                            self.end))  # fmt: skip
        self.step += 1

    def on_train_end(self, logs=None) -> None:
        if self.step <= self.end:  # fewer steps than end_step: psize is still the result
            self.update(self.final)

    def update(self, sparsity: float) -> None:
        from avlsi.masking import magnitude_masks

        masks = magnitude_masks(
            self.layers,
            self.criterion.scope,
            round(sparsity, 12),
            None,
            self.criterion.normalize,
            self.criterion.min_units,
        )
        nonzero = 0
        for layer in self.layers:
            held = self.variables[layer.name]
            mask = masks[layer.name] & (held.numpy() != 0)
            held.assign(mask.astype(np.float32))
            layer.kernel.assign(layer.kernel * mask.astype(np.float32))
            nonzero += int(mask.sum())
        self.updates += 1
        if self.on_update is not None:
            self.on_update(self.updates, sparsity, nonzero)


def gradual_callback(job, model):
    """The GradualPruning callback of a gradual job, logging `round.*` per mask update."""
    from avlsi import record
    from avlsi.targets import prune_targets

    cfg = job.cfg
    layers = prune_targets(model, cfg.criterion).layers
    total = sum(int(np.prod(layer.kernel.shape)) for layer in layers)

    def on_update(update: int, sparsity: float, nonzero: int) -> None:
        record.log_metrics(
            {"round.sparsity": sparsity, "round.kernel_nonzero": nonzero,
             "round.kernel_weights": total},
            step=update,
        )  # fmt: skip

    end = gradual_end(cfg, len(job.data.y_train))
    return GradualPruning(layers, cfg.criterion, float(cfg.psize), cfg.schedule, end, on_update)
