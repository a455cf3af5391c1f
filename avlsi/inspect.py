"""The pruning groups of a model, as a table: what can be pruned, and why not.

    python run.py task=inspect model=cnn [dataset=...]
    python -m avlsi.inspect model=cnn [dataset=...]   (the same Hydra options)

Builds the model for the dataset's input shape and classes (no training) and prints one line
per group of coupled channels (see `avlsi.graph`): its producers and the other layers whose
weights change with it, its channels, its share of the model's multiply-adds, and whether it
can be pruned or why not.
"""

from __future__ import annotations

import re

from omegaconf import DictConfig

from avlsi.errors import UserError

MEMBERS_WIDTH = 64  # characters of the layers column; the rest is counted, not shown
USAGE = """\
usage: python -m avlsi.inspect [key=value ...]   (or: python run.py task=inspect [key=value ...])

Prints the pruning groups of a model built for a dataset's shape (nothing is trained).
Options are Hydra overrides of conf/config.yaml, e.g. model=cnn dataset=synthetic.
"""


def layers_cell(producers: tuple[str, ...], members: tuple[str, ...], width: int) -> str:
    """'conv1, conv2 | bn1, conv3' cut to `width` characters with a count of what is left."""
    others = [m for m in members if m not in producers]
    names = [*producers, *(["|"] if others else []), *others]
    shown: list[str] = []
    for i, name in enumerate(names):
        left = len([n for n in names[i:] if n != "|"])
        candidate = " ".join([*shown, name])
        if len(candidate) + len(f" (+{left} more)") > width and i < len(names) - 1:
            return " ".join(shown) + f" (+{left} more)"
        shown.append(name)
    return " ".join(shown)


def groups_table(model, groups, total_macs: int | None = None) -> str:
    """The groups as an aligned text table, a summary line first."""
    total = total_macs or sum(g.macs for g in groups) or 1
    prunable = [g for g in groups if g.prunable]
    share = sum(g.macs for g in prunable) / total
    lines = [
        f"model {model.name}: {len(groups)} groups of coupled channels, {len(prunable)} "
        f"prunable, holding {share:.1%} of the multiply-adds "
        f"({total:,} per input in all)",
        f"{'group':>5}  {'channels':>8}  {'MACs':>6}  {'prunable':<8}  "
        f"{'producers | other members':<{MEMBERS_WIDTH}}  why not",
    ]
    for g in groups:
        cell = layers_cell(g.producers, g.members, MEMBERS_WIDTH)
        lines.append(
            f"{g.index:>5}  {g.channels:>8}  {g.macs / total:>6.1%}  "
            f"{'yes' if g.prunable else 'no':<8}  {cell:<{MEMBERS_WIDTH}}  {g.reason}".rstrip()
        )
    refused = refused_layers(groups)
    if refused:
        lines.append(
            "layers the analysis cannot follow, which make the groups flowing in unprunable:"
        )
        for (kind, why), names in refused.items():
            example = f"'{names[0]}'" + (f" and {len(names) - 1} more" if len(names) > 1 else "")
            lines.append(f"  {kind} ({why}): {example}")
    members = {name for g in groups for name in g.members}
    outside: dict[str, list[str]] = {}
    for layer in model.layers:
        if layer.weights and layer.name not in members:
            outside.setdefault(type(layer).__name__, []).append(layer.name)
    if outside:
        lines.append("layers with weights in no group (never pruned):")
        for kind, names in outside.items():
            more = f" and {len(names) - 1} more" if len(names) > 1 else ""
            lines.append(f"  {kind}: '{names[0]}'{more}")
    return "\n".join(lines)


def refused_layers(groups) -> dict[tuple[str, str], list[str]]:
    """(layer type, why) -> the names of the layers that stopped a group, from the reasons."""
    found: dict[tuple[str, str], list[str]] = {}
    for g in groups:
        hit = re.match(
            r"flows into (\S+) '(.+)' which the analysis cannot follow \((.+)\)$", g.reason
        )
        if hit:
            kind, name, why = hit.groups()
            names = found.setdefault((kind, why), [])
            if name not in names:
                names.append(name)
    return found


def inspect_from_config(cfg: DictConfig) -> str:
    """Build cfg.model for cfg.dataset's shape and return its groups table."""
    from hydra.utils import get_method

    from avlsi.cli import quiet_tensorflow_import
    from avlsi.config import check_dataset, check_finite, check_known_keys

    check_known_keys(cfg)
    check_finite(cfg)
    check_dataset(cfg.dataset)
    quiet_tensorflow_import()
    from avlsi.graph import pruning_groups
    from avlsi.metrics import count_macs
    from avlsi.models import build_model

    data = get_method(cfg.dataset._target_)(cfg.dataset, seed=cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    try:
        groups = pruning_groups(model)
    except ValueError as err:
        raise UserError(f"model={cfg.model.name}: {err}") from None
    total = count_macs(model)
    header = f"input {'x'.join(map(str, data.input_shape))}, {data.num_classes} classes"
    return groups_table(model, groups, total).replace(":", f" ({header}):", 1)


def main(argv: list[str] | None = None) -> None:
    """`python -m avlsi.inspect key=value ...`: every mistake is one line."""
    from avlsi.cli import module_main

    module_main(argv, "inspect", "model=cnn", lambda: USAGE, inspect_from_config)


if __name__ == "__main__":
    main()
