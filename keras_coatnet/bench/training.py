"""The training case: one AdamW step of timm and of `model.train_on_batch`, interleaved."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_coatnet import profile
from keras_coatnet._timm import import_timm
from keras_coatnet.bench.inference import normalized_inputs, timm_own_process
from keras_coatnet.bench.options import TRAIN_VARIANTS
from keras_coatnet.bench.report import add_rows
from keras_coatnet.bench.timing import log, quiet_block, timed_rounds
from keras_coatnet.bench.workers import timm_model
from keras_coatnet.convert import from_timm


def bench_training(case, options, rows):
    """Time one training step of `case` (its one batch); append result rows."""
    torch, _ = import_timm()
    name, size, (batch,) = case.name, case.size, case.batches
    log(f"\n== training step: {name} at {size}x{size}, batch {batch} (AdamW, BN train mode)")
    net = timm_model(name, size).train()
    model = from_timm(
        net,
        input_shape=(size, size, 3),
        classifier_activation=None,
        include_preprocessing=False,
    )
    macs = profile(model).macs
    _, normalized, nchw = normalized_inputs(net, batch, size, seed=1)
    labels = np.random.RandomState(2).randint(0, 1000, (batch,)).astype("int64")
    x_tf, y_tf = tf.constant(normalized), tf.constant(labels)
    y_torch = torch.from_numpy(labels)

    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()

    def timm_step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(nchw), y_torch)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def compiled(jit):
        model.compile(
            optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit,
        )

    def keras_step():
        return float(model.train_on_batch(x_tf, y_tf))

    # Keras compiles one train function at a time, so each Keras variant is
    # timed in its own block, interleaved with timm steps; timm's row pools them.
    timings = {"timm": {"first_s": None, "times_s": []}}
    loads = []
    variants = [v for v in TRAIN_VARIANTS[1:] if v in options.train_variants]
    for variant in variants or [None]:
        fns = {"timm": timm_step}
        if variant is not None:
            compiled(variant == "train_on_batch_xla")
            fns[variant] = keras_step
        t, load = quiet_block(
            options, timed_rounds, fns, options.warmup, options.train_repeats, options.budget
        )
        loads.append(load)
        if variant is not None:
            timings[variant] = t[variant]
        if timings["timm"]["first_s"] is None:
            timings["timm"]["first_s"] = t["timm"]["first_s"]
        timings["timm"]["times_s"].extend(t["timm"]["times_s"])
    own, own_load = None, None
    if options.timm_own_process:
        own, own_load = quiet_block(options, timm_own_process, name, size, batch, options, True)
    load = max((c for c in loads if c is not None), default=None)
    add_rows(rows, name, size, batch, macs, timings, load, 3, "train: ", own, own_load)
    keras.backend.clear_session()
