"""Run by test_training: MirroredStrategy over 2 logical CPUs vs one device.

A separate process, because logical devices must be set before TensorFlow
initializes its devices. Prints the max weight differences.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras  # noqa: E402
import numpy as np  # noqa: E402
from helpers import TINY, images  # noqa: E402

import keras_coatnet as kc  # noqa: E402


def _weights(model, trainable=False):
    variables = model.trainable_weights if trainable else model.weights
    return [np.asarray(v) for v in variables if "cache" not in v.path and "cached" not in v.path]


def run(strategy, sync):
    """Three epochs of two batches of 8 (4 per replica); returns the weights.

    Also the largest change of a trainable weight, the control that it trained.
    """
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = kc.CoAtNet(TINY, input_shape=(64, 64, 3), classes=10, sync_batchnorm=sync)
        model.compile(
            optimizer=keras.optimizers.SGD(0.05),
            loss=keras.losses.CategoricalCrossentropy(),
        )
    initial = _weights(model, trainable=True)
    x = images((16, 64, 64, 3), seed=1)
    y = np.eye(10, dtype="float32")[np.arange(16) % 10]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model.fit(ds, epochs=3, verbose=0, shuffle=False)
    final = _weights(model, trainable=True)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(final, initial, strict=True))
    return _weights(model), moved


# ReductionToOneDevice: with two CPU replicas, collective all-reduces of the
# gradients and of synchronized BatchNorm can be issued in different orders
# on the two devices and abort ("Shape mismatch in the collective instance").
one, moved = run(tf.distribute.OneDeviceStrategy("/cpu:0"), False)
two, _ = run(
    tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    ),
    True,
)
unsync, _ = run(
    tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    ),
    False,
)
print("sync", max(float(np.abs(a - b).max()) for a, b in zip(one, two, strict=True)))
print("unsync", max(float(np.abs(a - b).max()) for a, b in zip(one, unsync, strict=True)))
print("moved", moved)  # the largest change of a trainable weight from its initial value
