"""Shared test helpers: a tiny config and layer checks."""

import numpy as np

import keras_coatnet as kc

# 64x64 inputs, widths 16/32/64: every code path of the real models
# (stride-2 MBConv with and without projection, transformer downsampling,
# a width change, a stride-1 transformer) in a model that builds in a second.
TINY = kc.CONFIGS["coatnet-0"].replace(
    name="tiny",
    stem_dim=16,
    stages=(
        kc.StageConfig("mbconv", 1, 16),
        kc.StageConfig("mbconv", 2, 32),
        kc.StageConfig("transformer", 2, 64),
        kc.StageConfig("transformer", 1, 64),
    ),
    head_hidden_size=32,
    head_size=16,
)

# Every `coatnet` subcommand, as the README lists them.
SUBCOMMANDS = (
    "models",
    "summary",
    "train",
    "evaluate",
    "predict",
    "export",
    "convert",
    "bench",
    "plot-bias",
    "plot-history",
)


def images(shape=(2, 64, 64, 3), seed=0):
    """Random pixels in [0, 255]."""
    return np.random.RandomState(seed).uniform(0, 255, shape).astype("float32")


def tiny_model(**kwargs):
    kwargs.setdefault("input_shape", (64, 64, 3))
    kwargs.setdefault("classes", 10)
    return kc.CoAtNet(TINY, **kwargs)


def randomize(model, seed=0):
    """Give every variable (BatchNorm statistics included) random values.

    At their initial constants (zero biases, unit variances) a wrong wiring
    can still give right answers; random values make every variable count.
    """
    rng = np.random.RandomState(seed)
    for v in model.weights:
        if "bias_cache" in v.path or "cached_table" in v.path or "seed_generator" in v.path:
            continue
        value = rng.normal(0, 0.2, v.shape)
        if "moving_variance" in v.path:
            value = rng.uniform(0.5, 1.5, v.shape)
        v.assign(value.astype(v.dtype))
