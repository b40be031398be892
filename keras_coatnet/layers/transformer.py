"""The pre-norm Transformer block with relative attention."""

import keras

from keras_coatnet.config import TransformerConfig
from keras_coatnet.layers._common import (
    batch_norm,
    gelu,
    on_tokens,
    pool2x2,
    pooled_shape,
    rematerialized,
    scaled,
)
from keras_coatnet.layers.attention import RelativeAttention
from keras_coatnet.layers.drop_path import DropPath
from keras_coatnet.layers.layer_scale import LayerScale
from keras_coatnet.naming import ATTENTION


@keras.saving.register_keras_serializable(package="keras_coatnet")
class TransformerBlock(keras.layers.Layer):
    """Pre-norm Transformer block over an NHWC map, paper eq. (4) and A.1.

    `x <- shortcut(x) + DropPath(Attention(Pool(LN(x))))`, then
    `x <- x + DropPath(FFN(LN(x)))` with FFN = dense x`expand_ratio` ->
    GELU -> dense. With `strides=2` the attention input is 2x2-pooled after
    the norm and the shortcut is `Proj(Pool(x))`; with `strides=1` and a
    width change (CoAtNet-6/7's S3) the shortcut is `Proj(x)`.

    The defaults are the paper's block (timm's `coatnet_N_224`); the other
    options express timm's rw variants. `CoAtNetConfig.transformer`, a
    `TransformerConfig`, holds the arguments other than the channels,
    `strides`, `drop_path_rate`, `cache_bias`, `sync_batchnorm` and `remat`,
    under the same names, and checks them (as the block does through it).

    Args:
        input_filters: Channels of the input.
        filters: Channels of the output.
        strides: 1 or 2.
        head_size: Channels per attention head. Defaults to `32`.
        attention_width: q, k, v at the `"output"` width (paper) or at the
            `"input"` width with the output projection widening.
        expand_ratio: FFN expansion. Defaults to `4.0`.
        drop_path_rate: Stochastic depth rate of both branches.
        norm: `"layernorm"` or `"batchnorm"`. Defaults to `"layernorm"`.
        ln_epsilon: Epsilon of the norms. Defaults to `1e-6`.
        bn_momentum: BatchNorm momentum with `norm="batchnorm"`.
        shortcut_bias: Bias on the shortcut projection. Defaults to `True`.
        layer_scale: Initial per-channel scale of both branches, or `None`.
        relative_bias: `"table"` or `"mlp"` (see `RelativeAttention`).
        relative_mlp_dim: Hidden width of the bias MLP. Defaults to `512`.
        approximate_gelu: Use the tanh GELU. Defaults to `False`.
        pool_type: `"avg"`, `"max"` or `"max3"` downsampling. Defaults to
            `"avg"`.
        cache_bias: Cache the relative bias for inference. Defaults to `True`.
        sync_batchnorm: Synchronize BatchNorm statistics across replicas
            (with `norm="batchnorm"`).
        remat: Recompute the block's activations in the backward pass of a
            training step instead of keeping them (less memory, about one
            more forward pass). Defaults to `False`.
        grid: The attention's feature grid `(H, W)` (after the block's
            pooling) where the block is built for unknown sides (a
            size-free model): its relative table is stored at that grid.
            Defaults to `None` (the built sides are the grid).

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
        attention_width="output",
        expand_ratio=4.0,
        drop_path_rate=0.0,
        norm="layernorm",
        ln_epsilon=1e-6,
        bn_momentum=0.9,
        shortcut_bias=True,
        layer_scale=None,
        relative_bias="table",
        relative_mlp_dim=512,
        approximate_gelu=False,
        pool_type="avg",
        cache_bias=True,
        sync_batchnorm=False,
        remat=False,
        grid=None,
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
        self.head_size = head_size
        self.attention_width = attention_width
        self.expand_ratio = expand_ratio
        self.drop_path_rate = drop_path_rate
        self.norm = norm
        self.ln_epsilon = ln_epsilon
        self.bn_momentum = bn_momentum
        self.shortcut_bias = shortcut_bias
        self.layer_scale = layer_scale
        self.relative_bias = relative_bias
        self.relative_mlp_dim = relative_mlp_dim
        self.approximate_gelu = approximate_gelu
        self.pool_type = pool_type
        self.cache_bias = cache_bias
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))
        TransformerConfig.of(self)  # checks the settings with the config's own checks
        dt = self.dtype_policy

        def make_norm(name):
            if norm == "batchnorm":
                return batch_norm(name, ln_epsilon, bn_momentum, dt, sync_batchnorm)
            return keras.layers.LayerNormalization(epsilon=ln_epsilon, name=name, dtype=dt)

        self.shortcut = None
        if input_filters != filters:
            self.shortcut = keras.layers.Dense(
                filters, use_bias=shortcut_bias, name="shortcut", dtype=dt
            )
        self.norm1 = make_norm("norm1")
        self.attn = RelativeAttention(
            filters if attention_width == "output" else input_filters,
            head_size=head_size,
            output_filters=filters,
            bias_type=relative_bias,
            mlp_dim=relative_mlp_dim,
            cache_bias=cache_bias,
            grid=grid,
            name=ATTENTION,
            dtype=dt,
        )
        self.norm2 = make_norm("norm2")
        self.layer_scale1 = self.layer_scale2 = None
        if layer_scale is not None:
            self.layer_scale1 = LayerScale(layer_scale, name="layer_scale1", dtype=dt)
            self.layer_scale2 = LayerScale(layer_scale, name="layer_scale2", dtype=dt)
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
        if self.layer_scale1 is not None:
            self.layer_scale1.build(out)
            self.layer_scale2.build(out)
        self.fc1.build(out)
        self.fc2.build(out[:-1] + (int(self.filters * self.expand_ratio),))

    def call(self, inputs, training=None):
        if self.remat and training:
            return rematerialized(self, self._forward, inputs, training)
        return self._forward(inputs, training)

    def _forward(self, inputs, training=None):
        shortcut = inputs
        x = self.norm1(inputs, training=training)
        if self.strides == 2:
            shortcut = pool2x2(shortcut, self.pool_type)
            x = pool2x2(x, self.pool_type)
        if self.shortcut is not None:
            shortcut = on_tokens(self.shortcut, shortcut, self.input_filters)
        # attention
        y = self.attn(x, training=training)
        if self.layer_scale1 is not None:
            y = self.layer_scale1(y)
        x = shortcut + self.drop_path(y, training=training)
        # feed-forward, on (tokens, channels): the fc1 bias and the GELU fuse into its matmul
        y = on_tokens(self._feed_forward, self.norm2(x, training=training), self.filters)
        return x + self.drop_path(y, training=training)

    def _feed_forward(self, tokens):
        y = self.fc2(gelu(self.fc1(tokens), self.approximate_gelu))
        if self.layer_scale2 is not None:
            y = self.layer_scale2(y)
        return y

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        return (batch, scaled(height, self.strides), scaled(width, self.strides), self.filters)

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
                "attention_width": self.attention_width,
                "expand_ratio": self.expand_ratio,
                "drop_path_rate": self.drop_path_rate,
                "norm": self.norm,
                "ln_epsilon": self.ln_epsilon,
                "bn_momentum": self.bn_momentum,
                "shortcut_bias": self.shortcut_bias,
                "layer_scale": self.layer_scale,
                "relative_bias": self.relative_bias,
                "relative_mlp_dim": self.relative_mlp_dim,
                "approximate_gelu": self.approximate_gelu,
                "pool_type": self.pool_type,
                "cache_bias": self.cache_bias,
                "sync_batchnorm": self.sync_batchnorm,
                "remat": self.remat,
            }
        )
        if self.grid is not None:
            config["grid"] = list(self.grid)
        return config
