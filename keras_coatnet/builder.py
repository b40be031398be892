"""The CoAtNet builder: a `CoAtNetConfig` in, a functional `keras.Model` out.

`keras_coatnet.model` holds the public surface built on it (the factories,
`create_model`, `stage_features`).
"""

from __future__ import annotations

import keras

from keras_coatnet import loading
from keras_coatnet.configs import CoAtNetConfig
from keras_coatnet.layers import MBConvBlock, Preprocessing, Stem, TransformerBlock
from keras_coatnet.layers._common import batch_norm
from keras_coatnet.naming import HEAD_LAYER, block_name
from keras_coatnet.weights import resolve

POOLINGS = (None, "avg", "max")


def _input_shape(config, input_shape, input_tensor, include_preprocessing):
    """Resolve and check the (H, W, C) input shape."""
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "CoAtNet supports only channels_last; keras.config.image_data_format() "
            f"is {keras.config.image_data_format()!r}"
        )
    if input_shape is None and input_tensor is not None:
        input_shape = tuple(input_tensor.shape[1:])
    if input_shape is None:
        input_shape = (config.default_size, config.default_size, 3)
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
    step = config.reduction
    for side, value in (("height", height), ("width", width)):
        if value is None or not isinstance(value, int) or value < step or value % step:
            raise ValueError(
                f"input {side} must be a static multiple of {step} (at least {step}), "
                f"received: {value!r} in input_shape {input_shape}; the relative "
                "attention tables are sized from it"
            )
    if include_preprocessing and channels != 3:
        raise ValueError(f"include_preprocessing=True needs 3 input channels, received: {channels}")
    return input_shape


