"""`coatnet train`: the paper's recipe on any TFDS dataset, an image folder, or the digits.

    python examples/train.py                       # digits default, ~3 min on 2 cores
    python examples/train.py --dataset imagenet2012 --data-dir D --manual-dir M \
        --model coatnet-0 --tpu local --mixed-precision bfloat16

Every recipe flag defaults to the paper's ImageNet-1K value (shown in --help)
when a dataset is named, and to the digits preset when none is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import keras
import tensorflow as tf

from keras_coatnet.configs import CONFIGS, get_config
from keras_coatnet.model import CoAtNet
from keras_coatnet.training import data, distribution, recipe
from keras_coatnet.training.callbacks import EpochSummary, ResumableBackup

PRECISIONS = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16", "off": "float32"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coatnet train", description=__doc__.splitlines()[0])
    add = p.add_argument
    paper = recipe.PAPER
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
    add("--epochs", type=int, help=f"paper: {paper.epochs}")
    add("--batch-size", type=int, help=f"global batch (paper: {paper.batch_size})")
    add("--lr", type=float, help=f"peak learning rate (paper: {paper.learning_rate})")
    add("--weight-decay", type=float, help=f"AdamW decay (paper: {paper.weight_decay})")
    add("--warmup-steps", type=int, help=f"linear warm-up (paper: {paper.warmup_steps})")
    add("--label-smoothing", type=float, help=f"paper: {paper.label_smoothing}")
    add("--randaugment-ops", type=int, help=f"0 = off (paper: {paper.randaugment_ops})")
    add("--randaugment-magnitude", type=int, help=f"of 30 (paper: {paper.randaugment_magnitude})")
    add("--mixup", type=float, help=f"MixUp alpha, 0 = off (paper: {paper.mixup_alpha})")
    add("--cutmix", action="store_true", default=None, help="CutMix instead of MixUp")
    add(
        "--drop-path",
        type=float,
        help=f"stochastic depth of the last block (paper: {paper.drop_path_rate} for CoAtNet-0)",
    )
    add("--ema", type=float, help="EMA momentum of the weights, e.g. 0.9999 (paper: off)")
    add("--mixed-precision", choices=sorted(PRECISIONS), default="off")
    add(
        "--jit",
        choices=("auto", "on", "off"),
        default="auto",
        help="XLA-compile the "
        "train step; auto = on for TPU and GPU, off on CPU, where XLA's step measured "
        "3.7x slower (docs/TRAINING.md); on JAX auto = on everywhere (off runs op by op)",
    )
    add(
        "--tpu",
        help="TPU name for TPUClusterResolver ('local' on a TPU VM); TensorFlow backend",
    )
    add(
        "--distribution",
        choices=distribution.DISTRIBUTIONS,
        default="none",
        help="JAX backend: data-parallel = keras.distribution.DataParallel over every "
        "device of every process (docs/DISTRIBUTED.md)",
    )
    add(
        "--coordinator-address",
        help=f"HOST:PORT of process 0 in a multi-process data-parallel run "
        f"(default: ${distribution.ENV_COORDINATOR})",
    )
    add(
        "--num-processes",
        type=int,
        help=f"processes of a multi-process run, one per host "
        f"(default: ${distribution.ENV_NUM_PROCESSES}, else 1)",
    )
    add(
        "--process-id",
        type=int,
        help=f"this process, 0 .. N-1 (default: ${distribution.ENV_PROCESS_ID})",
    )
    add("--output-dir", default="runs/train", help="checkpoints, logs, best model")
    add("--seed", type=int, default=0)
    add("--steps-per-epoch", type=int, help="cap steps per epoch (quick runs)")
    add("--quiet", action="store_true", help="one line per epoch, no progress bar")
    add("--verbose", action="store_true", help="show the traceback on errors")
    return p


def _recipe(args) -> recipe.Recipe:
    base = recipe.DIGITS if args.dataset is None else recipe.PAPER
    flags = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps,
        "label_smoothing": args.label_smoothing,
        "randaugment_ops": args.randaugment_ops,
        "randaugment_magnitude": args.randaugment_magnitude,
        "mixup_alpha": args.mixup,
        "cutmix": args.cutmix,
        "drop_path_rate": args.drop_path,
        "ema_momentum": args.ema,
    }
    return base.replace(**{k: v for k, v in flags.items() if v is not None})


def _check(args, rec, replicas):
    for flag, value in (("--batch-size", rec.batch_size), ("--epochs", rec.epochs)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, received: {value}")
    if rec.batch_size % replicas:
        raise ValueError(
            f"--batch-size {rec.batch_size} is not divisible by the {replicas} replicas"
        )
    if args.image_size is not None and (args.image_size < 32 or args.image_size % 32):
        raise ValueError(f"--image-size must be a multiple of 32, received: {args.image_size}")
    if args.dataset is None and (args.data_dir or args.manual_dir):
        raise ValueError("--data-dir and --manual-dir need --dataset")


def build_model(
    config,
    size,
    classes,
    weights=None,
    drop_path_rate=0.0,
    sync_batchnorm=False,
) -> keras.Model:
    """The model to train, started from `weights` when given.

    Weights whose head has `classes` outputs load whole; otherwise their
    backbone is loaded and the head keeps its fresh initialization (the
    builder's fine-tuning rule). Relative tables of another image size are
    resized on load.
    """
    return CoAtNet(
        config,
        weights=weights,
        input_shape=(size, size, 3),
        classes=classes,
        drop_path_rate=drop_path_rate,
        sync_batchnorm=sync_batchnorm,
    )


def _use_xla(flag: str, strategy) -> bool:
    """Decide XLA explicitly instead of Keras's "auto", which is off under any strategy.

    TPUs always compile; GPUs gain from fusion; on CPU the XLA train step of
    the digits model measured 2.16 s against 0.58 s without (batch 64). On
    JAX, "auto" is on everywhere: JAX has no graph mode, so Keras's only
    alternative to a jitted step is running it op by op.
    """
    if flag != "auto":
        return flag == "on"
    if keras.backend.backend() == "jax":
        return True
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    return bool(tf.config.list_logical_devices("GPU"))


def _resumed_epoch(backup_dir: str) -> int:
    """The epoch BackupAndRestore will resume at (0 for a fresh run)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("epoch", 0))


