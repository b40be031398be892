"""keras_coatnet: CoAtNet (Dai et al., arXiv 2106.04803) for Keras 3.

import keras_coatnet
model = keras_coatnet.CoAtNet1(weights=None, input_shape=(384, 384, 3))
"""

from keras_coatnet import (  # noqa: F401 - layers registers every layer
    convert,
    layers,
    preprocessing,
    weights,
)
from keras_coatnet.configs import CONFIGS, CoAtNetConfig, StageConfig, get_config
from keras_coatnet.export import export
from keras_coatnet.imagenet_utils import decode_predictions, preprocess_input
from keras_coatnet.loading import load_weights
from keras_coatnet.model import (
    CoAtNet,
    CoAtNet0,
    CoAtNet1,
    CoAtNet2,
    CoAtNet3,
    CoAtNet4,
    CoAtNet5,
    CoAtNet6,
    CoAtNet7,
    create_model,
    list_models,
    stage_features,
)
from keras_coatnet.profile import Profile, profile
from keras_coatnet.resize import resize_relative_table
from keras_coatnet.weights import list_pretrained

__version__ = "0.1.0"

__all__ = [
    "CONFIGS",
    "CoAtNet",
    "CoAtNet0",
    "CoAtNet1",
    "CoAtNet2",
    "CoAtNet3",
    "CoAtNet4",
    "CoAtNet5",
    "CoAtNet6",
    "CoAtNet7",
    "CoAtNetConfig",
    "Profile",
    "create_model",
    "export",
    "list_models",
    "list_pretrained",
    "resize_relative_table",
    "StageConfig",
    "decode_predictions",
    "get_config",
    "load_weights",
    "preprocess_input",
    "profile",
    "stage_features",
]
