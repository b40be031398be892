"""Choosing the tf.distribute strategy."""

from __future__ import annotations

import tensorflow as tf


def pick_strategy(tpu: str | None = None) -> tf.distribute.Strategy:
    """TPUStrategy for `tpu`, else MirroredStrategy over 2+ local GPUs, else the default.

    Args:
        tpu: A TPU name or address for `TPUClusterResolver` (`"local"` on a
            TPU VM), or `None`.
    """
    if tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
