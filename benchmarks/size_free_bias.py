"""What a size-free model pays per call for the relative bias of a grid it does not cache.

A size-free CoAtNet (`input_shape=(None, None, 3)`) caches the bias of its
native grids only; at any other size each attention layer resizes its table
(or runs its bias MLP) and gathers the bias on every call. This times that
work alone, summed over every attention layer of the model, in a
`tf.function` with unknown sides (as a SavedModel runs it) and with the
sides known (as eager calls and JAX do), and beside it the whole forward
pass of the same model at that size, so the share is visible.

    python benchmarks/size_free_bias.py --model coatnet_0_rw_224 --native 224 --sizes 224 384

Prints the CPU and its flags first; each time is the median of `--repeats`
calls after two warm-up calls, batch 1, on this process's threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cpu_serving_report import cpu_flags, cpu_model  # noqa: E402


def _median_ms(fn, repeats):
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="coatnet_0_rw_224")
    parser.add_argument("--native", type=int, default=224, help="the size the tables are at")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 384])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    import tensorflow as tf

    import keras_coatnet as kc
    from keras_coatnet._keras_compat import walk_layers
    from keras_coatnet.layers import RelativeAttention

    print(f"CPU: {cpu_model()}; flags: {', '.join(cpu_flags() or ['unknown'])}")
    print(f"TensorFlow {tf.__version__}, {tf.config.threading.get_intra_op_parallelism_threads()}")
    # Tables stored for --native: a fixed-size model at that size lends its
    # weights to a size-free one whose native size it is.
    native = kc.create_model(args.model, input_shape=(args.native, args.native, 3))
    path = f"/tmp/size_free_bias_{os.getpid()}.weights.h5"
    native.save_weights(path)
    free = kc.create_model(args.model, input_shape=(None, None, 3))
    free.load_weights(path)
    os.remove(path)
    layers = [a for a in walk_layers(free) if isinstance(a, RelativeAttention)]
    print(f"{args.model}, tables at {args.native} px, {len(layers)} attention layers")
    for size in args.sizes:
        print(_time_size(free, layers, args.native, size, args.repeats))


def _time_size(free, layers, native, size, repeats):
    import numpy as np
    import tensorflow as tf

    # Each layer's grid at this size: its stored grid scaled like the image.
    grids = [(a.height * size // native, a.width * size // native) for a in layers]

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.int32)])
    def unknown(sides):
        return [a.grid_bias(sides[i, 0], sides[i, 1]) for i, a in enumerate(layers)]

    @tf.function
    def known():
        return [a.grid_bias(h, w) for a, (h, w) in zip(layers, grids, strict=True)]

    sides = tf.constant(grids, tf.int32)
    images = np.random.RandomState(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    forward = tf.function(lambda x: free(x, training=False))
    return (
        f"{size} px: bias of every layer per call, unknown sides "
        f"{_median_ms(lambda: unknown(sides), repeats):.2f} ms, known sides "
        f"{_median_ms(known, repeats):.2f} ms; whole forward "
        f"{_median_ms(lambda: forward(images), repeats):.1f} ms"
        + (" (native: the forward pass reads the cache)" if size == native else "")
    )


if __name__ == "__main__":
    main()
