"""Start-up time of the `coatnet` command: this checkout against another.

    python benchmarks/startup.py --against /tmp/old_checkout --repeats 5

Each command line runs as `python -m keras_coatnet_cli ...` (what the
`coatnet` console script runs) in a process of its own with `PYTHONPATH` set
to one checkout, alternating between the two checkouts, from a temporary
directory; prints the median wall time of each and the ratio. A checkout from
before the launcher runs `python -m keras_coatnet ...`, its fast start then.
Whether TensorFlow was imported is read from the child's `sys.modules`
through `-X importtime` (a `tensorflow` line on stderr; with `--verbose` so
the command leaves stderr alone).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
COMMANDS = (
    ("--help",),
    ("models",),
    ("summary", "--help"),
    ("summary", "no-such-net"),
)


def entry_point(checkout: str) -> str:
    """The module that starts the command fast in `checkout`."""
    launcher = os.path.join(checkout, "keras_coatnet_cli.py")
    return "keras_coatnet_cli" if os.path.isfile(launcher) else "keras_coatnet"


def once(checkout: str, args, work: str) -> tuple[float, bool, int]:
    env = {**os.environ, "PYTHONPATH": checkout}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    module = entry_point(checkout)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, *args, "--verbose"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
    )
    seconds = time.perf_counter() - start
    tensorflow = bool(re.search(r"\|\s+tensorflow$", result.stderr, re.M))
    return seconds, tensorflow, result.returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", help="another checkout to compare with (e.g. a worktree)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    checkouts = {"this": ROOT}
    if args.against:
        checkouts["against"] = os.path.abspath(args.against)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, repeats {args.repeats}")
    print("| command | checkout | median s | min s | TensorFlow imported | exit |")
    print("|---|---|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory() as work:
        for command in COMMANDS:
            times = {name: [] for name in checkouts}
            seen = {}
            for _ in range(args.repeats):
                for name, checkout in checkouts.items():
                    seconds, tensorflow, code = once(checkout, command, work)
                    times[name].append(seconds)
                    seen[name] = (tensorflow, code)
            for name in checkouts:
                tensorflow, code = seen[name]
                print(
                    f"| coatnet {' '.join(command)} | {name} | "
                    f"{statistics.median(times[name]):.2f} | {min(times[name]):.2f} | "
                    f"{'yes' if tensorflow else 'no'} | {code} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
