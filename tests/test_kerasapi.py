"""Which Keras a model belongs to."""

import keras
import tf_keras

from avlsi.kerasapi import is_keras3, keras_module, keras_of, keras_version


def test_a_tf_keras_model_is_keras_2():
    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(2)])
    assert not is_keras3(model) and keras_version(model) == 2
    assert keras_of(model) is tf_keras and keras_of(model.layers[0]) is tf_keras


def test_a_keras_3_model_and_its_subclasses_are_keras_3():
    class Mine(keras.Model):
        pass

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert is_keras3(model) and is_keras3(Mine) and keras_of(model) is keras
    assert keras_module(3) is keras and keras_module(2) is tf_keras
