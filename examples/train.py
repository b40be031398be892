"""Train a CoAtNet; with no arguments, on scikit-learn's digits. See --help."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_coatnet.training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
