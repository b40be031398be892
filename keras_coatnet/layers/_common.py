"""Helpers shared by the blocks: activations, padding, pooling."""

import keras
from keras import ops


def batch_norm(name, epsilon, momentum, dtype=None, synchronized=False):
    """A BatchNormalization; `synchronized` all-reduces batch statistics over replicas.

    Synchronized BatchNorm exists on the TensorFlow backend only; the
    argument is passed only when set, so the default works on every backend.
    """
    extra = {"synchronized": True} if synchronized else {}
    return keras.layers.BatchNormalization(
        epsilon=epsilon, momentum=momentum, name=name, dtype=dtype, **extra
    )


def gelu(x, approximate):
    """GELU, exact (erf) or tanh-approximated."""
    return ops.gelu(x, approximate=approximate)


def activation(x, name, approximate_gelu=False):
    """Apply the activation `name`: `"gelu"`, `"silu"` or `"relu"`."""
    if name == "gelu":
        return ops.gelu(x, approximate=approximate_gelu)
    if name == "silu":
        return ops.silu(x)
    if name == "relu":
        return ops.relu(x)
    raise ValueError(f"activation must be 'gelu', 'silu' or 'relu', received: {name!r}")


def pad_symmetric(x, amount=1, value=0.0):
    """Pad H and W by `amount` on every side with `value` (PyTorch's `padding=1`)."""
    return ops.pad(x, [[0, 0], [amount, amount], [amount, amount], [0, 0]], constant_values=value)


def pool2x2(x, pool_type):
    """Stride-2 downsampling pool: `"avg"`/`"max"` 2x2, or `"max3"` 3x3 padded by 1.

    `"max3"` pads with -inf, as PyTorch's `MaxPool2d(3, 2, padding=1)` does;
    TF's `same` padding would shift the windows by one pixel.
    """
    if pool_type == "max3":
        x = pad_symmetric(x, 1, float("-inf"))
        return ops.max_pool(x, pool_size=3, strides=2, padding="valid")
    if pool_type == "max":
        return ops.max_pool(x, pool_size=2, strides=2, padding="valid")
    return ops.average_pool(x, pool_size=2, strides=2, padding="valid")


def pooled_shape(input_shape):
    """Shape after stride-2 pooling of an NHWC shape with even sides."""
    batch, height, width, channels = input_shape
    return (batch, height // 2, width // 2, channels)
