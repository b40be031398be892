"""`python -m keras_coatnet`: the `coatnet` command."""

import sys

from keras_coatnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
