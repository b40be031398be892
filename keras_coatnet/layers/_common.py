"""Helpers shared by the blocks: activations, padding, pooling, rematerialization."""

import keras
from keras import ops

from keras_coatnet._keras_compat import stored_values, unwrapped_error
from keras_coatnet.layers.batch_norm import BatchNorm

SQRT_HALF = 0.7071067811865476


def batch_norm(name, epsilon, momentum, dtype=None, synchronized=False):
    """A BatchNormalization; `synchronized` all-reduces batch statistics over replicas.

    Synchronized BatchNorm exists on the TensorFlow backend only; the
    argument is passed only when set, so the default works on every backend.
    """
    extra = {"synchronized": True} if synchronized else {}
    return BatchNorm(epsilon=epsilon, momentum=momentum, name=name, dtype=dtype, **extra)


def gelu(x, approximate=False):
    """GELU, exact or tanh-approximated.

    The exact form is written as PyTorch computes it, `x/2 (1 + erf(x/sqrt 2))`.
    TensorFlow's `tf.nn.gelu` uses `x/2 erfc(-x/sqrt 2)` instead, which on
    CPU measured 2x slower (5.3 ms against 2.6 ms on a 56x56x384 map) and,
    after a 2-D `MatMul` + `BiasAdd`, is not fused into the matmul the way
    this form is. The two agree within 5e-7 absolute.
    """
    if approximate:
        return ops.gelu(x, approximate=True)
    return 0.5 * x * (1.0 + ops.erf(x * SQRT_HALF))


def activation(x, name, approximate_gelu=False):
    """Apply the activation `name`: `"gelu"`, `"silu"` or `"relu"`."""
    if name == "gelu":
        return gelu(x, approximate_gelu)
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


def scaled(side, stride):
    """A side after a stride: `side // stride`, or `None` for an unknown side (size-free)."""
    return None if side is None else side // stride


def pooled_shape(input_shape):
    """Shape after stride-2 pooling of an NHWC shape with even sides."""
    batch, height, width, channels = input_shape
    return (batch, scaled(height, 2), scaled(width, 2), channels)


def check_sides(inputs, step, minimum):
    """`inputs`, its height and width checked to be multiples of `step` of at least `minimum`.

    Sides known when the graph is traced (always on JAX) are checked in
    Python: a one-line ValueError. Unknown ones (a TensorFlow graph of a
    size-free model, e.g. a SavedModel) get an assertion the output depends
    on, so it fails before any layer meets the shape. The one
    backend-specific line of the layers: keras.ops has no assertion, and
    only TensorFlow graphs have unknown sides.
    """
    height, width = inputs.shape[1], inputs.shape[2]
    rule = f"height and width must be multiples of {step}, at least {minimum}"
    if height is not None and width is not None:
        if height % step or width % step or min(height, width) < minimum:
            error = ValueError(f"image size {height}x{width} is not allowed: {rule}")
            raise unwrapped_error(error)  # one line, not Keras's call report
        return inputs
    import tensorflow as tf

    sides = tf.shape(inputs)[1:3]
    ok = tf.reduce_all(tf.logical_and(sides % step == 0, sides >= minimum))
    check = tf.debugging.Assert(ok, [f"image size is not allowed: {rule}; received (h, w):", sides])
    with tf.control_dependencies([check]):
        return tf.identity(inputs)


def batch_norm_affine(layer):
    """`(scale, offset)` with `layer(x) == x * scale + offset` in inference mode.

    Float32 vectors over the channels, computed from the moving statistics
    as Keras does (`rsqrt(variance + epsilon)`), for folding a BatchNorm
    into the convolution next to it.
    """
    scale = ops.rsqrt(float32(layer.moving_variance) + layer.epsilon)
    if layer.scale:
        scale = scale * float32(layer.gamma)
    offset = -float32(layer.moving_mean) * scale
    if layer.center:
        offset = offset + float32(layer.beta)
    return scale, offset


def float32(variable):
    """The value of `variable` in float32, also inside a mixed-precision autocast scope."""
    return ops.cast(ops.convert_to_tensor(variable), "float32")


def on_tokens(fn, x, channels):
    """Apply `fn` to the `(B, H, W, C)` map `x` as a `(B*H*W, C)` matrix; returns NHWC.

    A `Dense` on a 4-D input runs as `Tensordot` (reshape, `MatMul`, reshape)
    followed by a separate bias add over the whole map; on a 2-D input its
    bias add is a `BiasAdd` that TensorFlow fuses into the `MatMul`, with
    the GELU after it. The reshapes copy nothing.
    """
    batch, height, width = ops.shape(x)[:3]
    y = fn(ops.reshape(x, (-1, channels)))
    return ops.reshape(y, (batch, height, width, ops.shape(y)[-1]))


def rematerialized(layer, forward, inputs, training):
    """`forward(inputs, training=training)`, its activations recomputed in the backward pass.

    Through `keras.remat` (`jax.checkpoint`, `tf.recompute_grad`): the
    backward pass keeps only the block's input and weights and runs the
    block forward again. Keras's own `keras.RematScope` cannot do it for
    these blocks: on JAX it hands `training` to `jax.checkpoint` as a traced
    value (the blocks branch on it in Python), and state assigned inside the
    checkpoint (BatchNorm statistics, drop path's seed) leaks its tracers.
    So `layer` runs in a `keras.StatelessScope` whose assignments come out
    as outputs and are assigned once, here: the recomputation draws the
    same drop-path mask and does not update the statistics a second time.
    """
    weights = layer.trainable_variables
    state = layer.non_trainable_variables
    state_values = stored_values(state)
    assigned = []  # the state variables `forward` assigns, found while tracing it

    def run(inputs, *values):
        mapping = [*zip(weights, values, strict=True), *zip(state, state_values, strict=True)]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            before = [scope.get_current_value(v) for v in state]
            outputs = forward(inputs, training=training)
            changed = [
                (v, scope.get_current_value(v))
                for v, old in zip(state, before, strict=True)
                if scope.get_current_value(v) is not old
            ]
        assigned[:] = [v for v, _ in changed]
        return outputs, [value for _, value in changed]

    outputs, updated = keras.remat(run)(inputs, *stored_values(weights))
    for variable, value in zip(assigned, updated, strict=True):
        variable.assign(value)
    return outputs
