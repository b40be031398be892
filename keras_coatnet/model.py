"""The public model API: `CoAtNet`, the CoAtNet-0..7 factories, `create_model`.

`CoAtNet(config, weights=...)` reads top to bottom: resolve the weights to
data (`keras_coatnet.weights.resolve`), build the one model
(`keras_coatnet.network.build`), load the file into it
(`keras_coatnet.weights.loader`). Around it: a factory per paper variant,
timm-style `create_model` and `list_models`, and `stage_features` for dense
tasks.
"""

from __future__ import annotations

import fnmatch

import keras

from keras_coatnet import network
from keras_coatnet import weights as weights_lib
from keras_coatnet.naming import POOLING_LAYERS, STEM, parse_block_name
from keras_coatnet.variants import CONFIGS, CoAtNetConfig, get_config
from keras_coatnet.weights import loader

POOLINGS = (None, *POOLING_LAYERS)

__all__ = [
    "CoAtNet",
    "CoAtNet0",
    "CoAtNet1",
    "CoAtNet2",
    "CoAtNet3",
    "CoAtNet4",
    "CoAtNet5",
    "CoAtNet6",
    "CoAtNet7",
    "create_model",
    "list_models",
    "pyramid_outputs",
    "stage_features",
]


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
            (into its cache), checked and mapped into this model without torch;
            `"hf://owner/repo[@revision]"`, any timm-format CoAtNet
            checkpoint on the Hub; or the path to a timm `model.safetensors`
            or to a `.weights.h5` file of the same architecture. The whole
            file is checked before anything is loaded; relative tables of
            another image size are resized as timm does. See
            `keras_coatnet.weights.resolve`. Defaults to `None`.
        input_tensor: Optional Keras tensor to use as the image input.
        input_shape: `(height, width, channels)`; height and width must be
            static multiples of 32. Defaults to the size its weights are
            evaluated at (`keras_coatnet.weights.eval_defaults(config.name)`).
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
            weights' checkpoint (else `keras_coatnet.weights.eval_defaults`:
            the variant's default tag's, or timm's defaults); the layer also
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
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, received: {pooling!r}")
    # 1. The weights, resolved to data: a local file, its head, its settings.
    resolved = weights_lib.resolve(weights, config)
    classes = _classes(classes, resolved)
    # 2. The one model, normalising as its weights were trained (else the defaults).
    defaults, default_size = weights_lib.eval_defaults(config.name)
    preprocessing = None
    if include_preprocessing:
        settings = resolved.eval_settings if resolved is not None else None
        normalisation = settings or defaults
        preprocessing = {
            "mean": normalisation.mean,
            "std": normalisation.std,
            "eval_settings": settings,
        }
    model = network.build(
        config,
        include_top=include_top,
        input_tensor=input_tensor,
        input_shape=input_shape,
        default_size=default_size,
        # A size-free model stores its tables at the checkpoint's grids.
        native_size=(resolved.image_size if resolved is not None else None) or default_size,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        preprocessing=preprocessing,
        drop_path_rate=drop_path_rate,
        cache_bias=cache_bias,
        sync_batchnorm=sync_batchnorm,
        remat=remat,
        name=name,
    )
    # 3. The file, loaded into it (its head skipped when it does not fit).
    if resolved is not None:
        loader.load(model, resolved, include_top, classes, config.name)
    return model


def _classes(classes, resolved) -> int:
    """The head's class count: `classes`, else the weights' head, else 1000."""
    if classes is None:
        return (resolved.classes if resolved is not None else None) or 1000
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"classes must be None or a positive int, received: {classes!r}")
    return classes


def list_models(pattern: str = "*") -> list[str]:
    """Names of every architecture `create_model` builds, optionally filtered.

    Args:
        pattern: A shell-style wildcard, e.g. `"coatnet_rmlp*"`. Defaults to
            all.

    Returns:
        Sorted names: the paper's `"coatnet-0"`.. `"coatnet-7"`, timm's
        `"coatnet_0_224"`.. and its rw / rmlp variants, and
        `"coatnet-digits"`.
    """
    return sorted(name for name in CONFIGS if fnmatch.fnmatch(name, pattern))


def create_model(name: str, **kwargs) -> keras.Model:
    """Build the architecture `name` (see `list_models`), timm style.

    Args:
        name: A row of `keras_coatnet.CONFIGS`, e.g. `"coatnet_0_rw_224"` or
            `"coatnet-1"` (`-` and `_` are interchangeable).
        **kwargs: The keyword arguments of `CoAtNet` and the factories
            (`include_top`, `weights`, `input_shape`, `classes`, ...).

    Returns:
        A `keras.Model`.

    Raises:
        ValueError: For an unknown name (the message lists the known ones)
            or bad keyword arguments.
    """
    return CoAtNet(get_config(name), **kwargs)


