"""Helpers shared by the blocks: activations, padding, pooling."""

from keras import ops


def gelu(x, approximate):
    """GELU, exact (erf) or tanh-approximated."""
    return ops.gelu(x, approximate=approximate)


def pad_symmetric(x, amount=1):
    """Zero-pad H and W by `amount` on every side (PyTorch's `padding=1`)."""
    return ops.pad(x, [[0, 0], [amount, amount], [amount, amount], [0, 0]])


def pool2x2(x, pool_type):
    """2x2 stride-2 pooling, average or max."""
    if pool_type == "max":
        return ops.max_pool(x, pool_size=2, strides=2, padding="valid")
    return ops.average_pool(x, pool_size=2, strides=2, padding="valid")


def pooled_shape(input_shape):
    """Shape after 2x2 stride-2 pooling of an NHWC shape."""
    batch, height, width, channels = input_shape
    return (batch, height // 2, width // 2, channels)
