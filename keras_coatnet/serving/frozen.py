"""Attention biases as stored data while a model is traced for export.

Every exporter (the SavedModel of `savedmodel.py`, and Keras's ONNX, LiteRT
and OpenVINO exports) traces the model inside `frozen_biases`: each
attention layer reads its `(heads, HW, HW)` bias from a variable filled
once, so the exported graph holds the bias once (as a variable or an
initializer), with no gather of the table and no cache refresh.
"""

from __future__ import annotations

import contextlib

from keras import ops

from keras_coatnet._keras_compat import walk_layers
from keras_coatnet.layers import MBConvBlock, RelativeAttention


@contextlib.contextmanager
def frozen_biases(model):
    """Within the block, every attention layer of `model` reads its bias from a variable.

    Yields the variables, one per attention layer (the layer's own cache
    when it has one).
    """
    layers = [layer for layer in walk_layers(model) if isinstance(layer, RelativeAttention)]
    variables = []
    try:
        for layer in layers:
            variable = layer.serving_bias()
            variables.append(variable)
            layer.frozen_bias = _reader(variable)
        yield variables
    finally:
        for layer in layers:
            layer.frozen_bias = None


def _reader(variable):
    return lambda: ops.convert_to_tensor(variable)


@contextlib.contextmanager
def pointwise_convolutions(model):
    """Within the block, MBConv blocks run their folded 1x1 convolutions as convolutions.

    TensorFlow runs them fastest as 2-D matmuls (the default). In an ONNX
    graph a matmul between two convolutions forces a layout change around
    each depthwise convolution; as convolutions, tf2onnx cancels the
    transposes and ONNX Runtime keeps the whole block in its blocked layout.
    """
    blocks = [layer for layer in walk_layers(model) if isinstance(layer, MBConvBlock)]
    try:
        for block in blocks:
            block.pointwise_as_matmul = False
        yield blocks
    finally:
        for block in blocks:
            del block.pointwise_as_matmul  # back to the class default
