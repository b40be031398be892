"""`coatnet convert` from a checkout: `python weights/convert_timm.py NAME [flags]`.

The conversion is package code (`keras_coatnet.cli.convert`, over
`keras_coatnet.convert`); see weights/README.md for where weights come from.
"""

import sys

from keras_coatnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