def _stage_outputs(model: keras.Model) -> dict[int, object]:
    """`{stride: output}` of the stem and of the last stage at each stride (KerasTensors).

    Strides from the input (the stem's 2, then each stage's first block),
    known also where the sides are not: a size-free model.
    """
    first_by_stage, last_by_stage = {}, {}
    for layer in model.layers:
        parsed = parse_block_name(layer.name)
        if parsed is not None:
            first_by_stage.setdefault(parsed[0], layer)
            last_by_stage[parsed[0]] = layer
    if STEM not in [layer.name for layer in model.layers] or not last_by_stage:
        raise ValueError(f"model {model.name!r} is not a CoAtNet built by keras_coatnet")
    outputs, reduction = {2: model.get_layer(STEM).output}, 2
    for s in sorted(last_by_stage):
        reduction *= first_by_stage[s].strides
        outputs[reduction] = last_by_stage[s].output  # the last stage at a stride wins
    return outputs


def stage_features(model: keras.Model) -> keras.Model:
    """A model returning the feature maps of every stage, for dense tasks.

    Args:
        model: A model built by `CoAtNet` or a factory (any `include_top`,
            fixed-size or size-free).

    Returns:
        A `keras.Model` on the same input whose output is a dict
        `{"S0": stem, "S1": 1/4, "S2": 1/8, "S3": 1/16, "S4": 1/32}` sharing
        the model's layers and weights. For CoAtNet-6/7, `"S3"` is the output
        of the transformer part of the split stage.
    """
    stages = _stage_outputs(model)
    outputs = {f"S{i}": stages[stride] for i, stride in enumerate(sorted(stages))}
    return keras.Model(model.input, outputs, name=f"{model.name}_features")


def pyramid_outputs(model: keras.Model) -> dict[str, object]:
    """The feature maps by pyramid level, as KerasHub's `FeaturePyramidBackbone` names them.

    `{"P1": stride 2 (the stem), "P2": 4, "P3": 8, "P4": 16, "P5": 32}`:
    level `n` has stride `2**n`. KerasTensors of `model`'s graph, for a
    detection or segmentation head:
    `keras.Model(model.input, pyramid_outputs(model))`, as
    `keras.Model(backbone.inputs, backbone.pyramid_outputs)` in KerasHub.
    The same maps as `stage_features` (`"S0"` is `"P1"`).

    Args:
        model: A model built by `CoAtNet` or a factory (any `include_top`,
            fixed-size or size-free).
    """
    stages = _stage_outputs(model)
    return {f"P{stride.bit_length() - 1}": stages[stride] for stride in sorted(stages)}


_FACTORY_DOC = """Instantiate the CoAtNet-{n} architecture.

    {rows}

    Args:
        include_top: Include the classifier head. Defaults to `True`.
        weights: `None`. The paper's CoAtNet-{n} has no published weights;
            `keras_coatnet.list_pretrained()` lists timm's variants that
            have. A `.weights.h5` file of this architecture also loads.
            Defaults to `None`.
        input_tensor: Optional Keras tensor to use as the image input.
        input_shape: `(height, width, 3)` with sides that are multiples of
            32. Defaults to `(224, 224, 3)`.
        pooling: With `include_top=False`: `None`, `"avg"` or `"max"`.
        classes: Number of classes. Defaults to the weights' head, else `1000`.
        classifier_activation: Activation of the last layer. Defaults to
            `"softmax"`.
        include_preprocessing: Map `[0, 255]` pixels to the model's
            normalization inside the model. Defaults to `True`.
        drop_path_rate: Stochastic depth rate of the last block. Defaults
            to `0.0`.
        name: Model name. Defaults to `"coatnet_{n}"`.

    Returns:
        A `keras.Model`.

    Reference:
        Dai et al., arXiv 2106.04803.
    """


def _factory(n: int):
    variant = f"coatnet-{n}"

    def factory(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=None,
        classifier_activation="softmax",
        include_preprocessing=True,
        drop_path_rate=0.0,
        name=None,
    ):
        return CoAtNet(
            get_config(variant),
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            include_preprocessing=include_preprocessing,
            drop_path_rate=drop_path_rate,
            name=name,
        )

    config = get_config(variant)
    rows = "Layout (S1..): " + ", ".join(f"{s.depth}x{s.block_type}@{s.dim}" for s in config.stages)
    factory.__name__ = factory.__qualname__ = f"CoAtNet{n}"
    factory.__doc__ = _FACTORY_DOC.format(n=n, rows=rows)
    return factory


CoAtNet0 = _factory(0)
CoAtNet1 = _factory(1)
CoAtNet2 = _factory(2)
CoAtNet3 = _factory(3)
CoAtNet4 = _factory(4)
CoAtNet5 = _factory(5)
CoAtNet6 = _factory(6)
CoAtNet7 = _factory(7)