def _agreed_epoch(epoch: int, placement) -> int:
    """`epoch`, checked equal in every process (each resumes from its own backup)."""
    if placement.num_processes == 1:
        return epoch
    import numpy as np
    from jax.experimental import multihost_utils

    epochs = np.asarray(multihost_utils.process_allgather(np.int32(epoch))).ravel().tolist()
    if len(set(epochs)) > 1:
        raise ValueError(
            f"the processes' backups are at different epochs {epochs}; remove "
            "OUTPUT_DIR/backup on every host to start over"
        )
    return epoch


def train(args) -> dict:
    """Run one training job from parsed `args`; returns the final evaluation."""
    keras.utils.set_random_seed(args.seed)
    keras.config.set_dtype_policy(PRECISIONS[args.mixed_precision])
    placement = distribution.place(args)
    with placement.run_scope(), distribution.reporting_lost_contact(placement):
        return _train(args, placement)


def _train(args, placement) -> dict:
    rec = _recipe(args)
    _check(args, rec, placement.replicas)
    config = get_config(args.model or ("coatnet-digits" if args.dataset is None else "coatnet-0"))
    size = args.image_size or config.default_size
    dataset = args.dataset
    if dataset is None:
        dataset = data.write_digits_tree(os.path.join(tempfile.gettempdir(), "coatnet_digits"))
    # Every process of a multi-process run runs the same callbacks (they keep
    # state that must stay equal), each writing to a folder of its own: the
    # chief to --output-dir, process i to --output-dir/process_<i>.
    out = args.output_dir
    if not placement.chief:
        out = os.path.join(out, f"process_{placement.process_id}")
    backup = os.path.join(out, "backup")
    splits = data.load(
        dataset,
        size,
        rec.batch_size,
        augment=recipe.augmenter(rec, seed=args.seed),
        data_dir=args.data_dir,
        manual_dir=args.manual_dir,
        seed=args.seed,
        epochs=rec.epochs,
        first_epoch=_agreed_epoch(_resumed_epoch(backup), placement),
        steps_per_epoch=args.steps_per_epoch,
    )
    steps = splits.steps_per_epoch
    strategy = placement.strategy
    xla = _use_xla(args.jit, strategy)
    if not xla and keras.backend.backend() == "tensorflow":
        # Same seed, same weights (resumed runs included). Keras turns XLA off
        # when op determinism is on, so XLA runs (TPU, GPU) are not bit-exact.
        # (JAX on CPU is deterministic without a switch.)
        tf.config.experimental.enable_op_determinism()
    with placement.build_scope():
        # Several local replicas (MirroredStrategy): BatchNorm statistics over
        # the global batch, so N devices train like one. TPU cores keep
        # per-core statistics (large per-core batches; no extra all-reduce).
        # JAX's DataParallel computes them over the global batch by itself.
        mirrored = isinstance(strategy, tf.distribute.MirroredStrategy)
        model = build_model(
            config,
            size,
            splits.num_classes,
            args.weights,
            drop_path_rate=rec.drop_path_rate,
            sync_batchnorm=mirrored and strategy.num_replicas_in_sync > 1,
        )
        model.compile(
            optimizer=recipe.optimizer(rec, steps),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=rec.label_smoothing),
            metrics=["accuracy"],
            jit_compile=xla,
        )
    callbacks = [
        ResumableBackup(backup),
        keras.callbacks.TensorBoard(os.path.join(out, "logs")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(out, "best.keras"), monitor="val_accuracy", save_best_only=True
        ),
        EpochSummary(),
    ]
    quiet = args.quiet or not sys.stdout.isatty()
    start = time.perf_counter()
    try:
        history = model.fit(
            # Each process feeds its rows of the global batch; every process
            # evaluates the whole held-out split (metrics as on one process).
            placement.shard(splits.train, rec.batch_size),
            steps_per_epoch=steps,
            epochs=rec.epochs,
            validation_data=splits.eval,
            callbacks=callbacks,
            verbose=0 if quiet else 1,
            shuffle=False,  # the pipeline shuffles, per epoch and seeded
        )
    except tf.errors.InvalidArgumentError as error:
        if os.path.isdir(dataset):  # a corrupt file of an image folder: name it
            data.check_images(dataset, error)
        raise
    model.save_weights(os.path.join(out, "final.weights.h5"))
    # fit validated the final weights on the held-out split after the last epoch.
    result = {
        "loss": float(history.history["val_loss"][-1]),
        "accuracy": float(history.history["val_accuracy"][-1]),
        "eval_examples": splits.eval_examples,
        "seconds": time.perf_counter() - start,
        "history": history.history,
    }
    print(
        f"held-out accuracy {result['accuracy']:.4f} on {result['eval_examples']} images, "
        f"loss {result['loss']:.4f}, {result['seconds']:.0f}s; weights in {out}",
        flush=True,
    )
    return result


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        train(args)
    except distribution.LostContactError as e:
        distribution.exit_lost_contact("coatnet train", e)
    except (Exception, KeyboardInterrupt) as e:
        from keras_coatnet._errors import report

        return report("coatnet train", e, args.verbose)
    return 0
