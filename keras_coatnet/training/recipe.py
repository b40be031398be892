"""The paper's training recipe, from Keras core: optimizer, schedule, augmentation.

The hyper-parameters (`Recipe`, with the paper's defaults, and the `DIGITS`
preset) are plain data in `keras_coatnet.training.config`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_coatnet.training.config import DIGITS, PAPER, Recipe

__all__ = ["DIGITS", "NO_DECAY", "PAPER", "Recipe", "augmenter", "optimizer"]

# Weight decay stays off norms, biases, layer scales, relative tables and the
# relative-bias MLP (timm's no_weight_decay).
NO_DECAY = ["bias", "gamma", "beta", "relative_table", "relative_mlp"]


def optimizer(recipe: Recipe, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """AdamW with linear warm-up then cosine decay, decay off norms/biases/tables."""
    total = max(recipe.epochs * steps_per_epoch, 1)
    warmup = min(recipe.warmup_steps, total // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total - warmup, 1),
        warmup_target=recipe.learning_rate,
        warmup_steps=warmup,
    )
    opt = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=recipe.weight_decay,
        global_clipnorm=recipe.grad_clip,
        use_ema=recipe.ema_momentum is not None,
        ema_momentum=recipe.ema_momentum or 0.99,
    )
    opt.exclude_from_weight_decay(var_names=NO_DECAY)
    return opt


def augmenter(recipe: Recipe, seed: int = 0):
    """A function on `(images, one_hot_labels)` batches, or `None` for no augmentation.

    The function's `layers` attribute lists its random Keras layers.
    """
    layers = []
    if recipe.randaugment_ops:
        layers.append(
            keras.layers.RandAugment(
                value_range=(0, 255),
                num_ops=recipe.randaugment_ops,
                factor=recipe.randaugment_magnitude / 30.0,
                seed=seed,
            )
        )
    mix = None
    if recipe.cutmix:
        mix = keras.layers.CutMix(factor=1.0, seed=seed + 1)
    elif recipe.mixup_alpha:
        mix = keras.layers.MixUp(alpha=recipe.mixup_alpha, seed=seed + 1)
    if not layers and mix is None:
        return None

    def augment(images, labels):
        for layer in layers:
            images = layer(images, training=True)
        if mix is not None:
            out = mix({"images": images, "labels": labels}, training=True)
            images, labels = out["images"], out["labels"]
        return tf.cast(images, tf.float32), tf.cast(labels, tf.float32)

    # The random layers, for the pipeline to reseed per batch (data.load).
    augment.layers = tuple(layers) + ((mix,) if mix is not None else ())
    return augment
