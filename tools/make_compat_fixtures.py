"""Write the small model files `tests/test_compat.py` loads, with the code importable now.

The committed fixtures in `tests/fixtures/b08ed0c/` were written by main at
commit b08ed0c (run from a checkout of that commit):

    PYTHONPATH=. python tools/make_compat_fixtures.py tests/fixtures/b08ed0c

Two tiny architectures (a table-bias paper-style model with a pre-logits
head, a timm rw-style MLP-bias model with BatchNorm transformers), each
saved as `.weights.h5` with its head, `.weights.h5` without it
(`pooling="avg"`) and as a whole `.keras` file, plus `outputs.npz`: what
each model gave for the same seeded images. The weights are randomised,
BatchNorm statistics included, so that a wrong mapping cannot pass.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import keras_coatnet as kc

SIZE = 64


def configs():
    """The two architectures, as `CoAtNetConfig.replace` calls on rows of the table."""
    stages = (
        kc.StageConfig("mbconv", 1, 16),
        kc.StageConfig("mbconv", 1, 32),
        kc.StageConfig("transformer", 2, 64),
        kc.StageConfig("transformer", 1, 64),
    )
    table = kc.CONFIGS["coatnet-0"].replace(
        name="compat-table", stem_dim=16, stages=stages, head_hidden_size=32, head_size=16
    )
    mlp = kc.CONFIGS["coatnet_rmlp_nano_rw_224"].replace(
        name="compat-mlp",
        stem_dim=16,
        stem_hidden_dim=8,
        stages=stages,
        head_size=16,
        relative_mlp_dim=16,
        transformer_norm="batchnorm",
    )
    return {"table": table, "mlp": mlp}


def images(seed=0):
    return np.random.RandomState(seed).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")


def randomize(model, seed):
    rng = np.random.RandomState(seed)
    for v in model.weights:
        value = rng.normal(0, 0.2, v.shape)
        if "moving_variance" in v.path:
            value = rng.uniform(0.5, 1.5, v.shape)
        v.assign(value.astype(v.dtype))


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    x = images()
    outputs = {}
    for seed, (key, config) in enumerate(configs().items()):
        model = kc.CoAtNet(
            config, input_shape=(SIZE, SIZE, 3), classes=10, classifier_activation=None
        )
        randomize(model, seed)
        model.save_weights(os.path.join(out, f"{key}.weights.h5"))
        model.save(os.path.join(out, f"{key}.keras"))
        outputs[key] = np.asarray(model(x, training=False))
        backbone = kc.CoAtNet(config, include_top=False, pooling="avg", input_shape=(SIZE, SIZE, 3))
        for layer in backbone.layers:
            if layer.weights:
                layer.set_weights(model.get_layer(layer.name).get_weights())
        backbone.save_weights(os.path.join(out, f"{key}_notop.weights.h5"))
        outputs[f"{key}_notop"] = np.asarray(backbone(x, training=False))
    np.savez(os.path.join(out, "outputs.npz"), **outputs)


if __name__ == "__main__":
    main(sys.argv[1])
