"""schedule=tfmot: TF Model Optimization's `prune_low_magnitude` with `PolynomialDecay`, the
reference for schedule=gradual (same layers, sparsities, begin / end step, frequency, power 3).

The target layers are wrapped, fine-tuned with `UpdatePruningStep`, stripped, and their
weights copied back into the job's model, which is then measured and recorded as usual.
Needs `pip install tensorflow-model-optimization==0.8.1` (`make setup-bench`); tfmot works
with tf-keras only.
"""

from __future__ import annotations

import tensorflow as tf

from avlsi.errors import UserError
from avlsi.schedules import gradual_end

PREFIX = "prune_low_magnitude_"


def _tfmot():
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError:
        raise UserError(
            "schedule=tfmot needs TF Model Optimization: pip install "
            "tensorflow-model-optimization==0.8.1 (or make setup-bench)"
        ) from None
    return tfmot.sparsity.keras


def wrapped_copy(model, names: set[str], schedule):
    """A copy of `model` whose layers in `names` are wrapped by prune_low_magnitude."""
    api = _tfmot()

    def wrap(layer):
        fresh = layer.__class__.from_config(layer.get_config())
        if layer.name in names:
            return api.prune_low_magnitude(fresh, pruning_schedule=schedule)
        return fresh

    copy = tf.keras.models.clone_model(model, clone_function=wrap)
    for layer in copy.layers:
        source = model.get_layer(layer.name.removeprefix(PREFIX))
        getattr(layer, "layer", layer).set_weights(source.get_weights())
    return copy


def finetune_with_tfmot(job, model, settings) -> None:
    """Fine-tune `model` with tfmot's polynomial pruning of the criterion's layers."""
    from avlsi.targets import prune_targets

    api, cfg = _tfmot(), job.cfg
    names = {layer.name for layer in prune_targets(model, cfg.criterion).layers}
    schedule = api.PolynomialDecay(
        initial_sparsity=float(cfg.schedule.initial_sparsity),
        final_sparsity=float(cfg.psize),
        begin_step=int(cfg.schedule.begin_step),
        end_step=gradual_end(cfg, len(job.data.y_train)),
        power=3,
        frequency=int(cfg.schedule.frequency),
    )
    wrapped = wrapped_copy(model, names, schedule)
    job.fit(wrapped, settings, "finetune", callbacks=[api.UpdatePruningStep()])
    stripped = api.strip_pruning(wrapped)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(stripped.get_layer(layer.name).get_weights())
