"""AVLSI entry point: `python run.py model=cnn criterion=l1 psize=0.3` (see README.md)."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports TensorFlow

from avlsi.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
