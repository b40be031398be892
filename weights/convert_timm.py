"""`coatnet convert` from a checkout: `python weights/convert_timm.py NAME [flags]`.

The conversion is package code (`keras_coatnet.cli.convert`, over
`keras_coatnet.convert`); see weights/README.md for where weights come from.
"""

import os
import sys

if __name__ == "__main__":
    # As the `coatnet` command (`python -m keras_coatnet_cli`): it starts without
    # TensorFlow and turns its logging down.
    os.execv(sys.executable, [sys.executable, "-m", "keras_coatnet_cli", "convert", *sys.argv[1:]])
