"""The SavedModel's float32 graph for the convolution stages: fewer passes over the largest maps.

TensorFlow's CPU kernels run each elementwise op as its own pass over
memory, and without oneDNN (off by default on CPUs without AVX512_VNNI /
AVX512_BF16 / AMX) nothing fuses a GELU into the matmul before it. The
stem and the MBConv stages hold the model's largest maps (CoAtNet-0 at
224: 112x112x256 floats in S1), so there every pass counts. While a
SavedModel is traced inside `tf_serving_graph`, the stem and every MBConv
block run a TensorFlow-only branch whose weights are prepared once, at
export, in float64:

- every BatchNorm folded into the convolution next to it, as the layers'
  own inference path does, but computed once instead of on every call
  (the folding reads variables, so Grappler cannot fold it away);
- the 1x1 convolutions as 2-D `MatMul` + `BiasAdd`, which Grappler fuses
  into one `_FusedMatMul` (the layers add the bias after a reshape, a
  separate pass);
- the exact GELU in three passes instead of five: with `z = y / sqrt(2)`,
  `gelu(y) = (z + z erf(z)) / sqrt(2)`; the `1/sqrt(2)` before it goes into
  the kernel and bias that produce `y`, the one after it into the next
  linear map (depthwise kernel, squeeze-excite reduction, projection);
- the stem's symmetric padding as its convolution's explicit padding
  instead of a `Pad` copy of the image. (The stride-2 depthwise
  convolutions keep their `Pad`: with oneDNN on, TensorFlow 2.21 aborts on
  a depthwise convolution with explicit padding followed by a bias add,
  "tensor_format.h:428 Check failed ... Invalid index from the dimension".)

The function is the same; the logits move by rounding only (the export
tests hold them to the Keras model). Only the SavedModel uses this graph:
the ONNX, LiteRT and OpenVINO exports trace the layers' own inference path,
whose GELU form ONNX Runtime fuses. Layers computing in another dtype than
float32 keep their own path.
"""

from __future__ import annotations

import contextlib

import numpy as np

from keras_coatnet._keras_compat import walk_layers
from keras_coatnet.layers import MBConvBlock, Stem
from keras_coatnet.layers._common import SQRT_HALF


@contextlib.contextmanager
def tf_serving_graph(model):
    """Within the block, the stem and MBConv blocks of `model` run the prepared graph.

    Yields the prepared variables (they must stay alive until the
    SavedModel is written).
    """
    layers = [
        layer
        for layer in walk_layers(model)
        if isinstance(layer, (MBConvBlock, Stem)) and layer.compute_dtype == "float32"
    ]
    variables = []
    try:
        for layer in layers:
            prepare = _stem if isinstance(layer, Stem) else _mbconv
            branch, weights = prepare(layer)
            variables.extend(weights)
            layer.inference_branch = branch
        yield variables
    finally:
        for layer in layers:
            layer.inference_branch = None


def _array(variable):
    return np.asarray(variable.numpy(), dtype="float64")


def _affine(layer):
    """`(scale, offset)` of a BatchNorm in inference mode, float64."""
    scale = 1.0 / np.sqrt(_array(layer.moving_variance) + layer.epsilon)
    if layer.scale:
        scale = scale * _array(layer.gamma)
    offset = -_array(layer.moving_mean) * scale
    if layer.center:
        offset = offset + _array(layer.beta)
    return scale, offset


class _Activation:
    """An activation and the factor its output carries.

    For the exact GELU the input is expected pre-scaled by `1/sqrt(2)` and
    the output is `sqrt(2) gelu`: `in_scale` goes into what produces the
    input, `out_scale` into the next linear map.
    """

    def __init__(self, name, approximate_gelu):
        import tensorflow as tf

        self.in_scale = self.out_scale = 1.0
        if name == "gelu" and not approximate_gelu:
            self.in_scale = self.out_scale = SQRT_HALF
            self.fn = lambda z: z + z * tf.math.erf(z)
        elif name == "gelu":
            self.fn = lambda y: tf.nn.gelu(y, approximate=True)
        elif name == "silu":
            self.fn = tf.nn.silu
        elif name == "relu":
            self.fn = tf.nn.relu
        else:
            raise ValueError(f"activation must be 'gelu', 'silu' or 'relu', received: {name!r}")


def _variables(layer, **arrays):
    import tensorflow as tf

    return {
        name: tf.Variable(value.astype("float32"), trainable=False, name=f"{layer.name}_{name}")
        for name, value in arrays.items()
    }


def _explicit_padding(symmetric):
    return [[0, 0], [1, 1], [1, 1], [0, 0]] if symmetric else "SAME"


def _stem(stem):
    import tensorflow as tf

    act = _Activation(stem.activation, stem.approximate_gelu)
    scale, offset = _affine(stem.norm1)
    w = _variables(
        stem,
        conv1=_array(stem.conv1.kernel) * scale * act.in_scale,
        bias1=offset * act.in_scale,
        conv2=_array(stem.conv2.kernel) * act.out_scale,
    )
    symmetric = stem.padding == "symmetric"

    def branch(inputs):
        x = tf.nn.conv2d(inputs, w["conv1"], 2, _explicit_padding(symmetric))
        x = act.fn(tf.nn.bias_add(x, w["bias1"]))
        return tf.nn.conv2d(x, w["conv2"], 1, "SAME")

    return branch, list(w.values())


