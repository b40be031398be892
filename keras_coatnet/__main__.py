"""`python -m keras_coatnet`: the `coatnet` command.

Python imports the package before this module, and `import keras_coatnet`
binds every name (Keras, TensorFlow) first; `python -m keras_coatnet_cli`,
like the `coatnet` console script, starts the same command lazily.
"""

import sys

from keras_coatnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
