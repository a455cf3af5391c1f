"""AVLSI: config-driven pruning experiments for TensorFlow/Keras (tf-keras) models."""

import os

# kerassurgeon needs the Keras 2 API; tf-keras provides it only when this is set
# before TensorFlow is first imported in the process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF C++ chatter; 0 shows it all

__version__ = "0.1.0"
