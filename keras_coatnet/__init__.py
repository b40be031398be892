"""keras_coatnet: CoAtNet (Dai et al., arXiv 2106.04803) for Keras 3.

import keras_coatnet
model = keras_coatnet.CoAtNet1(weights=None, input_shape=(384, 384, 3))

`import keras_coatnet` imports Keras and registers every layer, so a saved
`.keras` file loads right after it, whatever the process is called. The one
switch is the package's own launcher, `keras_coatnet_cli` (the `coatnet`
console script and the benchmark's workers): `coatnet --help`, `models` and
argument errors must not wait for TensorFlow, so the launcher asks, before
the package is imported, for names resolved on first use (PEP 562), and each
command imports what it needs.
"""

import importlib
import sys

__version__ = "0.1.0"

# The public API: name -> the module that defines it.
_API = {
    "CONFIGS": "keras_coatnet.variants",
    "CoAtNetConfig": "keras_coatnet.config",
    "StageConfig": "keras_coatnet.config",
    "MBConvConfig": "keras_coatnet.config",
    "TransformerConfig": "keras_coatnet.config",
    "HeadConfig": "keras_coatnet.config",
    "get_config": "keras_coatnet.variants",
    "CoAtNet": "keras_coatnet.model",
    "CoAtNet0": "keras_coatnet.model",
    "CoAtNet1": "keras_coatnet.model",
    "CoAtNet2": "keras_coatnet.model",
    "CoAtNet3": "keras_coatnet.model",
    "CoAtNet4": "keras_coatnet.model",
    "CoAtNet5": "keras_coatnet.model",
    "CoAtNet6": "keras_coatnet.model",
    "CoAtNet7": "keras_coatnet.model",
    "create_model": "keras_coatnet.model",
    "list_models": "keras_coatnet.model",
    "stage_features": "keras_coatnet.model",
    "pyramid_outputs": "keras_coatnet.model",
    "export": "keras_coatnet.serving",
    "Profile": "keras_coatnet.profiling",
    "profile": "keras_coatnet.profiling",
    "decode_predictions": "keras_coatnet.imagenet_utils",
    "preprocess_input": "keras_coatnet.imagenet_utils",
    "prepare_image": "keras_coatnet.preprocessing",
    "load_weights": "keras_coatnet.weights.keras_file",
    "resize_relative_table": "keras_coatnet.resize",
    "list_pretrained": "keras_coatnet.weights",
}
# Subpackages reachable as attributes (`keras_coatnet.weights.resolve(...)`).
_SUBMODULES = ("convert", "layers", "preprocessing", "weights", "training", "serving")

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API) | set(_SUBMODULES))


def _starting_lazily() -> bool:
    """Whether the package's own launcher (`keras_coatnet_cli`) asked for a lazy start."""
    return bool(getattr(sys.modules.get("keras_coatnet_cli"), "LAZY", False))


if not _starting_lazily():
    for _name in (*_API, *_SUBMODULES):
        __getattr__(_name)  # every layer registered, every name bound now
    del _name
