"""Shared test helpers: a tiny config, layer checks, the timm extra's guard."""

import importlib.util
import os

import numpy as np
import pytest

import keras_coatnet as kc
from keras_coatnet._timm import INSTALL_HINT, import_timm

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


# ----------------------------------------------------------------------------- the timm extra

TIMM_EXTRA = ("torch", "timm")


def in_ci():
    """Whether `CI` is set, to anything but `0`, `false` or `no` (CI services set
    `CI=true`; so does `.ci/run`)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _findable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # an import hook that refuses the name
        return False


def require_timm():
    """Skip the calling test without the timm extra; fail it instead where `CI` is set.

    The one guard of every test that needs timm as its reference. Locally a
    missing extra skips; CI installs every extra (`make setup`), so there a
    missing package is a broken set-up that would otherwise pass unnoticed
    as skipped parity tests. Checks with `find_spec` (nothing imported);
    `import_timm_or_skip` also imports.
    """
    missing = [name for name in TIMM_EXTRA if not _findable(name)]
    if not missing:
        return
    message = f"the timm extra is missing: {', '.join(missing)} ({INSTALL_HINT})"
    if in_ci():
        pytest.fail(f"CI is set and {message}", pytrace=False)
    pytest.skip(message)


def import_timm_or_skip():
    """`(torch, timm)` through `import_timm`, after `require_timm`."""
    require_timm()
    return import_timm()


@pytest.fixture
def timm_extra():
    """`require_timm` as a fixture (registered by conftest); `requires_timm` marks a test."""
    require_timm()


requires_timm = pytest.mark.usefixtures("timm_extra")
