"""Train a CoAtNet; with no arguments, on scikit-learn's digits. See --help.

The same as `coatnet train ARGS`. From Python:

    from keras_coatnet.training import RunConfig, train
    train(RunConfig(output_dir="runs/digits"))
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_coatnet.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
