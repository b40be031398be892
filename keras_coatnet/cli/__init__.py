"""The `coatnet` command (also `python -m keras_coatnet_cli`, or `python -m keras_coatnet`).

    coatnet models                          # every variant: layout, params, MACs, weights
    coatnet summary coatnet-0               # stage by stage: shapes, params, MACs
    coatnet train --epochs 3                # training (digits by default)
    coatnet evaluate --model M --weights W --dataset DIR
    coatnet predict IMAGE... --model M --weights W
    coatnet export MODEL --output DIR       # TF Serving SavedModel
    coatnet convert NAME                    # timm weights -> .weights.h5
    coatnet bench                           # CPU inference against timm
    coatnet plot-bias / plot-history

One module per command family; each `register`s its subcommands on the
shared parser and names the function that runs them. Building the parser
imports no framework. Errors are one line on stderr; the exit status is 2
for a bad invocation (unknown model, missing file, bad flag, weights that do
not fit), 1 for a failure while working, 130 when interrupted; `--verbose`
adds the traceback and leaves the frameworks' own logging on.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from keras_coatnet._errors import report
from keras_coatnet.cli._common import PROG, Parser

# Registration order is the order of `coatnet --help`.
MODULES = ("models", "train", "images", "export", "convert", "bench", "plots")
GLOBAL_FLAGS = ("--verbose", "--quiet")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--quiet", action="store_true", help="no progress output (also off when not a terminal)"
    )
    common.add_argument(
        "--verbose",
        action="store_true",
        help="show the traceback on errors and the frameworks' own logging",
    )
    top = Parser(
        prog=PROG,
        description="CoAtNet for Keras: models, training, evaluation, prediction, export, "
        "conversion, benchmarks, plots.",
        epilog="Each command has --help. Exit status: 0 ok, 1 failed while working, "
        "2 bad invocation.",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in MODULES:
        importlib.import_module(f"keras_coatnet.cli.{name}").register(sub, [common])
    return top


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("keras_coatnet")
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        import keras_coatnet

        return keras_coatnet.__version__


def _split_leading_flags(argv):
    """Global flags may come before the command too: `coatnet --quiet models`."""
    i = 0
    while i < len(argv) and argv[i] in GLOBAL_FLAGS:
        i += 1
    return argv[:i], argv[i:]


def main(argv=None) -> int:
    """Run `coatnet ARGV`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    lead, rest = _split_leading_flags(argv)
    verbose = "--verbose" in argv
    prog = f"{PROG} {rest[0]}" if rest and not rest[0].startswith("-") else PROG
    try:
        args = build_parser().parse_args(rest + lead)
        if args.framework:
            from keras_coatnet.cli._common import config, import_framework

            if getattr(args, "model", None) is not None:
                config(args.model)  # an unknown name is reported before the framework starts
            import_framework(args.verbose)
        return int(args.run(args) or 0)
    except (Exception, KeyboardInterrupt) as error:
        return report(prog, error, verbose)
