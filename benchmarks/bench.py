"""`coatnet bench` from a checkout: CPU throughput of keras_coatnet next to timm.

    .venv/bin/python benchmarks/bench.py --quick      # same as: coatnet bench --quick

The benchmark is the package's `keras_coatnet.bench` (see its docstring and
docs/BENCHMARKS.md); this file only keeps the documented command working.
"""

import sys

import keras_coatnet.cli

if __name__ == "__main__":
    sys.exit(keras_coatnet.cli.main(["bench", *sys.argv[1:]]))