def _mbconv(block):
    import tensorflow as tf

    act = _Activation(block.activation, block.approximate_gelu)
    hidden, filters = block.hidden_filters, block.filters
    w1 = _array(block.conv1.kernel).reshape(-1, hidden)
    scale1, offset1 = _affine(block.norm1)
    if block.pre_norm_activation:
        # Its input is the activation's output, which carries `out_scale`'s inverse.
        kernel1, bias1 = w1 * scale1 * act.out_scale, offset1
    else:
        scale0, offset0 = _affine(block.pre_norm)
        kernel1 = scale0[:, None] * w1 * scale1
        bias1 = (offset0 @ w1) * scale1 + offset1
    depthwise = _array(block.conv2.kernel)[:, :, :, 0] * act.out_scale  # (3, 3, hidden)
    scale2, offset2 = _affine(block.norm2)
    se = block.se
    reduce = _array(se.reduce.kernel).reshape(hidden, -1)
    if block.se_before_norm:
        # dw -> squeeze-excite on the true depthwise output -> norm -> activation
        arrays = dict(norm_scale=scale2 * act.in_scale, norm_offset=offset2 * act.in_scale)
    else:
        # dw with the norm folded in -> activation -> squeeze-excite
        depthwise = depthwise * scale2 * act.in_scale
        arrays = dict(depthwise_bias=offset2 * act.in_scale)
        reduce = reduce * act.out_scale
    kernel3 = _array(block.conv3.kernel).reshape(hidden, filters) * act.out_scale
    if block.conv3.use_bias:
        arrays["bias3"] = _array(block.conv3.bias)
    w = _variables(
        block,
        kernel1=kernel1 * act.in_scale,
        bias1=bias1 * act.in_scale,
        depthwise=depthwise[:, :, :, None],
        se_reduce=reduce,
        se_reduce_bias=_array(se.reduce.bias),
        se_expand=_array(se.expand.kernel).reshape(-1, hidden),
        se_expand_bias=_array(se.expand.bias),
        kernel3=kernel3,
        **arrays,
    )
    se_act = _Activation(se.activation, False)
    strides = block.dw_strides
    pad_first = strides == 2 and block.padding == "symmetric"
    pool_first = block.strides == 2 and block.stride_mode == "pool"

    def pointwise(x, kernel, bias, channels):
        shape = tf.shape(x)
        y = tf.matmul(tf.reshape(x, (-1, x.shape[-1])), kernel)
        if bias is not None:
            y = tf.nn.bias_add(y, bias)
        return y, (shape[0], shape[1], shape[2], channels)

    def squeeze_excite(x):
        s = tf.reduce_mean(x, axis=(1, 2))
        s = se_act.fn(tf.nn.bias_add(tf.matmul(s, w["se_reduce"]), w["se_reduce_bias"]))
        gate = tf.sigmoid(tf.nn.bias_add(tf.matmul(s, w["se_expand"]), w["se_expand_bias"]))
        return x * gate[:, None, None, :]

    def branch(inputs):
        x = inputs
        if block.pre_norm_activation:
            x = block.pre_norm(x, training=False)
            x = act.fn(x * act.in_scale if act.in_scale != 1.0 else x)
        if pool_first:
            x = tf.nn.avg_pool2d(x, 2, 2, "VALID")
        y, shape = pointwise(x, w["kernel1"], w["bias1"], hidden)
        x = tf.reshape(act.fn(y), shape)
        if pad_first:
            x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        padding = "VALID" if pad_first else "SAME"
        x = tf.nn.depthwise_conv2d(x, w["depthwise"], [1, strides, strides, 1], padding)
        if block.se_before_norm:
            x = squeeze_excite(x)
            x = act.fn(x * w["norm_scale"] + w["norm_offset"])
        else:
            x = squeeze_excite(act.fn(tf.nn.bias_add(x, w["depthwise_bias"])))
        y, shape = pointwise(x, w["kernel3"], w.get("bias3"), filters)
        return tf.reshape(y, shape)

    return branch, list(w.values())


def convolution_stages_per_image(model, images_per_step=1):
    """`images -> model(images)` with the stem and MBConv stages run a few images at a time.

    Those stages' maps outgrow the CPU's caches with the batch (CoAtNet-0
    at 224: 12.8 MB per image for one 112x112x256 map), so at batch 8 every
    unfused pass over them goes to memory and an image costs more than at
    batch 1. Run as a loop over the batch, each step's maps stay in cache;
    the attention stages, whose maps are small and whose matmuls gain from
    the batch, then run on the whole batch.
    """
    import keras
    import tensorflow as tf

    blocks = [layer for layer in model.layers if isinstance(layer, MBConvBlock)]
    if not blocks:
        return lambda images: model(images, training=False)
    split = blocks[-1].output
    convolutions = keras.Model(model.inputs, split)
    rest = keras.Model(split, model.outputs)
    step = images_per_step

    def call(images):
        batch = tf.shape(images)[0]
        steps = (batch + step - 1) // step
        padded = tf.pad(images, [[0, steps * step - batch], [0, 0], [0, 0], [0, 0]])
        chunks = tf.reshape(padded, tf.concat([[steps, step], tf.shape(images)[1:]], 0))
        features = tf.map_fn(
            lambda chunk: convolutions(chunk, training=False),
            chunks,
            fn_output_signature=tf.TensorSpec((step, *split.shape[1:]), split.dtype),
            parallel_iterations=1,
        )
        features = tf.reshape(features, tf.concat([[-1], tf.shape(features)[2:]], 0))
        return rest(features[:batch], training=False)

    return call
