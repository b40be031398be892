"""Training a CoAtNet: the paper's recipe on any TFDS dataset, an image folder, or the digits.

    from keras_coatnet.training import RunConfig, train
    train(RunConfig(epochs=3, output_dir="runs/digits"))

`coatnet train` (keras_coatnet/cli/train.py) is the same with flags.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time

import keras
import tensorflow as tf

from keras_coatnet.model import CoAtNet
from keras_coatnet.training import data, distribution, files, recipe
from keras_coatnet.training.callbacks import BestModel, EpochSummary, ResumableBackup
from keras_coatnet.training.config import PRECISIONS, RunConfig
from keras_coatnet.variants import get_config
from keras_coatnet.weights.registry import eval_defaults


def build_model(
    config,
    size,
    classes,
    weights=None,
    drop_path_rate=0.0,
    sync_batchnorm=False,
    remat=False,
) -> keras.Model:
    """The model to train, started from `weights` when given.

    Weights whose head has `classes` outputs load whole; otherwise their
    backbone is loaded and the head keeps its fresh initialization (the
    builder's fine-tuning rule). Relative tables of another image size are
    resized on load.

    Built without the attention layers' bias cache (`cache_bias=False`):
    training steps gather the bias and never read the cache, which would
    only hold `heads * (HW)^2` floats per block on every device
    (docs/DISTRIBUTED.md). The weights are the same either way, and the
    `best.keras` a run writes turns the cache on for serving.
    """
    return CoAtNet(
        config,
        weights=weights,
        input_shape=(size, size, 3),
        classes=classes,
        drop_path_rate=drop_path_rate,
        cache_bias=False,
        sync_batchnorm=sync_batchnorm,
        remat=remat,
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


def _agreed_epoch(epoch: int, placement) -> int:
    """`epoch`, checked equal in every process (each resumes from its own backup)."""
    if placement.num_processes == 1:
        return epoch
    import numpy as np
    from jax.experimental import multihost_utils

    epochs = np.asarray(multihost_utils.process_allgather(np.int32(epoch))).ravel().tolist()
    if len(set(epochs)) > 1:
        raise ValueError(
            f"the processes' backups are at different epochs {epochs} (process i's at "
            "entry i); remove every process's backup (OUTPUT_DIR/backup, "
            "OUTPUT_DIR/process_<i>/backup) to start over"
        )
    return epoch


def train(config: RunConfig | None = None, **overrides) -> dict:
    """Run one training job; returns the final evaluation.

    Args:
        config: The run; defaults to `RunConfig()` (the digits demo).
        **overrides: `RunConfig` fields replacing those of `config`, e.g.
            `train(epochs=3)`.

    Returns:
        A dict: held-out `loss` and `accuracy` after the last epoch,
        `eval_examples`, `seconds`, and Keras's `history` dict.

    Raises:
        ValueError: For a bad value (one line naming it), a dataset that
            cannot be found, or a global batch that does not divide over
            the replicas.
    """
    config = dataclasses.replace(config or RunConfig(), **overrides)
    keras.utils.set_random_seed(config.seed)
    keras.config.set_dtype_policy(PRECISIONS[config.mixed_precision])
    placement = distribution.place(config)
    with placement.run_scope(), distribution.reporting_lost_contact(placement):
        return _train(config, placement)


def _train(run: RunConfig, placement) -> dict:
    rec = run.recipe
    if rec.batch_size % placement.replicas:
        raise ValueError(
            f"--batch-size {rec.batch_size} is not divisible by the {placement.replicas} replicas"
        )
    config = get_config(run.model_name)
    size = run.image_size or eval_defaults(config.name)[1]
    dataset = run.dataset
    if dataset is None:
        dataset = data.write_digits_tree(os.path.join(tempfile.gettempdir(), "coatnet_digits"))
    # Every process of a multi-process run runs the same callbacks (they keep
    # state that must stay equal), each writing to a folder of its own: the
    # chief to --output-dir, process i to --output-dir/process_<i>.
    out = run.output_dir
    if not placement.chief:
        out = os.path.join(out, f"process_{placement.process_id}")
    files.remove_partials(out)  # what a killed run left half-written
    if placement.writes_in_pieces:
        # No process holds every weight: one Orbax checkpoint folder for all.
        from keras_coatnet.training import checkpoints

        shared = os.path.join(run.output_dir, "checkpoints")
        best = checkpoints.ShardedBest(os.path.join(shared, checkpoints.BEST))
        backup = checkpoints.ShardedBackup(os.path.join(shared, checkpoints.BACKUP), best)
    else:
        best = BestModel(os.path.join(out, "best.keras"))
        backup = ResumableBackup(os.path.join(out, "backup"), best_model=best)
    first_epoch = _agreed_epoch(backup.resume(), placement)
    splits = data.load(
        dataset,
        size,
        rec.batch_size,
        augment=recipe.augmenter(rec, seed=run.seed),
        data_dir=run.data_dir,
        manual_dir=run.manual_dir,
        seed=run.seed,
        epochs=rec.epochs,
        first_epoch=first_epoch,
        steps_per_epoch=run.steps_per_epoch,
    )
    steps = splits.steps_per_epoch
    strategy = placement.strategy
    xla = _use_xla(run.jit, strategy)
    if not xla and keras.backend.backend() == "tensorflow":
        # Same seed, same weights (resumed runs included). Keras turns XLA off
        # when op determinism is on, so XLA runs (TPU, GPU) are not bit-exact.
        # (JAX on CPU is deterministic without a switch.)
        tf.config.experimental.enable_op_determinism()
    placement.lay_out(
        config, input_shape=(size, size, 3), classes=splits.num_classes, cache_bias=False
    )
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
            run.weights,
            drop_path_rate=rec.drop_path_rate,
            sync_batchnorm=mirrored and strategy.num_replicas_in_sync > 1,
            remat=run.remat,
        )
        model.compile(
            optimizer=recipe.optimizer(rec, steps),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=rec.label_smoothing),
            metrics=["accuracy"],
            jit_compile=xla,
        )
    placement.report(model)
    # In this order at each epoch's end: the epoch's line, then the best
    # model, then the backup (which keeps the best value).
    callbacks = [
        EpochSummary(),
        best,
        backup,
        keras.callbacks.TensorBoard(os.path.join(out, "logs")),
    ]
    quiet = run.quiet or not sys.stdout.isatty()
    start = time.perf_counter()
    try:
        history = model.fit(
            # Each process feeds its rows of the global batch; every process
            # evaluates the whole held-out split (metrics as on one process).
            placement.shard(splits.train, rec.batch_size),
            steps_per_epoch=steps,
            initial_epoch=first_epoch,
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
    if placement.writes_in_pieces:
        drop_path = rec.drop_path_rate
        checkpoints.write_files(
            model,
            best,
            run.output_dir,
            placement.chief,
            lambda: build_model(config, size, splits.num_classes, drop_path_rate=drop_path),
        )
    else:
        with files.replacing(os.path.join(out, "final.weights.h5")) as staging:
            model.save_weights(staging)
    backup.remove()  # only now: a kill before this resumes at the last backup
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
        f"loss {result['loss']:.4f}, {result['seconds']:.0f}s; "
        f"weights in {run.output_dir if placement.writes_in_pieces else out}",
        flush=True,
    )
    return result
