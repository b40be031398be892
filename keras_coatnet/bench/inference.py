"""The inference case: timm and the Keras variants of one model, timed together."""

from __future__ import annotations

import os
import time

import keras
import numpy as np
import tensorflow as tf

from keras_coatnet import profile
from keras_coatnet._timm import import_timm
from keras_coatnet.bench import workers
from keras_coatnet.bench.options import VARIANTS
from keras_coatnet.bench.report import add_rows
from keras_coatnet.bench.timing import log, quiet_block, timed_rounds
from keras_coatnet.bench.workers import timm_model
from keras_coatnet.convert import from_timm


def normalized_inputs(timm_net, batch: int, size: int, seed: int = 0):
    """(pixels 0..255 NHWC, normalized NHWC, normalized NCHW torch tensor)."""
    torch, _ = import_timm()
    rng = np.random.RandomState(seed)
    pixels = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    cfg = timm_net.pretrained_cfg
    mean = np.asarray(cfg["mean"], "float32")
    std = np.asarray(cfg["std"], "float32")
    normalized = ((pixels / 255.0 - mean) / std).astype("float32")
    nchw = torch.from_numpy(np.ascontiguousarray(normalized.transpose(0, 3, 1, 2)))
    return pixels, normalized, nchw


def timm_own_process(name, size, batch, options, train=False):
    """`{"first_s", "times_s", "pid", ...}` of timm in a torch-only child, or None on failure."""
    cfg = {
        "name": name,
        "size": size,
        "batch": batch,
        "train": train,
        "threads": options.threads,
        "warmup": options.warmup,
        "repeats": options.train_repeats if train else options.repeats,
        "budget": options.budget / 2,
    }
    result, error = workers.run("timm", cfg)
    if result is None:
        log(f"   timm in its own process failed:\n{error[-2000:]}")
    return result


def export_in_child(net, name, size, tmp):
    """Export `net`'s weights (built-in preprocessing, logits) in a child; the version dir."""
    torch, _ = import_timm()
    state = os.path.join(tmp, f"{name}_{size}.pt")
    torch.save(net.state_dict(), state)
    cfg = {"name": name, "size": size, "state": state, "path": os.path.join(tmp, f"{name}_{size}")}
    result, error = workers.run("export", cfg)
    if result is None:
        log(f"   SavedModel: export failed, skipped:\n{error[-2000:]}")
        return None
    return result["path"]


def inference_fns(net, model, graph_fn, xla_fn, served, variants, batch, normalized, pixels, out):
    """One callable per variant; each stores its first output in `out[variant]`."""
    torch, _ = import_timm()
    nchw = torch.from_numpy(np.ascontiguousarray(normalized.transpose(0, 3, 1, 2)))
    x_tf = tf.constant(normalized)
    px_tf = tf.constant(pixels)

    def keep(variant, value):
        if variant not in out:
            out[variant] = np.asarray(value)

    def run_timm():
        with torch.inference_mode():
            keep("timm", net(nchw).numpy())

    fns = {"timm": run_timm}
    if "predict" in variants:
        fns["predict"] = lambda: keep(
            "predict", model.predict(normalized, batch_size=batch, verbose=0)
        )
    if "graph" in variants:
        fns["graph"] = lambda: keep("graph", graph_fn(x_tf).numpy())
    if "xla" in variants:
        fns["xla"] = lambda: keep("xla", xla_fn(x_tf).numpy())
    if served is not None:
        fns["savedmodel"] = lambda: keep("savedmodel", served(images=px_tf)["logits"].numpy())
    return fns


def bench_inference(case, options, rows, checks, tmp):
    """Time `case` at each of its batches; append result rows and parity checks."""
    name, size, batches = case.name, case.size, list(case.batches)
    log(f"\n== {name} at {size}x{size}, batches {batches}")
    net = timm_model(name, size)
    start = time.perf_counter()
    model = from_timm(
        net,
        input_shape=(size, size, 3),
        classifier_activation=None,
        include_preprocessing=False,
    )
    log(f"   keras model built and converted in {time.perf_counter() - start:.1f}s")
    macs = profile(model).macs
    log(f"   {macs / 1e9:.3f} GMACs/image (keras_coatnet.profile)")
    variants = [v for v in options.variants if v in VARIANTS]

    served = None
    if "savedmodel" in variants:
        start = time.perf_counter()
        path = export_in_child(net, name, size, tmp)
        if path is None:
            variants.remove("savedmodel")
        else:
            served = tf.saved_model.load(path).signatures["serving_default"]
            elapsed = time.perf_counter() - start
            log(f"   exported (child process) and reloaded in {elapsed:.1f}s")

    graph_fn = tf.function(lambda x: model(x, training=False))
    xla_fn = tf.function(lambda x: model(x, training=False), jit_compile=True)

    for batch in batches:
        pixels, normalized, _ = normalized_inputs(net, batch, size)
        outputs = {}
        fns = inference_fns(
            net, model, graph_fn, xla_fn, served, variants, batch, normalized, pixels, outputs
        )

        log(f"-- batch {batch}: warm-up x{options.warmup}, up to {options.repeats} rounds")
        timings, load = quiet_block(
            options, timed_rounds, fns, options.warmup, options.repeats, options.budget
        )
        for variant in fns:
            if variant != "timm":
                diff = float(np.max(np.abs(outputs[variant] - outputs["timm"])))
                checks.append(
                    {"model": name, "size": size, "batch": batch, "variant": variant, "diff": diff}
                )
                log(f"   {variant:>10}: max abs diff vs timm {diff:.2e}")
        own, own_load = None, None
        if options.timm_own_process:
            own, own_load = quiet_block(options, timm_own_process, name, size, batch, options)
        add_rows(rows, name, size, batch, macs, timings, load, 1, "", own, own_load)
    keras.backend.clear_session()
