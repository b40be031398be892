"""`coatnet bench` from a checkout: CPU throughput of keras_coatnet next to timm.

    .venv/bin/python benchmarks/bench.py --quick      # same as: coatnet bench --quick

The benchmark is the package's `keras_coatnet.bench` (see its docstring and
docs/BENCHMARKS.md); this file only keeps the documented command working.
"""

import os
import sys

if __name__ == "__main__":
    # As the `coatnet` command (`python -m keras_coatnet_cli`): it starts without
    # TensorFlow and turns its logging down.
    os.execv(sys.executable, [sys.executable, "-m", "keras_coatnet_cli", "bench", *sys.argv[1:]])
