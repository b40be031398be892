"""Training-step memory with and without rematerialisation, from JAX's compiled memory analysis.

    .venv/bin/python benchmarks/remat_memory.py coatnet-0 --image-size 224 --batches 1 2
    .venv/bin/python benchmarks/remat_memory.py coatnet-5 coatnet-7 --image-size 224 384

For each model, image size, batch and `remat` off/on: the gradient of the
training loss (`model.stateless_call(..., training=True)`, cross-entropy)
is jitted and compiled for abstract shapes (`jax.ShapeDtypeStruct`; the
model is built in a `keras.StatelessScope` without allocating a weight), and
XLA's buffer assignment reports its temporary bytes
(`compiled.memory_analysis().temp_size_in_bytes`). Activations per image
are the slope between two batches: what grows with the batch. What does
not (gradient buffers, the weights' own temporaries) is the intercept.

The CPU compiler, as it comes, undoes rematerialisation: it drops the
optimization barriers `jax.checkpoint` places, then common-subexpression
elimination merges the recomputed forward pass into the first one, and its
concurrency-ordered scheduler runs it early. So this script compiles with
`--xla_disable_hlo_passes=cse --xla_cpu_enable_concurrency_optimized_scheduler=false`
(both settings off and on), the way GPU and TPU compilers keep remat; plus
XLA's cheapest code generation, which does not change buffer assignment.
These are CPU compiler numbers: a GPU or TPU compiler fuses differently,
so treat them as estimates of the same order, not as device measurements.

With `--model-axes 1 8 16` it also adds, without compiling, the bytes of
model state one device holds when `keras_coatnet.training.layout_map`
splits the weights over that many devices: float32 weights, gradients and
AdamW's two moments (16 bytes per trainable parameter; the optimizer's
variables take their weight's layout) plus the non-trainable variables
(BatchNorm statistics). Models are built as the train command builds them,
without the relative-bias cache (`cache_bias=False`, which training never
reads).

Prints one JSON line per (model, size) with the bytes; docs/DISTRIBUTED.md
and docs/BENCHMARKS.md quote them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_disable_hlo_passes=cse --xla_cpu_enable_concurrency_optimized_scheduler=false"
    " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_coatnet as kc  # noqa: E402
from keras_coatnet._keras_compat import discard_uninitialized  # noqa: E402


def abstract(values):
    return [jax.ShapeDtypeStruct(tuple(v.shape), v.dtype) for v in values]


def temp_bytes(model, batch: int, size: int) -> tuple[int, float]:
    """Temporary bytes of the compiled gradient step, and the seconds compiling took."""
    weights = abstract(model.trainable_variables)
    state = abstract(model.non_trainable_variables)
    x = jax.ShapeDtypeStruct((batch, size, size, 3), "float32")
    y = jax.ShapeDtypeStruct((batch,), "int32")

    def loss(weights, state, x, y):
        pred, state = model.stateless_call(weights, state, x, training=True)
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, pred)), state

    start = time.perf_counter()
    compiled = jax.jit(jax.grad(loss, has_aux=True)).lower(weights, state, x, y).compile()
    return compiled.memory_analysis().temp_size_in_bytes, time.perf_counter() - start


def state_bytes(model, model_axis: int) -> dict:
    """Bytes of training state on the most loaded device, the weights split over `model_axis`."""
    from keras_coatnet.training.sharding import variable_axes

    split = variable_axes(model, model_axis) if model_axis > 1 else {}

    def on_one(v, per_element):
        n = int(math.prod(v.shape)) * per_element
        return n // model_axis if v.path in split else n

    trainable = sum(on_one(v, 16) for v in model.trainable_variables)
    other = sum(on_one(v, np.dtype(v.dtype).itemsize) for v in model.non_trainable_variables)
    return {"trainable_x16": trainable, "non_trainable": other, "total": trainable + other}


def measure(name: str, size: int, batches: list[int], policy: str, model_axes=()) -> dict:
    keras.config.set_dtype_policy(policy)
    out = {"model": name, "image_size": size, "policy": policy, "batches": batches}
    for remat in (False, True):
        keras.backend.clear_session()
        with keras.StatelessScope(initialize_variables=False):
            model = kc.create_model(
                name, input_shape=(size, size, 3), remat=remat, cache_bias=False
            )
        discard_uninitialized(model.weights)
        if not remat:
            out["params"] = int(sum(math.prod(v.shape) for v in model.trainable_variables))
            out["non_trainable_elements"] = int(
                sum(math.prod(v.shape) for v in model.non_trainable_variables)
            )
            for n in model_axes:
                out.setdefault("state_bytes_per_device", {})[n] = state_bytes(model, n)
        if not batches:
            break
        key = "remat" if remat else "plain"
        temps, seconds = zip(*(temp_bytes(model, b, size) for b in batches), strict=True)
        out[key] = {"temp_bytes": list(temps), "compile_s": [round(s, 1) for s in seconds]}
        if len(batches) > 1:
            per_image = (temps[-1] - temps[0]) / (batches[-1] - batches[0])
            out[key]["per_image_bytes"] = round(per_image)
            out[key]["fixed_bytes"] = round(temps[0] - per_image * batches[0])
        print(json.dumps(out), file=sys.stderr, flush=True)  # progress
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--image-size", type=int, nargs="+", default=[224])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 2], help="none: no compiling")
    parser.add_argument("--policy", default="float32", help="e.g. mixed_bfloat16")
    parser.add_argument("--model-axes", type=int, nargs="*", default=[])
    args = parser.parse_args(argv)
    for name in args.models:
        for size in args.image_size:
            print(
                json.dumps(measure(name, size, args.batches, args.policy, args.model_axes)),
                flush=True,
            )


if __name__ == "__main__":
    main()
