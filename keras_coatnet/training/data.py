"""Input pipelines: TFDS datasets, image-folder trees, and the digits default.

Imports of tensorflow-datasets and scikit-learn happen inside the functions
that need them, so the core package does not depend on them.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

DIGITS_SIZE = 64  # 8x8 scans upscaled 8x: S3 attends over 4x4, S4 over 2x2
# Seed draws one augmented batch may take from each generator before its
# stream would run into the next batch's (RandAugment takes 14, MixUp 2).
_DRAWS_PER_BATCH = 4096


@dataclasses.dataclass(frozen=True)
class Splits:
    """A training and an evaluation pipeline, plus what the model needs to know."""

    train: tf.data.Dataset
    eval: tf.data.Dataset
    num_classes: int
    train_examples: int
    eval_examples: int
    steps_per_epoch: int


def write_digits_tree(root: str, size: int = DIGITS_SIZE, seed: int = 0) -> str:
    """Write scikit-learn's digits as an image-folder tree, once.

    The 1,797 8x8 scans (16 grey levels) that ship in the scikit-learn wheel
    are upscaled to `size` x `size` RGB PNGs and split 80/20, stratified by
    class, into `root/train/<digit>/` and `root/test/<digit>/`. An existing
    complete tree is reused.

    Returns:
        `root`.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    marker = os.path.join(root, f".complete-{size}")
    if os.path.exists(marker):
        return root
    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype("uint8")
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=0.2, stratify=digits.target, random_state=seed
    )
    for split, indices in (("train", train_idx), ("test", test_idx)):
        for i in indices:
            folder = os.path.join(root, split, str(digits.target[i]))
            os.makedirs(folder, exist_ok=True)
            image = tf.image.resize(images[i][..., None], (size, size), method="bilinear")
            image = tf.repeat(tf.cast(tf.round(image), tf.uint8), 3, axis=-1)
            tf.io.write_file(os.path.join(folder, f"{i:04d}.png"), tf.io.encode_png(image))
    with open(marker, "w") as f:
        f.write("ok\n")
    return root


