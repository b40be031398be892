"""Write `keras_coatnet/data/model_counts.json`, the table `coatnet models` prints.

    .venv/bin/python tools/write_counts.py            # this checkout's table
    .venv/bin/python tools/write_counts.py --output /tmp/counts.json
    .venv/bin/python tools/write_counts.py --stale    # only rows whose config changed
    .venv/bin/python tools/write_counts.py --fingerprints-only

Builds every config at its default size with 1000 classes and records what
`keras_coatnet.profile` counts (`keras_coatnet.counts.measure`, CoAtNet-6
and -7 in bfloat16: a few minutes, about 6 GiB). Run it from a checkout
after changing a config; the package only reads the table, and
`tests/test_counts.py` fails until it is written again. `--stale` measures
only the rows whose fingerprint no longer matches and keeps the others.
`--fingerprints-only` keeps every row's counts and stamps today's
fingerprint on it (measuring only missing rows), for when
`counts.fingerprint` itself changed and no architecture did (never after
editing a config: the counts would go stale unseen).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "keras_coatnet", "data", "model_counts.json")


def write(path: str = PATH, names=None, stale: bool = False, measure: bool = True) -> None:
    """Measure `names` (default: every config) and write the table, sorted, atomically.

    Args:
        stale: Measure only the rows of `path` whose fingerprint is stale (or
            missing) and keep the others.
        measure: `False` keeps every row's counts and writes today's
            fingerprints on them (see the module docstring).
    """
    from keras_coatnet import counts
    from keras_coatnet.variants import CONFIGS

    old = counts.load(path) if (stale or not measure) and os.path.exists(path) else {}
    table = {}
    for name in sorted(CONFIGS if names is None else names):
        config, row = CONFIGS[name], old.get(name)
        if row is not None and not measure:
            row = dataclasses.replace(row, config=counts.fingerprint(config))
        elif row is None or row.config != counts.fingerprint(config):
            row = counts.measure(config)
        table[name] = dataclasses.asdict(row)
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
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--stale", action="store_true", help="measure only the rows whose config changed"
    )
    mode.add_argument(
        "--fingerprints-only",
        action="store_true",
        help="measure nothing; stamp today's fingerprints on the rows (after a change of "
        "counts.fingerprint, never of a config)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    write(args.output, stale=args.stale, measure=not args.fingerprints_only)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
