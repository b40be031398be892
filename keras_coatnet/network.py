"""The CoAtNet network: a `CoAtNetConfig` in, a functional `keras.Model` out.

This module knows nothing of weights: `keras_coatnet.model.CoAtNet` resolves
the `weights=` argument, calls `build` once and loads into what it returns.
Layer names come from `keras_coatnet.naming` (they are the weight format).
"""

from __future__ import annotations

import dataclasses

import keras

from keras_coatnet.config import check_image_size
from keras_coatnet.layers import MBConvBlock, Preprocessing, Stem, TransformerBlock
from keras_coatnet.layers._common import batch_norm
from keras_coatnet.naming import (
    HEAD_LAYER,
    HEAD_NORM,
    HEAD_POOL,
    HEAD_PRE_LOGITS,
    INPUT,
    POOLING_LAYERS,
    PREPROCESSING,
    STEM,
    block_name,
    keras_name,
)
from keras_coatnet.variants import CoAtNetConfig


def _input_shape(default_size, input_shape, input_tensor, include_preprocessing):
    """Resolve and check the (H, W, C) input shape."""
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "CoAtNet supports only channels_last; keras.config.image_data_format() "
            f"is {keras.config.image_data_format()!r}"
        )
    if input_shape is None and input_tensor is not None:
        input_shape = tuple(input_tensor.shape[1:])
    if input_shape is None:
        input_shape = (default_size, default_size, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), received: {input_shape}")
    height, width, channels = input_shape
    if channels is None:
        raise ValueError(f"input_shape needs a static channel count, received: {input_shape}")
    if height in (1, 3) and width is not None and width > 3 and channels > 3:
        raise ValueError(
            f"input_shape {input_shape} looks channels_first; CoAtNet expects "
            "channels_last (height, width, channels)"
        )
    if height is None and width is None:
        return input_shape  # size-free: each call's size is checked by the stem
    for side, value in (("height", height), ("width", width)):
        check_image_size(
            value,
            f"input {side}",
            f" in input_shape {input_shape} (both sides static, or both None for a "
            "size-free model)",
        )
    if include_preprocessing and channels != 3:
        raise ValueError(f"include_preprocessing=True needs 3 input channels, received: {channels}")
    return input_shape


def _stem_and_stages(
    x, config, drop_path_rate, cache_bias, sync_batchnorm=False, remat=False, native_size=None
):
    """S0..S4 (`stage_features` finds the stages again by their names).

    `native_size`: for a size-free model (unknown sides), the image side
    whose feature grids the attention tables are stored at.
    """
    conv = config.mbconv  # the stem's convolution settings too, as in timm
    x = Stem(
        config.stem_dim,
        hidden_filters=config.stem_hidden_dim,
        activation=conv.activation,
        bn_epsilon=conv.bn_epsilon,
        bn_momentum=conv.bn_momentum,
        approximate_gelu=conv.approximate_gelu,
        padding=conv.padding,
        sync_batchnorm=sync_batchnorm,
        name=STEM,
    )(x)
    # Each block takes its sub-config's fields as arguments of the same names.
    blocks = {
        "mbconv": (MBConvBlock, dataclasses.asdict(config.mbconv)),
        "transformer": (
            TransformerBlock,
            {**dataclasses.asdict(config.transformer), "cache_bias": cache_bias},
        ),
    }
    total = sum(stage.depth for stage in config.stages)
    index, channels = 0, config.stem_dim
    reduction = 2  # the stem's stride
    size_free = x.shape[1] is None
    for s, stage in enumerate(config.stages, start=1):
        block, settings = blocks[stage.block_type]
        reduction *= stage.stride
        if size_free and stage.block_type == "transformer":
            side = native_size // reduction
            settings = {**settings, "grid": (side, side)}
        for b in range(stage.depth):
            x = block(
                channels,
                stage.dim,
                strides=stage.stride if b == 0 else 1,
                # Rate grows linearly with depth, from 0 to drop_path_rate (timm's linspace).
                drop_path_rate=drop_path_rate * index / max(total - 1, 1),
                sync_batchnorm=sync_batchnorm,
                remat=remat,
                name=block_name(s, b),
                **settings,
            )(x)
            channels, index = stage.dim, index + 1
    return x


def _head_norm(head, sync_batchnorm=False):
    if head.norm == "batchnorm":
        return batch_norm(HEAD_NORM, head.ln_epsilon, head.bn_momentum, None, sync_batchnorm)
    return keras.layers.LayerNormalization(epsilon=head.ln_epsilon, name=HEAD_NORM)


def _head(x, head, include_top, pooling, classes, classifier_activation, sync_batchnorm=False):
    """The classifier of the `HeadConfig` `head`, or the pooling of `include_top=False`."""
    if include_top:
        if head.hidden_size:
            # The paper's head (timm's NormMlpClassifierHead): pool, norm, tanh pre-logits.
            x = keras.layers.GlobalAveragePooling2D(name=HEAD_POOL)(x)
            x = _head_norm(head, sync_batchnorm)(x)
            x = keras.layers.Dense(head.hidden_size, activation="tanh", name=HEAD_PRE_LOGITS)(x)
        else:
            # timm's rw head: norm every position of the map, then pool.
            x = _head_norm(head, sync_batchnorm)(x)
            x = keras.layers.GlobalAveragePooling2D(name=HEAD_POOL)(x)
        return keras.layers.Dense(classes, activation=classifier_activation, name=HEAD_LAYER)(x)
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name=POOLING_LAYERS["avg"])(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name=POOLING_LAYERS["max"])(x)
    return x


def build(
    config: CoAtNetConfig,
    include_top: bool,
    input_tensor,
    input_shape,
    default_size: int,
    pooling,
    classes: int,
    classifier_activation,
    preprocessing: dict | None,
    drop_path_rate: float,
    cache_bias: bool,
    sync_batchnorm: bool,
    remat: bool,
    name: str | None,
    native_size: int | None = None,
) -> keras.Model:
    """The functional model of `config`, with fresh weights.

    Args:
        default_size: The image side when neither `input_shape` nor
            `input_tensor` gives one (the weights' evaluation size).
        native_size: For a size-free `input_shape` (`(None, None, C)`), the
            image side whose grids the attention tables are stored at.
            Defaults to `default_size`.
        preprocessing: The `Preprocessing` layer's arguments (`mean`, `std`,
            `eval_settings`), or `None` for no preprocessing layer.

    The other arguments are `keras_coatnet.CoAtNet`'s, already checked.
    """
    input_shape = _input_shape(default_size, input_shape, input_tensor, preprocessing is not None)
    if input_tensor is None:
        inputs = keras.Input(shape=input_shape, name=INPUT)
    elif not keras.backend.is_keras_tensor(input_tensor):
        inputs = keras.Input(tensor=input_tensor, shape=input_shape, name=INPUT)
    else:
        inputs = input_tensor
    x = inputs
    if preprocessing is not None:
        x = Preprocessing(**preprocessing, name=PREPROCESSING)(x)
    x = _stem_and_stages(
        x,
        config,
        drop_path_rate,
        cache_bias,
        sync_batchnorm,
        remat,
        native_size=native_size or default_size,
    )
    x = _head(x, config.head, include_top, pooling, classes, classifier_activation, sync_batchnorm)
    return keras.Model(inputs, x, name=name or keras_name(config.name))
