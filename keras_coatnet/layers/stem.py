"""The convolution stem (S0)."""

import keras
from keras import ops

from keras_coatnet.config import CONV_ACTIVATIONS, PADDINGS, SIZE_STEP, check_choice
from keras_coatnet.layers._common import (
    activation,
    batch_norm,
    batch_norm_affine,
    check_sides,
    float32,
    pad_symmetric,
    scaled,
)


@keras.saving.register_keras_serializable(package="keras_coatnet")
class Stem(keras.layers.Layer):
    """S0: conv 3x3 stride 2 -> BatchNorm -> activation -> conv 3x3.

    The second convolution has no norm: the first MBConv block's pre-norm
    follows it, as in the paper and timm. The builder takes `activation`,
    `bn_epsilon`, `bn_momentum`, `approximate_gelu` and `padding` from
    `CoAtNetConfig.mbconv`.

    Args:
        filters: Output channels.
        hidden_filters: Channels of the first convolution; `None` for
            `filters` (the paper; timm's rw variants use `filters // 2`).
        activation: `"gelu"` (paper) or `"silu"`. Defaults to `"gelu"`.
        bn_epsilon: BatchNorm epsilon. Defaults to `1e-5`.
        bn_momentum: BatchNorm momentum (Keras convention). Defaults to `0.9`.
        approximate_gelu: Use the tanh GELU. Defaults to `False`.
        padding: `"symmetric"` (PyTorch) or `"same"` (TF) for the stride-2
            convolution. Defaults to `"symmetric"`.
        sync_batchnorm: Synchronize BatchNorm statistics across replicas
            (TensorFlow backend). Defaults to `False`.

    Call arguments:
        inputs: NHWC images, already normalized.
        training: Python bool, for BatchNorm.

    At inference the BatchNorm is folded into the first convolution
    (class attribute `fold_batch_norm`, as in `MBConvBlock`).
    """

    fold_batch_norm = True
    # Set by an export while it traces (`serving.tf_graph`): a function of the
    # input computing the stem at inference.
    inference_branch = None

    def __init__(
        self,
        filters,
        hidden_filters=None,
        activation="gelu",
        bn_epsilon=1e-5,
        bn_momentum=0.9,
        approximate_gelu=False,
        padding="symmetric",
        sync_batchnorm=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # The checks of the same fields of MBConvConfig, where the builder takes them from.
        check_choice("activation", activation, CONV_ACTIVATIONS)
        check_choice("padding", padding, PADDINGS)
        self.sync_batchnorm = sync_batchnorm
        self.filters = filters
        self.hidden_filters = hidden_filters or filters
        self.activation = activation
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum
        self.approximate_gelu = approximate_gelu
        self.padding = padding
        dt = self.dtype_policy
        pad1 = "valid" if padding == "symmetric" else "same"
        self.conv1 = keras.layers.Conv2D(
            self.hidden_filters, 3, strides=2, padding=pad1, use_bias=False, name="conv1", dtype=dt
        )
        self.norm1 = batch_norm("norm1", bn_epsilon, bn_momentum, dt, sync_batchnorm)
        self.conv2 = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False, name="conv2", dtype=dt
        )

    def build(self, input_shape):
        batch, height, width, channels = input_shape
        # Unknown sides (a size-free model): checked when called.
        self.size_free = height is None or width is None
        pad = 2 if self.padding == "symmetric" else 0
        padded = [None if side is None else side + pad for side in (height, width)]
        self.conv1.build((batch, *padded, channels))
        mid = (batch, scaled(height, 2), scaled(width, 2), self.hidden_filters)
        self.norm1.build(mid)
        self.conv2.build(mid)

    def call(self, inputs, training=None):
        if self.size_free:
            # The first layer that would fail on a bad size: the model's size rule here.
            inputs = check_sides(inputs, SIZE_STEP, SIZE_STEP)
        if not training and self.inference_branch is not None:
            return self.inference_branch(inputs)
        x = pad_symmetric(inputs) if self.padding == "symmetric" else inputs
        if not training and self.fold_batch_norm:
            # BatchNorm folded into conv1: one bias add (fused into the conv) instead of two passes.
            scale, offset = batch_norm_affine(self.norm1)
            kernel = float32(self.conv1.kernel) * scale
            x = ops.conv(x, ops.cast(kernel, self.compute_dtype), 2, self.conv1.padding)
            x = ops.add(x, ops.cast(offset, self.compute_dtype))
        else:
            x = self.norm1(self.conv1(x), training=training)
        x = activation(x, self.activation, self.approximate_gelu)
        return self.conv2(x)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        return (batch, scaled(height, 2), scaled(width, 2), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "hidden_filters": self.hidden_filters,
                "activation": self.activation,
                "bn_epsilon": self.bn_epsilon,
                "bn_momentum": self.bn_momentum,
                "approximate_gelu": self.approximate_gelu,
                "padding": self.padding,
                "sync_batchnorm": self.sync_batchnorm,
            }
        )
        return config
