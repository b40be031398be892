"""The pre-norm MBConv block with squeeze-excite."""

import keras
from keras import ops

from keras_coatnet.config import MBConvConfig
from keras_coatnet.layers._common import (
    activation,
    batch_norm,
    batch_norm_affine,
    float32,
    pad_symmetric,
    pool2x2,
    pooled_shape,
    rematerialized,
    scaled,
)
from keras_coatnet.layers.drop_path import DropPath


@keras.saving.register_keras_serializable(package="keras_coatnet")
class SqueezeExcite(keras.layers.Layer):
    """Squeeze-excite: global mean -> 1x1 conv -> act -> 1x1 conv -> sigmoid gate.

    Args:
        filters: Channels of the input and output.
        bottleneck: Channels of the squeezed representation.
        activation: `"silu"` (paper) or `"relu"`. Defaults to `"silu"`.

    Call arguments:
        inputs: NHWC feature map with `filters` channels.
    """

    def __init__(self, filters, bottleneck, activation="silu", **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.bottleneck = bottleneck
        self.activation = activation
        dt = self.dtype_policy
        self.reduce = keras.layers.Conv2D(bottleneck, 1, name="reduce", dtype=dt)
        self.expand = keras.layers.Conv2D(filters, 1, name="expand", dtype=dt)

    def build(self, input_shape):
        self.reduce.build((input_shape[0], 1, 1, self.filters))
        self.expand.build((input_shape[0], 1, 1, self.bottleneck))

    def call(self, inputs):
        # squeeze: (B, 1, 1, C)
        s = ops.mean(inputs, axis=(1, 2), keepdims=True)
        s = activation(self.reduce(s), self.activation)
        # excite
        return inputs * ops.sigmoid(self.expand(s))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"filters": self.filters, "bottleneck": self.bottleneck, "activation": self.activation}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_coatnet")
