"""keras_coatnet: CoAtNet (Dai et al., arXiv 2106.04803) for Keras 3.

import keras_coatnet
model = keras_coatnet.CoAtNet1(weights=None, input_shape=(384, 384, 3))

`import keras_coatnet` imports Keras and registers every layer, so a saved
`.keras` file loads right after it. The one exception is the package's own
programs starting up (`coatnet ...`, `python -m keras_coatnet ...`, the
benchmark's workers): `coatnet --help`, `models` and argument errors must not
wait for TensorFlow, so the package then resolves its names on first use
(PEP 562), and each command imports what it needs.
"""

import importlib
import os
import sys

__version__ = "0.1.0"

# The public API: name -> the module that defines it.
_API = {
    "CONFIGS": "keras_coatnet.configs",
    "CoAtNetConfig": "keras_coatnet.configs",
    "StageConfig": "keras_coatnet.configs",
    "get_config": "keras_coatnet.configs",
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
    "export": "keras_coatnet.serving",
    "Profile": "keras_coatnet.profiling",
    "profile": "keras_coatnet.profiling",
    "decode_predictions": "keras_coatnet.imagenet_utils",
    "preprocess_input": "keras_coatnet.imagenet_utils",
    "prepare_image": "keras_coatnet.preprocessing",
    "load_weights": "keras_coatnet.loading",
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


def _command_line_starting() -> bool:
    """Whether this process is one of the package's own programs, importing it.

    The console script runs with `sys.argv[0]` naming it (`.../bin/coatnet`,
    `coatnet.exe`, `coatnet-script.py`); `python -m keras_coatnet` (the same
    command), `python -m keras_coatnet.bench.workers` (the benchmark's
    child processes, which must time timm without TensorFlow) and the CPU
    serving benchmark's `keras_coatnet.bench.serving` and `.serving_workers`
    (each runtime timed in a process without the others) show in
    `sys.orig_argv`.
    """
    script = os.path.splitext(os.path.basename(sys.argv[0]))[0] if sys.argv else ""
    if script in ("coatnet", "coatnet-script"):
        return True
    argv = list(getattr(sys, "orig_argv", ()))
    module = argv[argv.index("-m") + 1 :][:1] if "-m" in argv else []
    return module in (
        ["keras_coatnet"],
        ["keras_coatnet.bench.workers"],
        ["keras_coatnet.bench.serving"],
        ["keras_coatnet.bench.serving_workers"],
    )


if not _command_line_starting():
    for _name in (*_API, *_SUBMODULES):
        __getattr__(_name)  # every layer registered, every name bound now
    del _name
