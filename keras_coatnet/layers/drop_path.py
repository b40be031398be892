"""Stochastic depth (drop path) on a residual branch."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_coatnet")
class DropPath(keras.layers.Layer):
    """Drops a whole residual branch per sample while training.

    Kept samples are rescaled by `1 / (1 - rate)` so the expected value is
    unchanged; at inference the layer is the identity.

    Args:
        rate: Probability of dropping the branch, in `[0, 1)`.
        seed: Optional int seed for the random mask.

    Call arguments:
        inputs: The residual branch, a tensor with the batch on axis 0.
        training: Python bool; the branch is dropped only when `True`.

    Reference:
        Huang et al., "Deep Networks with Stochastic Depth", arXiv 1603.09382.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), received: {rate!r}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # No weights to build (as keras.layers.Dropout): a block that skips a
        # rate-0 DropPath must not leave it unbuilt, or model.quantize refuses.
        self.built = True

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        # One draw per sample, broadcast over every other axis.
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype=inputs.dtype)
        mask = ops.floor(keep + noise)
        return inputs / ops.cast(keep, inputs.dtype) * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
