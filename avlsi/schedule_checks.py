"""Checks of schedule=, finetune.init=rewind, finetune.lr_schedule=rewind and
criterion.ratios, before TensorFlow loads (called by avlsi.config.check_config)."""

from __future__ import annotations

from omegaconf import DictConfig

from avlsi.errors import UserError, clip


def _value(node) -> str:
    return str(getattr(node, "value", node))


def schedule_name(cfg: DictConfig) -> str:
    """oneshot, iterative, gradual or tfmot (oneshot for a config without a schedule)."""
    schedule = cfg.get("schedule")
    return "oneshot" if schedule is None else _value(schedule.name)


def check_schedule(cfg: DictConfig) -> None:
    """One line for a schedule, rewinding or ratio setting that cannot work."""
    name, schedule, criterion = schedule_name(cfg), cfg.get("schedule"), cfg.criterion
    if name != "oneshot":
        if not criterion.prunes:
            raise UserError(f"schedule={name} needs a criterion that prunes, not {criterion.name}")
        if criterion.threshold is not None:
            raise UserError(
                f"schedule={name} spreads psize over the fine-tuning; criterion.threshold "
                "prunes once: drop criterion.threshold (or use schedule=oneshot)"
            )
    if name == "iterative" and schedule.rounds < 1:
        raise UserError(f"schedule.rounds={schedule.rounds} must be at least 1, e.g. 3")
    if name == "iterative" and schedule.epochs_per_round < 0:
        raise UserError(f"schedule.epochs_per_round={schedule.epochs_per_round} must be >= 0")
    if name in ("gradual", "tfmot"):
        if criterion.structured:
            raise UserError(
                f"schedule={name} raises the sparsity of single weights during fine-tuning: it "
                f"needs criterion=magnitude, not {criterion.name} (schedule=iterative prunes units)"
            )
        if not 0 <= schedule.initial_sparsity < cfg.psize:
            raise UserError(
                f"schedule.initial_sparsity={schedule.initial_sparsity} must be in [0, psize="
                f"{cfg.psize})"
            )
        if schedule.frequency < 1 or schedule.begin_step < 0:
            raise UserError("schedule.frequency must be >= 1 and schedule.begin_step >= 0")
        end = schedule.end_step
        if end is not None and end <= schedule.begin_step:
            raise UserError(
                f"schedule.end_step={end} must be after schedule.begin_step={schedule.begin_step}"
            )
    check_rewind(cfg)
    check_ratios(cfg)


def check_rewind(cfg: DictConfig) -> None:
    finetune = cfg.finetune
    if _value(cfg.train.lr_schedule) == "rewind":
        raise UserError(
            "train.lr_schedule=rewind is for fine-tuning only (finetune.lr_schedule=rewind "
            "replays train's rates); pass train.lr_schedule=constant or cosine"
        )
    if _value(finetune.init) != "rewind":
        return
    if cfg.criterion.structured or not cfg.criterion.prunes:
        raise UserError(
            "finetune.init=rewind resets the kept weights to their earlier values, which needs "
            f"criterion=magnitude (weights keep their places), not {cfg.criterion.name}"
        )
    if not 0 <= finetune.rewind_epoch <= cfg.train.epochs:
        raise UserError(
            f"finetune.rewind_epoch={finetune.rewind_epoch} must be in 0..train.epochs="
            f"{cfg.train.epochs} (0: the initial weights)"
        )


def check_ratios(cfg: DictConfig) -> None:
    ratios = cfg.criterion.get("ratios")
    if not ratios:
        return
    if not cfg.criterion.structured:
        raise UserError(
            "criterion.ratios (a psize per group) applies to structured criteria (l1, taylor, "
            f"...), not {cfg.criterion.name}"
        )
    if _value(cfg.criterion.scope) != "layerwise":
        raise UserError(
            "criterion.ratios (a psize per group) applies to criterion.scope=layerwise only"
        )
    for name, ratio in ratios.items():
        if not 0 <= ratio < 1:
            raise UserError(f"criterion.ratios.{clip(name)}={ratio} must be in [0, 1)")
