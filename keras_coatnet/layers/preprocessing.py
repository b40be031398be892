"""Pixel normalisation that keeps the checkpoint's evaluation settings."""

import keras
from keras import ops

from keras_coatnet.preprocessing import EvalSettings


@keras.saving.register_keras_serializable(package="keras_coatnet")
class Preprocessing(keras.layers.Layer):
    """`(x / 255 - mean) / std` per channel, as one affine map.

    The layer also carries the evaluation settings of the weights the model
    was built with (crop, interpolation), so that they are saved with the
    model and `keras_coatnet.preprocessing.eval_settings(model)` finds them
    after a `.keras` round trip. They do not change what the layer computes.

    Args:
        mean: Per-channel mean on the 0..1 scale.
        std: Per-channel standard deviation on the 0..1 scale.
        eval_settings: Optional `EvalSettings` or dict of its fields (its
            `mean` and `std` are taken from this layer's), or `None` when the
            weights' evaluation settings are unknown.

    Call arguments:
        inputs: `(batch, H, W, 3)` pixels in 0..255.
    """

    def __init__(self, mean, std, eval_settings=None, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values, std > 0; received: {mean!r}, {std!r}")
        if isinstance(eval_settings, EvalSettings):
            eval_settings = eval_settings.to_dict()
        self.eval_settings = None
        if eval_settings is not None:
            merged = {**eval_settings, "mean": self.mean, "std": self.std}
            self.eval_settings = EvalSettings.from_dict(merged)
        self._scale = [1.0 / (255.0 * s) for s in self.std]
        self._offset = [-m / s for m, s in zip(self.mean, self.std, strict=True)]

    def call(self, inputs):
        dtype = self.compute_dtype
        x = ops.cast(inputs, dtype)
        return x * ops.cast(self._scale, dtype) + ops.cast(self._offset, dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        settings = self.eval_settings.to_dict() if self.eval_settings is not None else None
        config.update({"mean": list(self.mean), "std": list(self.std), "eval_settings": settings})
        return config
