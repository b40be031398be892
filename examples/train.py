"""Train a CoAtNet; with no arguments, on scikit-learn's digits. See --help.

The same as `coatnet train ARGS`. From Python:

    from keras_coatnet.training import RunConfig, train
    train(RunConfig(output_dir="runs/digits"))
"""

import os
import sys

if __name__ == "__main__":
    # As `coatnet train` (`python -m keras_coatnet_cli train`): the flags are checked
    # before TensorFlow starts,
    # and its start-up logging is turned down.
    os.execv(sys.executable, [sys.executable, "-m", "keras_coatnet_cli", "train", *sys.argv[1:]])
