"""The pre-norm Transformer block with relative attention."""

import keras

from keras_coatnet.layers._common import gelu, pool2x2, pooled_shape
from keras_coatnet.layers.attention import RelativeAttention
from keras_coatnet.layers.drop_path import DropPath


@keras.saving.register_keras_serializable(package="keras_coatnet")
class TransformerBlock(keras.layers.Layer):
    """Pre-norm Transformer block over an NHWC map, paper eq. (4) and A.1.

    `x <- shortcut(x) + DropPath(Attention(Pool(LN(x))))`, then
    `x <- x + DropPath(FFN(LN(x)))` with FFN = dense x`expand_ratio` ->
    GELU -> dense. With `strides=2` the attention input is 2x2-pooled after
    the norm and the shortcut is `Proj(Pool(x))`; with `strides=1` and a
    width change (CoAtNet-6/7's S3) the shortcut is `Proj(x)`.

    Args:
        input_filters: Channels of the input.
        filters: Channels of the output.
        strides: 1 or 2.
        head_size: Channels per attention head. Defaults to `32`.
        expand_ratio: FFN expansion. Defaults to `4.0`.
        drop_path_rate: Stochastic depth rate of both branches.
        ln_epsilon: LayerNorm epsilon. Defaults to `1e-6`.
        approximate_gelu: Use the tanh GELU. Defaults to `False`.
        pool_type: `"avg"` or `"max"` downsampling. Defaults to `"avg"`.
        cache_bias: Cache the relative bias for inference. Defaults to `True`.

    Call arguments:
        inputs: NHWC map with `input_filters` channels.
        training: Python bool, for drop path and the bias cache.
    """

    def __init__(
        self,
        input_filters,
        filters,
        strides=1,
        head_size=32,
        expand_ratio=4.0,
        drop_path_rate=0.0,
        ln_epsilon=1e-6,
        approximate_gelu=False,
        pool_type="avg",
        cache_bias=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, received: {strides!r}")
        self.input_filters = input_filters
        self.filters = filters
        self.strides = strides
        self.head_size = head_size
        self.expand_ratio = expand_ratio
        self.drop_path_rate = drop_path_rate
        self.ln_epsilon = ln_epsilon
        self.approximate_gelu = approximate_gelu
        self.pool_type = pool_type
        self.cache_bias = cache_bias
        dt = self.dtype_policy
        self.shortcut = None
        if input_filters != filters:
            self.shortcut = keras.layers.Dense(filters, name="shortcut", dtype=dt)
        self.norm1 = keras.layers.LayerNormalization(epsilon=ln_epsilon, name="norm1", dtype=dt)
        self.attn = RelativeAttention(
            filters, head_size=head_size, cache_bias=cache_bias, name="attn", dtype=dt
        )
        self.norm2 = keras.layers.LayerNormalization(epsilon=ln_epsilon, name="norm2", dtype=dt)
        self.fc1 = keras.layers.Dense(int(filters * expand_ratio), name="fc1", dtype=dt)
        self.fc2 = keras.layers.Dense(filters, name="fc2", dtype=dt)
        self.drop_path = DropPath(drop_path_rate, name="drop_path", dtype=dt)

    def build(self, input_shape):
        pooled = pooled_shape(input_shape) if self.strides == 2 else tuple(input_shape)
        if self.shortcut is not None:
            self.shortcut.build(pooled)
        self.norm1.build(input_shape)
        self.attn.build(pooled)
        out = pooled[:-1] + (self.filters,)
        self.norm2.build(out)
        self.fc1.build(out)
        self.fc2.build(out[:-1] + (int(self.filters * self.expand_ratio),))

    def call(self, inputs, training=None):
        shortcut = inputs
        x = self.norm1(inputs)
        if self.strides == 2:
            shortcut = pool2x2(shortcut, self.pool_type)
            x = pool2x2(x, self.pool_type)
        if self.shortcut is not None:
            shortcut = self.shortcut(shortcut)
        # attention
        x = shortcut + self.drop_path(self.attn(x, training=training), training=training)
        # feed-forward
        y = self.fc2(gelu(self.fc1(self.norm2(x)), self.approximate_gelu))
        return x + self.drop_path(y, training=training)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        return (batch, height // self.strides, width // self.strides, self.filters)

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_filters": self.input_filters,
                "filters": self.filters,
                "strides": self.strides,
                "head_size": self.head_size,
                "expand_ratio": self.expand_ratio,
                "drop_path_rate": self.drop_path_rate,
                "ln_epsilon": self.ln_epsilon,
                "approximate_gelu": self.approximate_gelu,
                "pool_type": self.pool_type,
                "cache_bias": self.cache_bias,
            }
        )
        return config
