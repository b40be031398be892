"""`coatnet convert` from a checkout: `python weights/convert_timm.py NAME [flags]`.

The conversion is package code (`keras_coatnet.cli.convert`, over
`keras_coatnet.convert`); see weights/README.md for where weights come from.
"""

import os
import sys

if __name__ == "__main__":
    # As `python -m keras_coatnet`, which starts without TensorFlow and turns its logging down.
    os.execv(sys.executable, [sys.executable, "-m", "keras_coatnet", "convert", *sys.argv[1:]])
