"""The public model API: `CoAtNet`, the CoAtNet-0..7 factories, `create_model`.

The builder itself lives in `keras_coatnet.builder`; this module adds what
is built on it: a factory per paper variant, timm-style `create_model` and
`list_models`, and `stage_features` for dense tasks.
"""

from __future__ import annotations

import fnmatch

import keras

from keras_coatnet.builder import CoAtNet
from keras_coatnet.configs import CONFIGS, get_config
from keras_coatnet.naming import parse_block_name

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
    "stage_features",
]


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


def stage_features(model: keras.Model) -> keras.Model:
    """A model returning the feature maps of every stage, for dense tasks.

    Args:
        model: A model built by `CoAtNet` or a factory (any `include_top`).

    Returns:
        A `keras.Model` on the same input whose output is a dict
        `{"S0": stem, "S1": 1/4, "S2": 1/8, "S3": 1/16, "S4": 1/32}` sharing
        the model's layers and weights. For CoAtNet-6/7, `"S3"` is the output
        of the transformer part of the split stage.
    """
    names = [layer.name for layer in model.layers]
    last_by_stage = {}
    for layer in model.layers:
        parsed = parse_block_name(layer.name)
        if parsed is not None:
            last_by_stage[parsed[0]] = layer
    if "stem" not in names or not last_by_stage:
        raise ValueError(f"model {model.name!r} is not a CoAtNet built by keras_coatnet")
    outputs = {"S0": model.get_layer("stem").output}
    # Group stages by output resolution; the last stage at a resolution wins.
    by_reduction = {}
    for s in sorted(last_by_stage):
        layer = last_by_stage[s]
        height = layer.output.shape[1]
        by_reduction[height] = layer.output
    for i, height in enumerate(sorted(by_reduction, reverse=True), start=1):
        outputs[f"S{i}"] = by_reduction[height]
    return keras.Model(model.input, outputs, name=f"{model.name}_features")


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