def _check_args(include_top, resolved, pooling, classes) -> int:
    """Check the arguments; returns the head's class count."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, received: {pooling!r}")
    if classes is None:
        return (resolved.classes if resolved is not None else None) or 1000
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"classes must be None or a positive int, received: {classes!r}")
    return classes


def _stem_and_stages(x, config, drop_path_rate, cache_bias, sync_batchnorm=False, remat=False):
    """S0..S4 (`stage_features` finds the stages again by their names)."""
    x = Stem(
        config.stem_dim,
        hidden_filters=config.stem_hidden_dim,
        activation=config.conv_activation,
        bn_epsilon=config.bn_epsilon,
        bn_momentum=config.bn_momentum,
        approximate_gelu=config.approximate_gelu,
        padding=config.padding,
        sync_batchnorm=sync_batchnorm,
        name="stem",
    )(x)
    total = sum(stage.depth for stage in config.stages)
    index, channels = 0, config.stem_dim
    for s, stage in enumerate(config.stages, start=1):
        for b in range(stage.depth):
            # Rate grows linearly with depth, from 0 to drop_path_rate (timm's linspace).
            rate = drop_path_rate * index / max(total - 1, 1)
            common = dict(
                strides=stage.stride if b == 0 else 1,
                expand_ratio=config.expand_ratio,
                drop_path_rate=rate,
                approximate_gelu=config.approximate_gelu,
                pool_type=config.pool_type,
                sync_batchnorm=sync_batchnorm,
                remat=remat,
                name=block_name(s, b),
            )
            if stage.block_type == "mbconv":
                block = MBConvBlock(
                    channels,
                    stage.dim,
                    expand_from=config.expand_from,
                    se_ratio=config.se_ratio,
                    se_from=config.se_from,
                    se_activation=config.se_activation,
                    se_before_norm=config.se_before_norm,
                    activation=config.conv_activation,
                    pre_norm_activation=config.pre_norm_activation,
                    output_bias=config.conv_output_bias,
                    stride_mode=config.mbconv_stride,
                    bn_epsilon=config.bn_epsilon,
                    bn_momentum=config.bn_momentum,
                    padding=config.padding,
                    **common,
                )
            else:
                block = TransformerBlock(
                    channels,
                    stage.dim,
                    head_size=config.head_size,
                    attention_width=config.attention_width,
                    norm=config.transformer_norm,
                    ln_epsilon=config.ln_epsilon,
                    bn_momentum=config.bn_momentum,
                    shortcut_bias=config.transformer_shortcut_bias,
                    layer_scale=config.layer_scale,
                    relative_bias=config.relative_bias,
                    relative_mlp_dim=config.relative_mlp_dim,
                    cache_bias=cache_bias,
                    **common,
                )
            x = block(x)
            channels, index = stage.dim, index + 1
    return x


def _head_norm(config, sync_batchnorm=False):
    if config.transformer_norm == "batchnorm":
        return batch_norm("head_norm", config.ln_epsilon, config.bn_momentum, None, sync_batchnorm)
    return keras.layers.LayerNormalization(epsilon=config.ln_epsilon, name="head_norm")


def _head(x, config, include_top, pooling, classes, classifier_activation, sync_batchnorm=False):
    if include_top:
        if config.head_hidden_size:
            # The paper's head (timm's NormMlpClassifierHead): pool, norm, tanh pre-logits.
            x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
            x = _head_norm(config, sync_batchnorm)(x)
            x = keras.layers.Dense(
                config.head_hidden_size, activation="tanh", name="head_pre_logits"
            )(x)
        else:
            # timm's rw head: norm every position of the map, then pool.
            x = _head_norm(config, sync_batchnorm)(x)
            x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
        return keras.layers.Dense(classes, activation=classifier_activation, name=HEAD_LAYER)(x)
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def CoAtNet(
    config: CoAtNetConfig,
    include_top: bool = True,
    weights: str | None = None,
    input_tensor=None,
    input_shape=None,
    pooling: str | None = None,
    classes: int | None = None,
    classifier_activation="softmax",
    include_preprocessing: bool = True,
    drop_path_rate: float = 0.0,
    cache_bias: bool = True,
    sync_batchnorm: bool = False,
    remat: bool = False,
    name: str | None = None,
) -> keras.Model:
    """Build a CoAtNet from a `CoAtNetConfig`.

    Args:
        config: The architecture, e.g. `keras_coatnet.CONFIGS["coatnet-0"]`.
        include_top: Include the classifier head (pool, LayerNorm, tanh
            pre-logits, dense). Defaults to `True`.
        weights: `None` (random initialization); `"imagenet"` (timm's
            default tag of the architecture) or a tag such as `"sw_in1k"` /
            `"coatnet_0_rw_224.sw_in1k"`, fetched from the Hugging Face Hub
            and converted without torch (cached after the first load);
            `"hf://owner/repo[@revision]"`, any timm-format CoAtNet
            checkpoint on the Hub; or the path to a timm `model.safetensors`
            or to a `.weights.h5` file of the same architecture. The whole
            file is checked before anything is loaded; relative tables of
            another image size are resized as timm does. See
            `keras_coatnet.weights.resolve`. Defaults to `None`.
        input_tensor: Optional Keras tensor to use as the image input.
        input_shape: `(height, width, channels)`; height and width must be
            static multiples of 32. Defaults to the variant's default size.
        pooling: With `include_top=False`: `None` returns the S4 feature map,
            `"avg"` or `"max"` a pooled vector.
        classes: Number of classes of the head. Defaults to the weights'
            head (11821 for timm's ImageNet-12k tags), else `1000`. Another
            number with pretrained weights keeps their backbone under a
            fresh head (fine-tuning).
        classifier_activation: Activation of the last layer, or `None` for
            logits. Defaults to `"softmax"`.
        include_preprocessing: Include a layer that maps pixels in `[0, 255]`
            to `(x / 255 - mean) / std`, with the mean and std of the
            weights' checkpoint (else of the architecture); the layer also
            keeps the checkpoint's evaluation settings
            (`keras_coatnet.preprocessing.eval_settings`). Defaults to `True`.
        drop_path_rate: Stochastic depth rate of the last block; earlier
            blocks get linearly smaller rates. Defaults to `0.0`.
        cache_bias: Cache each attention block's gathered relative bias for
            inference. Defaults to `True`.
        sync_batchnorm: All-reduce BatchNorm batch statistics across the
            replicas of a distribution strategy, so that N replicas train
            like one device on the global batch (TensorFlow backend).
            Defaults to `False`.
        remat: Rematerialize every block (MBConv and Transformer): a
            training step keeps only each block's input for the backward
            pass and runs the block forward again there, trading about one
            more forward pass for the memory of the blocks' activations.
            Weights, names and outputs are unchanged; the blocks' configs
            record it. Defaults to `False`.
        name: Model name. Defaults to the variant name.

    Returns:
        A `keras.Model`.

    Raises:
        ValueError: For a bad input shape, pooling, class count or weights
            file (missing, or not fitting the model).

    Reference:
        Dai et al., "CoAtNet: Marrying Convolution and Attention for All
        Data Sizes", NeurIPS 2021, arXiv 2106.04803.
    """
    if not isinstance(config, CoAtNetConfig):
        raise ValueError(f"config must be a CoAtNetConfig, received: {config!r}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), received: {drop_path_rate!r}")
    if not isinstance(remat, bool):
        raise ValueError(f"remat must be True or False, received: {remat!r}")
    resolved = resolve(weights, config)
    classes = _check_args(include_top, resolved, pooling, classes)
    input_shape = _input_shape(config, input_shape, input_tensor, include_preprocessing)
    if input_tensor is None:
        inputs = keras.Input(shape=input_shape, name="images")
    elif not keras.backend.is_keras_tensor(input_tensor):
        inputs = keras.Input(tensor=input_tensor, shape=input_shape, name="images")
    else:
        inputs = input_tensor
    x = inputs
    if include_preprocessing:
        settings = resolved.eval_settings if resolved is not None else None
        x = Preprocessing(
            mean=settings.mean if settings else config.mean,
            std=settings.std if settings else config.std,
            eval_settings=settings,
            name="preprocessing",
        )(x)
    x = _stem_and_stages(x, config, drop_path_rate, cache_bias, sync_batchnorm, remat)
    x = _head(x, config, include_top, pooling, classes, classifier_activation, sync_batchnorm)
    model = keras.Model(inputs, x, name=name or config.name.replace("-", "_"))
    if resolved is not None:
        _load(model, resolved, config, include_top, classes, cache_bias)
    return model


def _load(model, resolved, config, include_top, classes, cache_bias):
    """Load the resolved file whole, or its backbone under a new or no head."""
    if include_top and resolved.classes is None:
        raise ValueError(
            f"weights {resolved.source} have no classifier head; use include_top=False"
        )
    if (resolved.classes == classes) if include_top else resolved.classes is None:
        loading.load_weights(model, resolved.path, resolved.structure)
        return
    # Another head (or none): load the file into a model shaped like it, then
    # copy every layer but the classifier.
    source = CoAtNet(
        config,
        input_shape=model.input.shape[1:],
        classes=resolved.classes,
        include_preprocessing=False,
        cache_bias=cache_bias,
    )
    loading.load_weights(source, resolved.path, resolved.structure)
    copy_backbone(source, model)


def copy_backbone(source: keras.Model, target: keras.Model) -> None:
    """Copy the weights of every layer of `target` but its classifier from `source`.

    Layers are matched by name, so `target` may have another head or none
    (`include_top=False`, any pooling); both must share the architecture
    and input size.

    Raises:
        ValueError: If `source` lacks one of `target`'s layers (named).
    """
    for layer in target.layers:
        if not layer.weights or layer.name == HEAD_LAYER:
            continue
        try:
            theirs = source.get_layer(layer.name)
        except ValueError:
            raise ValueError(
                f"model {source.name!r} has no layer {layer.name!r} to copy into "
                f"{target.name!r}; is it the same architecture?"
            ) from None
        layer.set_weights(theirs.get_weights())
