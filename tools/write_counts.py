"""Write `keras_coatnet/data/model_counts.json`, the table `coatnet models` prints.

    .venv/bin/python tools/write_counts.py            # this checkout's table
    .venv/bin/python tools/write_counts.py --output /tmp/counts.json

Builds every config at its default size with 1000 classes and records what
`keras_coatnet.profile` counts (`keras_coatnet.counts.measure`, CoAtNet-6
and -7 in bfloat16: a few minutes, about 6 GiB). Run it from a checkout
after changing a config; the package only reads the table, and
`tests/test_counts.py` fails until it is written again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "keras_coatnet", "data", "model_counts.json")


def write(path: str = PATH, names=None) -> None:
    """Measure `names` (default: every config) and write the table, sorted, atomically."""
    from keras_coatnet import counts
    from keras_coatnet.configs import CONFIGS

    table = {}
    for name in sorted(CONFIGS if names is None else names):
        table[name] = dataclasses.asdict(counts.measure(CONFIGS[name]))
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(table, f, indent=1)
        f.write("\n")
    os.replace(partial, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/write_counts.py",
        description="Write the params/MACs table `coatnet models` prints.",
    )
    parser.add_argument(
        "--output", default=PATH, help="default: keras_coatnet/data/model_counts.json here"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    write(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
