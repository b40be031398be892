"""`coatnet bench`: CPU throughput of keras_coatnet next to timm (`keras_coatnet.bench`).

    coatnet bench --smoke                   # every part once, pico at 64 px: under a minute
    coatnet bench --quick                   # CoAtNet-0 at 224, batch 1: a minute or two
    coatnet bench --wait-idle 30 --retries 1 --json /tmp/bench.json   # the full run

Building the flags imports no framework; `run` imports the benchmark. It
needs Keras on TensorFlow and the timm extra (torch and timm).
"""

from __future__ import annotations

import os

from keras_coatnet.bench.options import (
    DEFAULT_MODELS,
    SMOKE_TRAIN_VARIANTS,
    SMOKE_VARIANTS,
    TRAIN_VARIANTS,
    VARIANTS,
)
from keras_coatnet.cli import _common

HELP = "CPU throughput of keras_coatnet next to timm, same architecture and weights"


def register(subparsers, parents) -> None:
    parser = _common.add_command(subparsers, "bench", HELP, parents, framework=True)
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="smoke run: coatnet_0 b1, few repeats")
    preset.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest run (coatnet_pico_rw_224 at 64x64, batch 1, one round, no XLA; "
        "both child processes): checks an installation, the numbers mean little",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        help=f"timm_name[:size[:b1,b2]] (default: {' '.join(DEFAULT_MODELS)})",
    )
    parser.add_argument("--batches", default=None, help="comma list (default 1,8; quick: 1)")
    parser.add_argument("--repeats", type=int, help="timed rounds per batch (default 10)")
    parser.add_argument("--warmup", type=int, help="warm-up calls per variant (default 2)")
    parser.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="stop timing a batch after this many seconds (at least 3 rounds); default 120",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each timed block wait up to S seconds for other processes to go quiet",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        help="time a block again (up to this many times) if other processes were busy",
    )
    parser.add_argument(
        "--busy",
        type=float,
        default=0.1,
        help="CPU cores used by other processes that make a block 'busy' (default 0.1)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads")
    parser.add_argument("--inter-threads", type=int, default=0, help="TF inter-op (0: default)")
    parser.add_argument(
        "--variants",
        help=f"keras inference variants (comma list of {','.join(VARIANTS[1:])}; "
        f"default: all; smoke: {','.join(SMOKE_VARIANTS)})",
    )
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument(
        "--no-inference",
        action="store_true",
        help="only the training step (the full run peaks near 18 GiB resident; the two "
        "halves each need less)",
    )
    parser.add_argument(
        "--no-timm-own-process",
        dest="timm_own_process",
        action="store_false",
        help="skip timing timm again in a torch-only child process",
    )
    parser.add_argument(
        "--train-model",
        help="timm_name[:size] of the training step (default coatnet_0_224:224; "
        "smoke: coatnet_pico_rw_224:64)",
    )
    parser.add_argument("--train-batch", type=int, help="default 8 (quick: 2)")
    parser.add_argument("--train-repeats", type=int, help="default 8 (quick: 2)")
    parser.add_argument(
        "--train-variants",
        help=f"comma list of {','.join(TRAIN_VARIANTS[1:])} (default: both; "
        f"smoke: {','.join(SMOKE_TRAIN_VARIANTS)})",
    )
    parser.add_argument("--json", metavar="OUT", help="write the raw numbers here")
    parser.set_defaults(run=run)


def run(args) -> int:
    from keras_coatnet.bench.options import resolve
    from keras_coatnet.variants import timm_names

    try:
        options = resolve(args, names=timm_names())
    except ValueError as error:
        raise _common.CLIError(str(error)) from None
    import keras

    if keras.backend.backend() != "tensorflow":
        raise _common.CLIError(
            f"coatnet bench times TensorFlow (tf.function, XLA, SavedModel); the Keras "
            f"backend is {keras.backend.backend()!r} (set KERAS_BACKEND=tensorflow)"
        )
    from keras_coatnet._timm import import_timm

    import_timm()  # the install hint as one line, before any work
    from keras_coatnet.bench.runner import run as bench

    bench(options, progress=_common.interactive(args.quiet))
    return 0
