"""Model builders: `build(input_shape, num_classes, cfg) -> tf.keras.Model`.

Layers carry stable names (conv0.., dense0.., output) because criteria and users
address them by name.
"""

from __future__ import annotations

from hydra.utils import get_method

from avlsi.errors import UserError


def build_model(cfg, input_shape: tuple[int, ...], num_classes: int):
    """Build the model that `cfg._target_` names for the given data shape."""
    builder = get_method(cfg._target_)
    try:
        return builder(input_shape, num_classes, cfg)
    except ValueError as err:
        msg = str(err).splitlines()[0]
        raise UserError(f"model={cfg.name} cannot be built for input {input_shape}: {msg}") from err


OUTPUT_LAYER = "output"
