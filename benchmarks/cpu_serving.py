"""CPU inference: timm eager, timm -> ONNX Runtime / OpenVINO and each of our paths.

    .venv/bin/python benchmarks/cpu_serving.py            # writes docs/BENCHMARKS.md
    .venv/bin/python benchmarks/cpu_serving.py --smoke    # a minute: checks the install

Every variant runs in its own process, alternating rounds; see
`keras_coatnet.bench.serving` for what is timed and how. Needs the timm and
export extras: pip install -e '.[timm,export]'.
"""

import os
import sys

if __name__ == "__main__":
    os.execv(sys.executable, [sys.executable, "-m", "keras_coatnet.bench.serving", *sys.argv[1:]])
