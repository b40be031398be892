"""CoAtNet layers. Importing this package registers every layer for loading."""

from keras_coatnet.layers.attention import RelativeAttention
from keras_coatnet.layers.batch_norm import BatchNorm
from keras_coatnet.layers.drop_path import DropPath
from keras_coatnet.layers.layer_scale import LayerScale
from keras_coatnet.layers.mbconv import MBConvBlock, SqueezeExcite
from keras_coatnet.layers.preprocessing import Preprocessing
from keras_coatnet.layers.relative_position import relative_position_index
from keras_coatnet.layers.stem import Stem
from keras_coatnet.layers.transformer import TransformerBlock

__all__ = [
    "BatchNorm",
    "DropPath",
    "LayerScale",
    "MBConvBlock",
    "Preprocessing",
    "RelativeAttention",
    "SqueezeExcite",
    "Stem",
    "TransformerBlock",
    "relative_position_index",
]
