"""Op-level profile of keras_coatnet on CPU, and A/B timing of its fast paths.

    python benchmarks/profile_ops.py coatnet_0_224 --batch 1            # inference profile
    python benchmarks/profile_ops.py coatnet_0_224 --batch 8 --train    # training-step profile
    python benchmarks/profile_ops.py coatnet_0_224 --batch 1 --ab       # fast paths on vs off

Inference: the model is traced with frozen relative biases (as exported),
its variables folded to constants, and the graph run in a TF1 session with
FULL_TRACE step stats, so every executed kernel is timed after Grappler's
rewrites (the kernel names show the fusions, e.g. `_MklNativeFusedMatMul`).
Times are grouped by the kind of work (GELU, BatchNorm, matmul, ...) that
the original graph node belonged to. Training: `tf.profiler` traces three
`train_on_batch` steps; kernel times are read from the trace's xplane.

`--ab` times, interleaved in one process on the same weights, the model with
each fast path on and off: the BatchNorm folding at inference
(`MBConvBlock.fold_batch_norm`, `Stem.fold_batch_norm`) and, with
`--train`, the fused training BatchNorm (`BatchNorm.fused`). The other
changes (GELU form, Dense on tokens) have no switch; `coatnet bench`
measures the whole against timm.

Every BatchNorm statistic, scale and bias is randomized first: at their
initial zeros Grappler removes bias adds and the profile would show
fusions that trained weights do not get.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_coatnet.layers import BatchNorm, MBConvBlock, Stem  # noqa: E402
from keras_coatnet.model import create_model  # noqa: E402
from keras_coatnet.serving.frozen import frozen_biases  # noqa: E402

KINDS = (  # (substring of the node name, kind), first match wins
    ("gradient_tape", "backward"),
    ("adam", "optimizer"),
    ("Erf", "gelu"),
    ("gelu", "gelu"),
    ("batchnorm", "batchnorm"),
    ("FusedBatchNorm", "batchnorm"),
    ("moments", "batchnorm"),
    ("norm", "layernorm / norm"),
    ("attn", "attention"),
    ("Pad", "padding"),
    ("Pool", "pooling"),
)


def randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype("float32"))
        elif "gamma" in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
        elif "moving_mean" in v.path or "beta" in v.path or v.path.endswith("bias"):
            v.assign(rng.normal(0, 0.2, v.shape).astype("float32"))


def kind(name, kernel):
    for key, value in KINDS:
        if key in name or key in kernel:
            return value
    if "MatMul" in kernel:
        return "matmul (dense, 1x1 conv)"
    if "Conv" in kernel:
        return "convolution"
    return "other"


def report(times, kernels, total_ms, top):
    by_kind = collections.Counter()
    by_kernel = collections.Counter()
    for name, ms in times.items():
        by_kind[kind(name, kernels[name])] += ms
        by_kernel[kernels[name]] += ms
    busy = sum(times.values())
    print(f"wall {total_ms:.1f} ms per call; kernels {busy:.1f} ms (2 threads may overlap)")
    print("\nby kind of work:")
    for k, ms in by_kind.most_common():
        print(f"  {k:28s} {ms:8.2f} ms {100 * ms / busy:5.1f}%")
    print("\nby kernel:")
    for k, ms in by_kernel.most_common(top):
        print(f"  {k:40s} {ms:8.2f} ms {100 * ms / busy:5.1f}%")
    print("\nslowest nodes:")
    for name, ms in sorted(times.items(), key=lambda t: -t[1])[:top]:
        print(f"  {ms:7.2f} ms  {kernels[name]:32s} {name}")


def profile_inference(model, x, runs, top):
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    with frozen_biases(model):
        fn = tf.function(lambda images: model(images, training=False))
        frozen = convert_variables_to_constants_v2(fn.get_concrete_function(x))
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=2)
    sess = tf.compat.v1.Session(graph=graph, config=config)
    feed = {frozen.inputs[0].name: x}
    out = frozen.outputs[0].name
    for _ in range(3):
        sess.run(out, feed)
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(out, feed)
        walls.append(time.perf_counter() - start)
    times, kernels = collections.Counter(), {}
    options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
    for _ in range(runs):
        meta = tf.compat.v1.RunMetadata()
        sess.run(out, feed, options=options, run_metadata=meta)
        for dev in meta.step_stats.dev_stats:
            for node in dev.node_stats:
                label = node.timeline_label
                kernel = label.split(" = ")[1].split("(")[0] if " = " in label else "?"
                if kernel in ("Const", "_Arg", "_Retval", "NoOp", "Identity", "?"):
                    continue
                times[node.node_name] += node.all_end_rel_micros / 1000 / runs
                kernels[node.node_name] = kernel
    report(times, kernels, 1000 * float(np.median(walls)), top)


def profile_training(model, x, y, top):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    for _ in range(3):
        model.train_on_batch(x, y)
    walls = []
    for _ in range(3):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        walls.append(time.perf_counter() - start)
    logdir = tempfile.mkdtemp(prefix="coatnet_profile_")
    tf.profiler.experimental.start(logdir)
    for _ in range(3):
        model.train_on_batch(x, y)
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    times, kernels = collections.Counter(), {}
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name:  # executor bookkeeping, not a kernel
                    continue
                node, kernel = name.rsplit(":", 1)
                times[node] += event.duration_ps / 1e9 / 3
                kernels[node] = kernel
    report(times, kernels, 1000 * float(np.median(walls)), top)


def ab(name, size, batch, train, rounds):
    """Median ms per call with each fast path on and off, interleaved."""
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(batch) % 1000, 1000)
    switches = (
        [("BatchNorm.fused", (BatchNorm,), "fused")]
        if train
        else [("fold_batch_norm", (MBConvBlock, Stem), "fold_batch_norm")]
    )
    label, classes, attr = switches[0]
    fns, weights = {}, None
    for on in (False, True):
        for cls in classes:
            setattr(cls, attr, on)
        keras.utils.set_random_seed(0)
        model = create_model(name, input_shape=(size, size, 3), classifier_activation=None)
        randomize(model)
        if weights is None:
            weights = model.get_weights()
        model.set_weights(weights)
        if train:
            model.compile(
                optimizer=keras.optimizers.AdamW(1e-4),
                loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                jit_compile=False,
            )
            model.train_on_batch(x, y)  # traced with the switch as set now
            fns[on] = lambda m=model: m.train_on_batch(x, y)
        else:
            fn = tf.function(lambda images, m=model: m(images, training=False))
            fn(x)  # traced with the switch as set now
            fns[on] = lambda f=fn: f(x).numpy()
    for cls in classes:
        setattr(cls, attr, True)
    if not train:
        outs = {on: fn() for on, fn in fns.items()}
        scale = float(np.abs(outs[False]).max())
        diff = float(np.abs(outs[True] - outs[False]).max())
        print(f"max abs diff on vs off: {diff:.2e} (logit scale {scale:.2f})")
    times = {on: [] for on in fns}
    for _ in range(rounds):
        for on, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[on].append(time.perf_counter() - start)
    off, on = (1000 * float(np.median(times[k])) for k in (False, True))
    print(f"{label} off: {off:.1f} ms, on: {on:.1f} ms, speed-up {off / on:.2f}x ({rounds} rounds)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="coatnet_0_224")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--train", action="store_true", help="profile one training step")
    p.add_argument("--ab", action="store_true", help="time the fast paths on and off")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    print(f"{args.model} at {args.size}, batch {args.batch}, TF {tf.__version__}, 2 threads")
    if args.ab:
        ab(args.model, args.size, args.batch, args.train, max(args.runs, 5))
        return 0
    model = create_model(
        args.model, input_shape=(args.size, args.size, 3), classifier_activation=None
    )
    randomize(model)
    x = np.random.default_rng(0).uniform(0, 255, (args.batch, args.size, args.size, 3))
    x = x.astype("float32")
    if args.train:
        model.compile(
            optimizer=keras.optimizers.AdamW(1e-4),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            jit_compile=False,
        )
        y = keras.utils.to_categorical(np.arange(args.batch) % 1000, 1000)
        profile_training(model, x, y, args.top)
    else:
        profile_inference(model, x, args.runs, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
