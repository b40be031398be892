"""Learned per-channel scaling of a residual branch."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_coatnet")
class LayerScale(keras.layers.Layer):
    """`x * gamma`, one learned scale per channel, initialised to `init_value`.

    Args:
        init_value: Initial value of every scale (timm's `init_values`).

    Call arguments:
        inputs: Tensor whose last axis is the channels.

    Reference:
        Touvron et al., "Going deeper with Image Transformers" (CaiT),
        arXiv 2103.17239.
    """

    def __init__(self, init_value=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_value),
            name="gamma",
        )

    def call(self, inputs):
        return inputs * ops.cast(self.gamma, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"init_value": self.init_value})
        return config
