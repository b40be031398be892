"""`coatnet train`: the paper's recipe on any TFDS dataset, an image folder, or the digits.

    coatnet train --output-dir runs/digits          # digits default, ~3 min on 2 cores
    coatnet train --dataset imagenet2012 --data-dir D --manual-dir M \\
        --model coatnet-0 --tpu local --mixed-precision bfloat16

Every recipe flag defaults to the paper's ImageNet-1K value (shown in --help)
when a dataset is named, and to the digits preset when none is. Each flag is
the field of `keras_coatnet.training.RunConfig` with the same name, which
checks the values before TensorFlow or JAX is imported.
"""

from __future__ import annotations

import dataclasses

from keras_coatnet.cli._common import PROG, add_command, config, import_framework
from keras_coatnet.training.config import (
    DISTRIBUTIONS,
    ENV_COORDINATOR,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    JIT,
    PAPER,
    PRECISIONS,
    RunConfig,
)
from keras_coatnet.variants import CONFIGS


def register(subparsers, parents) -> None:
    # framework=False: `run` checks the flags first, then imports the framework.
    p = add_command(
        subparsers,
        "train",
        "train a model with the paper's recipe on a TFDS dataset or an image folder "
        "(the digits by default)",
        parents,
        framework=False,
    )
    add = p.add_argument
    add("--dataset", help="TFDS name or image-folder directory (default: the digits)")
    add("--data-dir", help="TFDS data directory (required for a TFDS name)")
    add("--manual-dir", help="TFDS manual directory (imagenet2012's tar files)")
    add(
        "--model",
        default=None,
        help=f"one of {sorted(CONFIGS)} (default: coatnet-0; coatnet-digits for the digits)",
    )
    add(
        "--image-size",
        type=int,
        default=None,
        help="input side, a multiple of 32 (default: the model's default size)",
    )
    add(
        "--weights",
        help="start from a .weights.h5 file, 'imagenet' or a tag; at another --image-size "
        "the relative tables are resized (224 -> 384 fine-tuning); with another class count "
        "only the backbone is loaded and the head starts fresh",
    )
    add("--epochs", type=int, help=f"paper: {PAPER.epochs}")
    add("--batch-size", type=int, help=f"global batch (paper: {PAPER.batch_size})")
    add("--lr", type=float, help=f"peak learning rate (paper: {PAPER.learning_rate})")
    add("--weight-decay", type=float, help=f"AdamW decay (paper: {PAPER.weight_decay})")
    add("--warmup-steps", type=int, help=f"linear warm-up (paper: {PAPER.warmup_steps})")
    add("--label-smoothing", type=float, help=f"paper: {PAPER.label_smoothing}")
    add("--randaugment-ops", type=int, help=f"0 = off (paper: {PAPER.randaugment_ops})")
    add("--randaugment-magnitude", type=int, help=f"of 30 (paper: {PAPER.randaugment_magnitude})")
    add("--mixup", type=float, help=f"MixUp alpha, 0 = off (paper: {PAPER.mixup_alpha})")
    add("--cutmix", action="store_true", default=None, help="CutMix instead of MixUp")
    add(
        "--drop-path",
        type=float,
        help=f"stochastic depth of the last block (paper: {PAPER.drop_path_rate} for CoAtNet-0)",
    )
    add("--ema", type=float, help="EMA momentum of the weights, e.g. 0.9999 (paper: off)")
    add("--mixed-precision", choices=sorted(PRECISIONS), default="off")
    add(
        "--jit",
        choices=JIT,
        default="auto",
        help="XLA-compile the "
        "train step; auto = on for TPU and GPU, off on CPU, where XLA's step measured "
        "3.7x slower (docs/TRAINING.md); on JAX auto = on everywhere (off runs op by op)",
    )
    add(
        "--remat",
        action="store_true",
        help="recompute each block's activations in the backward pass instead of keeping "
        "them: less memory per image for about one more forward pass (docs/DISTRIBUTED.md)",
    )
    add(
        "--tpu",
        help="TPU name for TPUClusterResolver ('local' on a TPU VM); TensorFlow backend",
    )
    add(
        "--distribution",
        choices=DISTRIBUTIONS,
        default="none",
        help="JAX backend: data-parallel = keras.distribution.DataParallel over every "
        "device of every process; model-parallel = keras.distribution.ModelParallel, the "
        "large weights split over --model-axis devices (docs/DISTRIBUTED.md)",
    )
    add(
        "--model-axis",
        type=int,
        help="model-parallel: devices each weight is split over; it must divide the "
        "devices of one process or span whole processes (then the run writes Orbax "
        "checkpoints in pieces), the batch is split over the rest (default: the devices "
        "of one process)",
    )
    add(
        "--coordinator-address",
        help=f"HOST:PORT of process 0 in a multi-process run (default: ${ENV_COORDINATOR})",
    )
    add(
        "--num-processes",
        type=int,
        help=f"processes of a multi-process run, one per host (default: ${ENV_NUM_PROCESSES}, "
        "else 1)",
    )
    add("--process-id", type=int, help=f"this process, 0 .. N-1 (default: ${ENV_PROCESS_ID})")
    add("--output-dir", default="runs/train", help="checkpoints, logs, best model")
    add("--seed", type=int, default=0)
    add("--steps-per-epoch", type=int, help="cap steps per epoch (quick runs)")
    p.set_defaults(run=run)


def run_config(args) -> RunConfig:
    """The RunConfig of parsed `args` (every field is the flag of the same name)."""
    if args.model is not None:
        config(args.model)  # an unknown name: the closest known ones
    return RunConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)})


def run(args) -> int:
    cfg = run_config(args)
    import_framework(args.verbose)
    from keras_coatnet import training
    from keras_coatnet.training import distribution

    try:
        training.train(cfg)
    except distribution.LostContactError as error:
        distribution.exit_lost_contact(f"{PROG} train", error)  # status 1, no JAX shutdown
    return 0
