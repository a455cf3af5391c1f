"""Will it fit? The memory a model needs to train, estimated before it is built, against the
memory this machine (or this container) has available.

Training holds the weights, Adam's two slots per weight and the gradients (4 float32 copies
of the parameters), plus every layer's output for one batch and as much again for their
gradients. TensorFlow frees some of that early and adds its own overhead, so the estimate is
a floor: what is refused here could never have run; what passes may still be tight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from avlsi.errors import UserError

FLOAT_BYTES = 4
PARAM_COPIES = 4  # weights, gradients, Adam's first and second moments
STACK_BUILDER = "avlsi.models.stack.build"


@dataclass
class Estimate:
    params: int  # trainable and non-trainable parameters
    activations: int  # float32 layer outputs of one example, summed over layers

    def training_bytes(self, batch: int) -> int:
        weights = PARAM_COPIES * self.params
        activations = 2 * batch * self.activations  # outputs and their gradients
        return FLOAT_BYTES * (weights + activations)


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo, lowered to the cgroup's limit when there is one;
    None where neither can be read (not Linux)."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v2: a container's or a SLURM job's own limit
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def describe_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def stack_estimate(cfg, input_shape: tuple[int, ...], num_classes: int) -> Estimate:
    """Parameters and per-example activations of `avlsi.models.stack.build`, from its config
    alone (layer by layer as the builder makes them, without building anything)."""
    params, activations = 0, 0
    shape = list(input_shape)
    norms = 1 if cfg.batch_norm else 0
    for i, filters in enumerate(cfg.conv_filters):
        height, width, channels = shape
        params += cfg.kernel_size**2 * channels * filters + filters + 4 * filters * norms
        shape = [height, width, filters]  # padding="same"
        activations += (2 + norms) * math.prod(shape)  # conv, (batch norm,) relu
        if cfg.pool_every and (i + 1) % cfg.pool_every == 0:
            shape = [height // 2, width // 2, filters]
            activations += (1 + (1 if cfg.dropout else 0)) * math.prod(shape)
    width = math.prod(shape)
    if len(shape) > 1:
        activations += width  # flatten
    for units in cfg.dense_units:
        params += width * units + units + 4 * units * norms
        activations += (2 + norms + (1 if cfg.dropout else 0)) * units
        width = units
    params += width * num_classes + num_classes
    activations += num_classes
    return Estimate(params=params, activations=activations)


def model_estimate(model) -> Estimate:
    """The same figures read from a built Keras model's layers."""
    activations = 0
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        shapes = (
            layer.output_shape if isinstance(layer.output_shape, list) else [layer.output_shape]
        )
        activations += sum(math.prod(d or 1 for d in s[1:]) for s in shapes)
    return Estimate(params=int(model.count_params()), activations=activations)


def check_fits(estimate: Estimate, batch: int, what: str, available: int | None = None) -> None:
    """A UserError when training `what` at `batch` needs more than the memory available."""
    available = available_bytes() if available is None else available
    needed = estimate.training_bytes(batch)
    if available is None or needed <= available:
        return
    raise UserError(
        f"{what} needs at least {describe_bytes(needed)} of memory to train "
        f"({estimate.params:,} parameters x {PARAM_COPIES} copies for weights, gradients and "
        f"Adam; layer outputs of a batch of {batch}), more than the "
        f"{describe_bytes(available)} available; use fewer or smaller layers "
        "(model.conv_filters, model.dense_units) or a smaller batch_size"
    )


def check_model_fits(cfg, data) -> None:
    """Before the model is built: refuse in one line what cannot fit this machine's memory
    (models of the stack builder, whose size the config says; others are not estimated)."""
    if cfg.model._target_ != STACK_BUILDER:
        return
    estimate = stack_estimate(cfg.model, data.input_shape, data.num_classes)
    batch = min(max(cfg.train.batch_size, cfg.finetune.batch_size), len(data.y_train))
    check_fits(estimate, max(batch, 1), f"model={cfg.model.name}")
