"""Real graphs through the whole job: residual, concatenating and depthwise models a user
brings as builder functions, pruned with the equivalence check of every surgery."""

import textwrap

import pytest

USER_MODELS = textwrap.dedent(
    """
    import tensorflow as tf

    L = tf.keras.layers


    def residual(input_shape, num_classes, width=8):
        inputs = tf.keras.Input(input_shape)
        stem = L.Conv2D(width, 3, padding="same", activation="relu")(inputs)
        x = L.Conv2D(width, 3, padding="same")(stem)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
        x = L.Conv2D(width, 3, padding="same")(x)
        x = L.Add()([stem, x])  # identity shortcut
        y = L.Conv2D(2 * width, 3, strides=2, padding="same", activation="relu")(x)
        y = L.Conv2D(2 * width, 3, padding="same")(y)
        x = L.Add()([L.Conv2D(2 * width, 1, strides=2)(x), y])  # projection shortcut
        x = L.GlobalAveragePooling2D()(L.ReLU()(x))
        return tf.keras.Model(inputs, L.Dense(num_classes)(x))  # logits


    def concat(input_shape, num_classes, width=6):
        inputs = tf.keras.Input(input_shape)
        x = L.Conv2D(width, 3, padding="same", activation="relu")(inputs)
        for _ in range(2):  # DenseNet-style: each block's output is concatenated
            y = L.Conv2D(width, 3, padding="same", activation="relu")(x)
            x = L.Concatenate()([x, y])
        x = L.Conv2D(width, 1, activation="relu")(x)
        x = L.Flatten()(L.MaxPooling2D()(x))
        return tf.keras.Model(inputs, L.Dense(num_classes, activation="softmax")(x))


    def depthwise(input_shape, num_classes, width=8):
        inputs = tf.keras.Input(input_shape)
        x = L.Conv2D(width, 3, padding="same", use_bias=False)(inputs)
        x = L.ReLU(6.0)(L.BatchNormalization()(x))
        for _ in range(2):  # MobileNet blocks: depthwise follows its input's channels
            x = L.Conv2D(2 * width, 1, use_bias=False)(x)
            x = L.ReLU(6.0)(L.BatchNormalization()(x))
            x = L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
            x = L.ReLU(6.0)(L.BatchNormalization()(x))
        x = L.SeparableConv2D(width, 3, padding="same", activation="relu")(x)
        x = L.GlobalAveragePooling2D()(x)
        return tf.keras.Model(inputs, L.Dense(num_classes, activation="softmax")(x))


    def nested(input_shape, num_classes, width=8):  # a backbone model in a Sequential
        inputs = tf.keras.Input(input_shape)
        x = L.Conv2D(width, 3, padding="same", activation="relu")(inputs)
        y = L.Conv2D(2 * width, 3, padding="same", activation="relu")(x)
        y = L.BatchNormalization()(L.Conv2D(width, 3, padding="same")(y))
        backbone = tf.keras.Model(inputs, L.ReLU()(L.Add()([x, y])), name="backbone")
        head = [L.GlobalAveragePooling2D(), L.Dense(num_classes, activation="softmax")]
        return tf.keras.Sequential([tf.keras.Input(input_shape), backbone, *head])
    """
)

DATA = [
    "dataset=synthetic",
    "dataset.shape=[12,12,3]",
    "dataset.train_size=64",
    "dataset.test_size=32",
    "train.epochs=1",
    "finetune.epochs=1",
    "train.batch_size=32",
    "finetune.batch_size=32",
    "criterion.samples=16",
    "latency.enabled=false",  # measured latency: tests/test_runtime.py
]


@pytest.mark.slow
def test_user_graphs_prune_correctly_through_the_cli(cli):
    """One sweep over the four builders (one process: one TensorFlow start-up); the nested
    one is flattened first (avlsi/models/flatten.py), then pruned inside its backbone."""
    (cli.tmp / "user_models.py").write_text(USER_MODELS)
    builders = ("residual", "concat", "depthwise", "nested")
    proc = cli(
        "-m",
        "model=builder",
        "model._target_=" + ",".join(f"user_models.{b}" for b in builders),
        "criterion=taylor",
        "psize=0.5",
        *DATA,
        tiny=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {r.data.params["model._target_"].split(".")[-1]: r for r in cli.runs()}
    assert sorted(runs) == sorted(builders)
    for builder, run in runs.items():
        metrics = run.data.metrics
        assert run.info.status == "FINISHED", builder
        assert metrics["pruned.equivalence_error"] <= 1e-5, builder
        assert metrics["pruned.params"] < metrics["baseline.params"], builder
        assert metrics["pruned.macs"] < metrics["baseline.macs"], builder
        assert "finetuned.test_accuracy" in metrics, builder
    assert "1 nested model(s) flattened into one graph" in proc.stdout
