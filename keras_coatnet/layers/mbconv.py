"""The pre-norm MBConv block with squeeze-excite."""

import keras
from keras import ops

from keras_coatnet.layers._common import gelu, pad_symmetric, pool2x2, pooled_shape
from keras_coatnet.layers.drop_path import DropPath


@keras.saving.register_keras_serializable(package="keras_coatnet")
class SqueezeExcite(keras.layers.Layer):
    """Squeeze-excite: global mean -> 1x1 conv -> SiLU -> 1x1 conv -> sigmoid gate.

    Args:
        filters: Channels of the input and output.
        bottleneck: Channels of the squeezed representation.

    Call arguments:
        inputs: NHWC feature map with `filters` channels.
    """

    def __init__(self, filters, bottleneck, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.bottleneck = bottleneck
        dt = self.dtype_policy
        self.reduce = keras.layers.Conv2D(bottleneck, 1, name="reduce", dtype=dt)
        self.expand = keras.layers.Conv2D(filters, 1, name="expand", dtype=dt)

    def build(self, input_shape):
        self.reduce.build((input_shape[0], 1, 1, self.filters))
        self.expand.build((input_shape[0], 1, 1, self.bottleneck))

    def call(self, inputs):
        # squeeze: (B, 1, 1, C)
        s = ops.mean(inputs, axis=(1, 2), keepdims=True)
        s = ops.silu(self.reduce(s))
        # excite
        return inputs * ops.sigmoid(self.expand(s))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "bottleneck": self.bottleneck})
        return config


@keras.saving.register_keras_serializable(package="keras_coatnet")
class MBConvBlock(keras.layers.Layer):
    """Pre-norm inverted bottleneck, paper eq. (5) and appendix A.1.

    `x <- shortcut(x) + DropPath(Conv1x1(SE(DWConv3x3(Conv1x1(BN(x))))))`,
    with BatchNorm + GELU after the expansion and the depthwise convolution.
    With `strides=2` the depthwise convolution strides and the shortcut is
    2x2 pooling followed by a 1x1 convolution (with bias) when the width
    changes; otherwise the shortcut is the identity.

    Args:
        input_filters: Channels of the input.
        filters: Channels of the output.
        strides: 1 or 2.
        expand_ratio: Expansion of the bottleneck relative to `filters`.
            Defaults to `4.0`.
        se_ratio: Squeeze-excite bottleneck relative to `filters`.
            Defaults to `0.25`.
        drop_path_rate: Stochastic depth rate of the branch. Defaults to `0`.
        bn_epsilon: BatchNorm epsilon. Defaults to `1e-5`.
        bn_momentum: BatchNorm momentum. Defaults to `0.9`.
        approximate_gelu: Use the tanh GELU. Defaults to `False`.
        padding: `"symmetric"` or `"same"` for the strided depthwise conv.
        pool_type: `"avg"` or `"max"` for the shortcut pooling.

    Call arguments:
        inputs: NHWC feature map with `input_filters` channels.
        training: Python bool, for BatchNorm and drop path.
    """

    def __init__(
        self,
        input_filters,
        filters,
        strides=1,
        expand_ratio=4.0,
        se_ratio=0.25,
        drop_path_rate=0.0,
        bn_epsilon=1e-5,
        bn_momentum=0.9,
        approximate_gelu=False,
        padding="symmetric",
        pool_type="avg",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, received: {strides!r}")
        self.input_filters = input_filters
        self.filters = filters
        self.strides = strides
        self.expand_ratio = expand_ratio
        self.se_ratio = se_ratio
        self.drop_path_rate = drop_path_rate
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum
        self.approximate_gelu = approximate_gelu
        self.padding = padding
        self.pool_type = pool_type
        self.hidden_filters = int(filters * expand_ratio)
        dt = self.dtype_policy

        def bn(name):
            return keras.layers.BatchNormalization(
                epsilon=bn_epsilon, momentum=bn_momentum, name=name, dtype=dt
            )

        self.shortcut = None
        if input_filters != filters:
            self.shortcut = keras.layers.Conv2D(filters, 1, name="shortcut", dtype=dt)
        self.pre_norm = bn("pre_norm")
        self.conv1 = keras.layers.Conv2D(
            self.hidden_filters, 1, use_bias=False, name="conv1", dtype=dt
        )
        self.norm1 = bn("norm1")
        dw_padding = "valid" if strides == 2 and padding == "symmetric" else "same"
        self.conv2 = keras.layers.DepthwiseConv2D(
            3, strides=strides, padding=dw_padding, use_bias=False, name="conv2", dtype=dt
        )
        self.norm2 = bn("norm2")
        self.se = SqueezeExcite(self.hidden_filters, int(se_ratio * filters), name="se", dtype=dt)
        self.conv3 = keras.layers.Conv2D(filters, 1, name="conv3", dtype=dt)
        self.drop_path = DropPath(drop_path_rate, name="drop_path", dtype=dt)

    def build(self, input_shape):
        batch, height, width, _ = input_shape
        if self.shortcut is not None:
            pooled = pooled_shape(input_shape) if self.strides == 2 else input_shape
            self.shortcut.build(pooled)
        self.pre_norm.build(input_shape)
        self.conv1.build(input_shape)
        hidden = (batch, height, width, self.hidden_filters)
        self.norm1.build(hidden)
        pad = 2 if self.strides == 2 and self.padding == "symmetric" else 0
        self.conv2.build((batch, height + pad, width + pad, self.hidden_filters))
        out = (batch, height // self.strides, width // self.strides, self.hidden_filters)
        self.norm2.build(out)
        self.se.build(out)
        self.conv3.build(out)

    def call(self, inputs, training=None):
        shortcut = inputs
        if self.strides == 2:
            shortcut = pool2x2(shortcut, self.pool_type)
        if self.shortcut is not None:
            shortcut = self.shortcut(shortcut)
        x = self.pre_norm(inputs, training=training)
        # expand
        x = gelu(self.norm1(self.conv1(x), training=training), self.approximate_gelu)
        # depthwise
        if self.strides == 2 and self.padding == "symmetric":
            x = pad_symmetric(x)
        x = gelu(self.norm2(self.conv2(x), training=training), self.approximate_gelu)
        # squeeze-excite
        x = self.se(x)
        # project
        x = self.conv3(x)
        return shortcut + self.drop_path(x, training=training)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        return (batch, height // self.strides, width // self.strides, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_filters": self.input_filters,
                "filters": self.filters,
                "strides": self.strides,
                "expand_ratio": self.expand_ratio,
                "se_ratio": self.se_ratio,
                "drop_path_rate": self.drop_path_rate,
                "bn_epsilon": self.bn_epsilon,
                "bn_momentum": self.bn_momentum,
                "approximate_gelu": self.approximate_gelu,
                "padding": self.padding,
                "pool_type": self.pool_type,
            }
        )
        return config
