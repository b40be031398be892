"""Pretrained weights: timm's Hub checkpoints, fetched, checked and mapped without torch.

    model = keras_coatnet.create_model("coatnet_0_rw_224", weights="imagenet")

`resolve` turns any `weights=` argument into one `ResolvedWeights` (data: a
file, its format, head classes, evaluation settings) and builds no model.
`registry` lists timm's tags with their evaluation settings; `hub` fetches
files with `huggingface_hub` and checks them against the Hub's hashes;
`checkpoint` reads safetensors as NumPy. Loading into a built model:
`loader` (the head rule), `timm_mapping` (timm names onto our variables) and
`keras_file` (`.weights.h5` files, checked whole). This package's `__init__`
imports no framework; those three import Keras. See docs/WEIGHTS.md.
"""

from keras_coatnet.weights.checkpoint import CONVERTER_VERSION
from keras_coatnet.weights.hub import WeightsFetchError, sha256_of
from keras_coatnet.weights.registry import (
    IMAGENET,
    REGISTRY,
    WeightsEntry,
    closest_tags,
    default_tag,
    eval_defaults,
    get_entry,
    list_pretrained,
    list_weights,
    models_with_weights,
)
from keras_coatnet.weights.resolver import ResolvedWeights, resolve

__all__ = [
    "CONVERTER_VERSION",
    "IMAGENET",
    "REGISTRY",
    "ResolvedWeights",
    "WeightsEntry",
    "WeightsFetchError",
    "closest_tags",
    "default_tag",
    "eval_defaults",
    "get_entry",
    "list_pretrained",
    "list_weights",
    "models_with_weights",
    "resolve",
    "sha256_of",
]