class MBConvBlock(keras.layers.Layer):
    """Pre-norm inverted bottleneck, paper eq. (5) and appendix A.1.

    `x <- shortcut(x) + DropPath(Conv1x1(SE(DWConv3x3(Conv1x1(BN(x))))))`,
    with BatchNorm + activation after the expansion and the depthwise
    convolution. With `strides=2` the depthwise convolution strides (or, with
    `stride_mode="pool"`, a 2x2 average pool after the pre-norm does) and the
    shortcut is stride-2 pooling followed by a 1x1 convolution when the width
    changes; otherwise the shortcut is the identity.

    The defaults are the paper's block (timm's `coatnet_N_224`); the other
    options express timm's rw variants. `CoAtNetConfig.mbconv`, an
    `MBConvConfig`, holds the arguments other than the channels, `strides`,
    `drop_path_rate`, `sync_batchnorm` and `remat`, under the same names,
    and checks them (as the block does through it).

    Args:
        input_filters: Channels of the input.
        filters: Channels of the output.
        strides: 1 or 2.
        expand_ratio: Expansion of the bottleneck. Defaults to `4.0`.
        expand_from: Expand the `"output"` channels (paper) or the `"input"`
            channels. Defaults to `"output"`.
        se_ratio: Squeeze-excite bottleneck ratio. Defaults to `0.25`.
        se_from: The bottleneck is `se_ratio` times the `"output"` (paper)
            or the `"hidden"` channels. Defaults to `"output"`.
        se_activation: `"silu"` or `"relu"` inside squeeze-excite.
        se_before_norm: Squeeze-excite between the depthwise conv and its
            norm. Defaults to `False`.
        activation: `"gelu"` or `"silu"` after the norms. Defaults to `"gelu"`.
        pre_norm_activation: Also apply `activation` after the pre-norm.
            Defaults to `False`.
        output_bias: Bias on the last 1x1 conv and the shortcut projection.
            Defaults to `True`.
        stride_mode: `"depthwise"` or `"pool"`. Defaults to `"depthwise"`.
        drop_path_rate: Stochastic depth rate of the branch. Defaults to `0`.
        bn_epsilon: BatchNorm epsilon. Defaults to `1e-5`.
        bn_momentum: BatchNorm momentum. Defaults to `0.9`.
        approximate_gelu: Use the tanh GELU. Defaults to `False`.
        padding: `"symmetric"` or `"same"` for the strided depthwise conv.
        pool_type: `"avg"`, `"max"` or `"max3"` for the shortcut pooling.
        sync_batchnorm: Synchronize BatchNorm statistics across replicas.
        remat: Recompute the block's activations in the backward pass of a
            training step instead of keeping them (less memory, about one
            more forward pass). Defaults to `False`.

    Call arguments:
        inputs: NHWC feature map with `input_filters` channels.
        training: Python bool, for BatchNorm and drop path.

    At inference the BatchNorms are folded into the convolutions next to
    them (the pre-norm and `norm1` into the expansion, `norm2` into the
    depthwise kernel) and the 1x1 convolutions run as 2-D matmuls whose
    bias add and GELU TensorFlow fuses into the matmul: the same function
    with 6 fewer passes over the block's largest maps. The class attribute
    `fold_batch_norm = False` runs inference through the layers instead.
    """

    fold_batch_norm = True
    pointwise_as_matmul = True
    # Set by an export while it traces (`serving.tf_graph`): a function of the
    # block's input computing the residual branch at inference.
    inference_branch = None

    def __init__(
        self,
        input_filters,
        filters,
        strides=1,
        expand_ratio=4.0,
        expand_from="output",
        se_ratio=0.25,
        se_from="output",
        se_activation="silu",
        se_before_norm=False,
        activation="gelu",
        pre_norm_activation=False,
        output_bias=True,
        stride_mode="depthwise",
        drop_path_rate=0.0,
        bn_epsilon=1e-5,
        bn_momentum=0.9,
        approximate_gelu=False,
        padding="symmetric",
        pool_type="avg",
        sync_batchnorm=False,
        remat=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.sync_batchnorm = sync_batchnorm
        self.remat = remat
        if strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, received: {strides!r}")
        self.input_filters = input_filters
        self.filters = filters
        self.strides = strides
        self.expand_ratio = expand_ratio
        self.expand_from = expand_from
        self.se_ratio = se_ratio
        self.se_from = se_from
        self.se_activation = se_activation
        self.se_before_norm = se_before_norm
        self.activation = activation
        self.pre_norm_activation = pre_norm_activation
        self.output_bias = output_bias
        self.stride_mode = stride_mode
        self.drop_path_rate = drop_path_rate
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum
        self.approximate_gelu = approximate_gelu
        self.padding = padding
        self.pool_type = pool_type
        MBConvConfig.of(self)  # checks the settings with the config's own checks
        base = filters if expand_from == "output" else input_filters
        self.hidden_filters = int(base * expand_ratio)
        se_base = filters if se_from == "output" else self.hidden_filters
        # Where the stride goes: the depthwise conv, or a pool before conv1.
        self.dw_strides = strides if stride_mode == "depthwise" else 1
        dt = self.dtype_policy

        def bn(name):
            return batch_norm(name, bn_epsilon, bn_momentum, dt, sync_batchnorm)

        self.shortcut = None
        if input_filters != filters:
            self.shortcut = keras.layers.Conv2D(
                filters, 1, use_bias=output_bias, name="shortcut", dtype=dt
            )
        self.pre_norm = bn("pre_norm")
        self.conv1 = keras.layers.Conv2D(
            self.hidden_filters, 1, use_bias=False, name="conv1", dtype=dt
        )
        self.norm1 = bn("norm1")
        symmetric = self.dw_strides == 2 and padding == "symmetric"
        self.conv2 = keras.layers.DepthwiseConv2D(
            3,
            strides=self.dw_strides,
            padding="valid" if symmetric else "same",
            use_bias=False,
            name="conv2",
            dtype=dt,
        )
        self.norm2 = bn("norm2")
        self.se = SqueezeExcite(
            self.hidden_filters,
            int(se_ratio * se_base),
            activation=se_activation,
            name="se",
            dtype=dt,
        )
        self.conv3 = keras.layers.Conv2D(filters, 1, use_bias=output_bias, name="conv3", dtype=dt)
        self.drop_path = DropPath(drop_path_rate, name="drop_path", dtype=dt)

    def build(self, input_shape):
        batch, height, width, _ = input_shape
        if self.shortcut is not None:
            pooled = pooled_shape(input_shape) if self.strides == 2 else input_shape
            self.shortcut.build(pooled)
        self.pre_norm.build(input_shape)
        if self.strides == 2 and self.stride_mode == "pool":
            height, width = scaled(height, 2), scaled(width, 2)
        self.conv1.build((batch, height, width, self.input_filters))
        hidden = (batch, height, width, self.hidden_filters)
        self.norm1.build(hidden)
        pad = 2 if self.dw_strides == 2 and self.padding == "symmetric" else 0
        padded = [None if side is None else side + pad for side in (height, width)]
        self.conv2.build((batch, *padded, self.hidden_filters))
        out = (
            batch,
            scaled(height, self.dw_strides),
            scaled(width, self.dw_strides),
            self.hidden_filters,
        )
        self.norm2.build(out)
        self.se.build(out)
        self.conv3.build(out)

    def _act(self, x):
        return activation(x, self.activation, self.approximate_gelu)

    def call(self, inputs, training=None):
        if self.remat and training:
            return rematerialized(self, self._forward, inputs, training)
        return self._forward(inputs, training)

    def _forward(self, inputs, training=None):
        shortcut = inputs
        if self.strides == 2:
            shortcut = pool2x2(shortcut, self.pool_type)
        if self.shortcut is not None:
            shortcut = self.shortcut(shortcut)
        if not training and self.inference_branch is not None:
            return shortcut + self.inference_branch(inputs)
        if not training and self.fold_batch_norm:
            return shortcut + self._folded_branch(inputs)
        x = self.pre_norm(inputs, training=training)
        if self.pre_norm_activation:
            x = self._act(x)
        if self.strides == 2 and self.stride_mode == "pool":
            x = pool2x2(x, "avg")
        # expand
        x = self._act(self.norm1(self.conv1(x), training=training))
        # depthwise, with squeeze-excite after (paper) or before its norm
        if self.dw_strides == 2 and self.padding == "symmetric":
            x = pad_symmetric(x)
        x = self.conv2(x)
        if self.se_before_norm:
            x = self.se(x)
        x = self._act(self.norm2(x, training=training))
        if not self.se_before_norm:
            x = self.se(x)
        # project
        x = self.conv3(x)
        return shortcut + self.drop_path(x, training=training)

    def _folded_branch(self, inputs):
        """The residual branch at inference, BatchNorms folded into the convolutions."""
        dtype = self.compute_dtype
        w1 = ops.reshape(float32(self.conv1.kernel), (-1, self.hidden_filters))
        scale1, offset1 = batch_norm_affine(self.norm1)
        if self.pre_norm_activation:
            x = self._act(self.pre_norm(inputs, training=False))
            kernel, bias = w1 * scale1, offset1
        else:
            # conv1(x * s0 + c0) = x @ (s0 w1) + c0 @ w1; average pooling commutes with it.
            scale0, offset0 = batch_norm_affine(self.pre_norm)
            x = inputs
            kernel = (scale0[:, None] * w1) * scale1
            bias = ops.matmul(offset0[None, :], w1)[0] * scale1 + offset1
        if self.strides == 2 and self.stride_mode == "pool":
            x = pool2x2(x, "avg")
        x = self._act(ops.add(self._pointwise(x, kernel), ops.cast(bias, dtype)))
        if self.dw_strides == 2 and self.padding == "symmetric":
            x = pad_symmetric(x)
        depthwise = float32(self.conv2.kernel)
        scale2, offset2 = batch_norm_affine(self.norm2)
        if self.se_before_norm:
            x = self.se(self._depthwise(x, depthwise))
            x = x * ops.cast(scale2, dtype) + ops.cast(offset2, dtype)
        else:
            x = self._depthwise(x, depthwise * scale2[:, None])
            x = ops.add(x, ops.cast(offset2, dtype))
        x = self._act(x)
        if not self.se_before_norm:
            x = self.se(x)
        x = self._pointwise(x, ops.reshape(float32(self.conv3.kernel), (self.hidden_filters, -1)))
        if self.conv3.use_bias:
            x = ops.add(x, ops.cast(self.conv3.bias, dtype))
        return x

    def _pointwise(self, x, kernel):
        """A 1x1 convolution by a `(in, out)` kernel: a 2-D matmul, or a convolution."""
        kernel = ops.cast(kernel, self.compute_dtype)
        if not self.pointwise_as_matmul:
            return ops.conv(x, kernel[None, None], strides=1, padding="valid")
        batch, height, width = ops.shape(x)[:3]
        x = ops.matmul(ops.reshape(x, (-1, kernel.shape[0])), kernel)
        return ops.reshape(x, (batch, height, width, kernel.shape[1]))

    def _depthwise(self, x, kernel):
        return ops.depthwise_conv(
            x,
            ops.cast(kernel, self.compute_dtype),
            strides=self.conv2.strides,
            padding=self.conv2.padding,
        )

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        return (batch, scaled(height, self.strides), scaled(width, self.strides), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_filters": self.input_filters,
                "filters": self.filters,
                "strides": self.strides,
                "expand_ratio": self.expand_ratio,
                "expand_from": self.expand_from,
                "se_ratio": self.se_ratio,
                "se_from": self.se_from,
                "se_activation": self.se_activation,
                "se_before_norm": self.se_before_norm,
                "activation": self.activation,
                "pre_norm_activation": self.pre_norm_activation,
                "output_bias": self.output_bias,
                "stride_mode": self.stride_mode,
                "drop_path_rate": self.drop_path_rate,
                "bn_epsilon": self.bn_epsilon,
                "bn_momentum": self.bn_momentum,
                "approximate_gelu": self.approximate_gelu,
                "padding": self.padding,
                "pool_type": self.pool_type,
                "sync_batchnorm": self.sync_batchnorm,
                "remat": self.remat,
            }
        )
        return config
