"""The table of parameter and MAC counts `coatnet models` prints, without building.

`data/model_counts.json` holds, for every config at its default size with
1000 classes, what `keras_coatnet.profile` counts on the built model:
trainable parameters and MACs for one image. Reading it needs no framework;
each entry also records a fingerprint of the config it was measured on.
`tests/test_counts.py` checks every fingerprint against today's configs and
builds a few small configs to compare their counts (every config under
`-m slow`), so the table cannot drift from the configs or the builder.
After changing a config, write it again from a checkout (the package only
reads it):

    .venv/bin/python tools/write_counts.py
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "model_counts.json")
CLASSES = 1000
# Building these in float32 takes 6 GiB; the counts do not depend on the dtype.
HALF_PRECISION = ("coatnet-6", "coatnet-7")


@dataclass(frozen=True)
class Counts:
    params: int
    macs: int
    config: str = ""  # `fingerprint` of the config measured


def fingerprint(config) -> str:
    """A short digest of what the counts depend on: the architecture and the size measured at.

    Not `name` or `source`: editing a citation leaves the counts, and the
    table, valid. The size is the variant's evaluation size
    (`weights.eval_defaults`).
    """
    from keras_coatnet.weights.registry import eval_defaults

    measured = {"architecture": config.architecture(), "size": eval_defaults(config.name)[1]}
    text = json.dumps(measured, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load(path: str = PATH) -> dict[str, Counts]:
    """Every config's counts, by name."""
    with open(path, encoding="utf-8") as f:
        table = json.load(f)
    return {name: Counts(**entry) for name, entry in table.items()}


def measure(config) -> Counts:
    """Build `config` at its evaluation size with 1000 classes and count it."""
    import keras

    from keras_coatnet.model import CoAtNet
    from keras_coatnet.profiling import profile

    policy = keras.config.dtype_policy()
    if config.name in HALF_PRECISION:
        keras.config.set_dtype_policy("bfloat16")
    try:
        counted = profile(CoAtNet(config, classes=CLASSES))
    finally:
        keras.config.set_dtype_policy(policy)
        keras.backend.clear_session()
    return Counts(counted.params, counted.macs, fingerprint(config))