def _seed_generators(augment) -> list:
    """Every Keras `SeedGenerator` of the layers in `augment.layers`, in a fixed order.

    Empty on the other backends: there the layers draw, inside tf.data, from
    TensorFlow generators that Keras creates privately on first use, and
    their own generators hold backend variables that a tf.data map cannot
    assign. Augmented runs resumed on JAX therefore draw other
    augmentations than uninterrupted ones (docs/TRAINING.md).
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return []

    from keras_coatnet._keras_compat import seed_generators

    return seed_generators(*getattr(augment, "layers", ()))


def _seeded(augment, seed: int, epoch: int):
    """`augment` as a function of `(step, (images, labels))` whose draws depend on the step.

    Keras's random layers (RandAugment, MixUp, CutMix) draw from stateful
    SeedGenerators that every augmented batch advances. Shared by all the
    epochs' pipelines and not part of any backup, they made batch `i` of
    epoch `k` depend on how many batches this process had augmented before:
    a run resumed at epoch k augmented its first batch like epoch 0's. Each
    batch now sets every generator to a state derived from `seed`, the epoch
    and the batch's index within the epoch before `augment` draws from it.
    """
    generators = _seed_generators(augment)
    keys = [
        int(np.random.SeedSequence([seed, epoch, k]).generate_state(1)[0] & 0x7FFFFFFF)
        for k in range(len(generators))
    ]

    def augment_step(step, batch):
        for key, generator in zip(keys, generators, strict=True):
            dtype = generator.state.dtype
            counter = tf.cast(step, dtype) * _DRAWS_PER_BATCH
            generator.state.assign(tf.stack([tf.constant(key, dtype), counter]))
        return augment(*batch)

    return augment_step


class UnreadableImageError(ValueError):
    """An image of an image-folder dataset does not decode (a failure while working)."""

    exit_status = 1


# The files tfds.ImageFolder takes as images.
FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def check_images(root: str, error: Exception) -> None:
    """After `error` from the input pipeline, name the image of `root` that caused it.

    The pipeline's decode error does not say which file failed; this decodes
    every image of the folder tree (only after a failure) and raises
    `UnreadableImageError` naming the first that does not decode. Returns if
    every image decodes (the error was something else).
    """
    from concurrent.futures import ThreadPoolExecutor

    from keras_coatnet._errors import first_line

    paths = sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(root)
        for name in names
        if name.lower().endswith(FOLDER_IMAGE_SUFFIXES)
    )

    def problem(path):
        try:
            tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        except (tf.errors.OpError, ValueError) as failure:
            return path, first_line(failure)
        return None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for found in pool.map(problem, paths):
            if found is not None:
                path, message = found
                raise UnreadableImageError(
                    f"image {path!r} of the dataset does not decode ({message}); remove or "
                    "replace it and rerun (a rerun resumes from the last completed epoch)"
                ) from error


def _builder(dataset: str, data_dir: str | None, manual_dir: str | None):
    import tensorflow_datasets as tfds

    if os.path.isdir(dataset):
        return tfds.ImageFolder(dataset)
    if dataset not in tfds.list_builders():
        raise ValueError(
            f"unknown dataset {dataset!r}: give a TFDS name (see tfds.list_builders()) "
            "or an image-folder directory with train/ and test/ (or validation/) splits"
        )
    if data_dir is None:
        raise ValueError(
            f"dataset {dataset!r} needs --data-dir, the TFDS data directory it is prepared in "
            "(nothing is downloaded here)"
        )
    if not os.path.isdir(data_dir):
        raise ValueError(f"--data-dir {data_dir!r} does not exist")
    builder = tfds.builder(dataset, data_dir=data_dir)
    if manual_dir is not None:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
    return builder


def _eval_split(splits) -> str:
    for name in ("validation", "test", "val"):
        if name in splits:
            return name
    raise ValueError(f"no evaluation split among {sorted(splits)}; need validation or test")


def load(
    dataset: str,
    image_size: int,
    batch_size: int,
    augment=None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    seed: int = 0,
    cache: bool = True,
    epochs: int = 1,
    first_epoch: int = 0,
    steps_per_epoch: int | None = None,
) -> Splits:
    """Build training and evaluation pipelines with static batch shapes.

    Decoding and resizing run in parallel; decoded images are cached in
    memory when `cache`. The training pipeline runs epochs `first_epoch` ..
    `epochs - 1` back to back, each shuffled with a seed derived from `seed`
    and the epoch number, so a run resumed at epoch k sees the same batches
    as an uninterrupted one. Batches use `drop_remainder=True` (static shapes
    for TPU and XLA), pass through `augment` (a function on
    `(images, one_hot_labels)` batches), and are prefetched. The Keras
    SeedGenerators that `augment` draws from are reset before each batch to
    a state derived from `seed`, the epoch and the batch's index, so
    augmentation, too, is the same in a resumed run.
    """
    builder = _builder(dataset, data_dir, manual_dir)
    splits = builder.info.splits
    if "train" not in splits:
        raise ValueError(f"dataset {dataset!r} has no train split: {sorted(splits)}")
    eval_name = _eval_split(splits)
    num_classes = builder.info.features["label"].num_classes
    train_examples = splits["train"].num_examples
    steps = train_examples // batch_size
    if steps == 0:
        raise ValueError(
            f"batch size {batch_size} is larger than the {train_examples} training images"
        )
    steps = min(steps, steps_per_epoch or steps)
    auto = tf.data.AUTOTUNE

    def decode(image, label):
        image = tf.image.resize(image, (image_size, image_size), method="bicubic")
        image = tf.clip_by_value(image, 0.0, 255.0)
        return image, tf.one_hot(label, num_classes)

    def decoded(split):
        ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        ds = ds.map(decode, num_parallel_calls=auto)
        return ds.cache() if cache else ds

    train = decoded("train")

    def one_epoch(epoch):
        ds = train.shuffle(
            min(train_examples, 10_000),
            seed=seed * 100_003 + epoch,
            reshuffle_each_iteration=False,
        )
        ds = ds.batch(batch_size, drop_remainder=True)
        if augment is not None:
            # Serial: parallel calls would race on the shared generator states
            # (op determinism, on for CPU training, serializes this map anyway).
            ds = ds.enumerate().map(_seeded(augment, seed, epoch))
        return ds.take(steps)

    # One pipeline per remaining epoch (tf.data seeds must be Python ints),
    # read in order: epoch e's `steps` batches, then epoch e + 1's.
    remaining = range(first_epoch, max(epochs, first_epoch + 1))
    order = tf.data.Dataset.range(len(remaining)).flat_map(
        lambda i: tf.data.Dataset.from_tensors(i).repeat(steps)
    )
    train_ds = tf.data.Dataset.choose_from_datasets([one_epoch(e) for e in remaining], order)
    return Splits(
        train=train_ds.prefetch(auto),
        eval=decoded(eval_name).batch(batch_size).prefetch(auto),
        num_classes=num_classes,
        train_examples=train_examples,
        eval_examples=splits[eval_name].num_examples,
        steps_per_epoch=steps,
    )
