"""BatchNormalization whose training step runs TensorFlow's fused kernel."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_coatnet")
class BatchNorm(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with a fused training step on TensorFlow.

    Keras 3 normalizes a training batch with separate ops (moments, then
    scale and shift), and the gradient runs through each of them again. On
    the TensorFlow backend this layer computes the same function with the
    fused `FusedBatchNormV3` kernel and its fused gradient: the forward and
    backward pass of one BatchNorm on an 8x56x56x384 map measured 2.8x
    faster on CPU (docs/BENCHMARKS.md). Same variables, same moving-average
    update (biased batch variance, Keras's momentum convention); inference,
    other backends, synchronized statistics, masks and renorm use the
    Keras layer unchanged.

    The class attribute `fused = False` turns the fused step off (for
    comparisons).
    """

    fused = True

    def call(self, inputs, training=None, mask=None):
        if (
            training
            and self.trainable
            and self.fused
            and mask is None
            and not self.synchronized
            and not getattr(self, "renorm", False)  # renorm: Keras 3.14 and later
            and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) in (2, 4)
            and self.axis in (-1, len(inputs.shape) - 1)
        ):
            return self._fused_training_call(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _fused_training_call(self, inputs):
        import tensorflow as tf  # only reached on the TensorFlow backend

        channels = inputs.shape[-1]
        x = ops.cast(inputs, "float32")
        shape = ops.shape(x)
        if len(inputs.shape) == 2:
            x = ops.reshape(x, (-1, 1, 1, channels))
        gamma = ops.cast(self.gamma, "float32") if self.scale else ops.ones((channels,))
        beta = ops.cast(self.beta, "float32") if self.center else ops.zeros((channels,))
        empty = ops.zeros((0,))
        # The raw op: the Python wrapper raises epsilon to cuDNN's minimum (1.001e-5).
        y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=gamma,
            offset=beta,
            mean=empty,
            variance=empty,
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=True,
        )
        # The kernel returns the unbiased variance; Keras averages the biased one.
        count = ops.cast(ops.size(x) // channels, "float32")
        variance = ops.stop_gradient(variance * (ops.maximum(count, 1.0) - 1.0) / count)
        mean = ops.stop_gradient(mean)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        if len(inputs.shape) == 2:
            y = ops.reshape(y, shape)
        return ops.cast(y, self.compute_dtype)
