"""Model parallelism (issue 15): `keras_coatnet.training.layout_map` on a 2 x 4 mesh.

One JAX subprocess with 8 virtual CPU devices builds the tiny config and
CoAtNet-0 at 64 px under `keras.distribution.ModelParallel`, measures how
the parameter bytes landed on the devices, and runs one training step
(SGD, AdamW) sharded and on one device from the same weights and batch:
the tiny config's by default, CoAtNet-0's with `-m slow` (measured apart,
each with its process start: 46 CPU seconds for the tiny config's, 73 for
CoAtNet-0's). The train command's runs are in tests/test_distributed.py.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

TESTS = pathlib.Path(__file__).resolve().parent
MODELS = ("tiny", "coatnet-0")

WORKER = r"""
import json, sys
import numpy as np
import jax, keras
sys.path.insert(0, TESTS)
from helpers import TINY
import keras_coatnet as kc
from keras_coatnet.training import layout_map

CONFIGS = {"tiny": TINY, "coatnet-0": kc.get_config("coatnet-0")}
KWARGS = dict(input_shape=(64, 64, 3), classes=10)
DERIVED = ("bias_cache", "cached_table", "seed_generator")
mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], keras.distribution.list_devices())
rng = np.random.RandomState(0)
x = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
y = np.array([1, 3, 5, 7])


def optimizer(name):
    if name == "sgd":
        return keras.optimizers.SGD(0.1)
    # A large epsilon: Adam's first step is lr * g / (|g| + eps), which with the
    # default 1e-7 turns float noise in a near-zero gradient into a full step.
    return keras.optimizers.AdamW(0.01, epsilon=1e-3, weight_decay=0.05)


def placement(model):
    total = sharded = 0
    per_device = {}
    for v in model.weights:
        value = v.value
        total += value.nbytes
        if "model" in tuple(getattr(value.sharding, "spec", ())):
            sharded += value.nbytes
        for shard in value.addressable_shards:
            per_device[shard.device.id] = per_device.get(shard.device.id, 0) + shard.data.nbytes
    return sharded / total, max(per_device.values()) / total, len(per_device)


def step(model, weights, name):
    model.set_weights(weights)
    model.compile(optimizer=optimizer(name), loss="sparse_categorical_crossentropy")
    loss = float(model.train_on_batch(x, y))
    return loss, [np.asarray(v.value) for v in model.weights]


results = {}
for key, steps in json.loads(sys.argv[1]).items():
    config = CONFIGS[key]
    keras.utils.set_random_seed(0)
    reference = kc.CoAtNet(config, **KWARGS)
    weights = reference.get_weights()
    layouts = layout_map(mesh, config, **KWARGS)
    distribution = keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch")
    with distribution.scope():
        model = kc.CoAtNet(config, **KWARGS)
    paths = [v.path for v in model.weights]
    assert paths == [v.path for v in reference.weights]
    keep = [i for i, p in enumerate(paths) if not any(d in p for d in DERIVED)]
    trained = [i for i, v in enumerate(model.weights) if v.trainable]
    out = {"layout_keys": len(layouts), "variables": len(paths)}
    for name in ("sgd", "adamw") if steps else ():
        loss_ref, after_ref = step(reference, weights, name)
        with distribution.scope():
            loss, after = step(model, weights, name)
        out[name] = {
            "loss": loss,
            "loss_ref": loss_ref,
            "weight_diff": max(float(np.max(np.abs(after[i] - after_ref[i]))) for i in keep),
            "moved": max(float(np.max(np.abs(after_ref[i] - weights[i]))) for i in trained),
        }
    # Measured after training (if any): the optimizer's updates kept the layouts.
    out["sharded"], out["device_share"], out["devices"] = placement(model)
    results[key] = out
print("RESULT " + json.dumps(results))
"""


def _measure(models):
    """`{model: results}`, `models` mapping each key to whether to run the steps."""
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="jax",
        # 8 virtual devices; the compiler's cheapest settings (compiling the steps is
        # most of the time here).
        XLA_FLAGS="--xla_force_host_platform_device_count=8 "
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
    )
    code = f"TESTS = {str(TESTS)!r}\n" + WORKER
    run = subprocess.run(
        [sys.executable, "-c", code, json.dumps(models)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    line = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


@pytest.fixture(scope="module")
def measured():
    """Both models' layouts; the tiny one's steps."""
    return _measure({"tiny": True, "coatnet-0": False})


@pytest.fixture(scope="module")
def coatnet0_steps():
    """CoAtNet-0's steps (slow tests only)."""
    return _measure({"coatnet-0": True})


@pytest.mark.parametrize("key", MODELS)
def test_large_variables_are_split_on_the_model_axis(measured, key):
    out = measured[key]
    assert out["devices"] == 8
    assert out["sharded"] >= 0.9, out
    assert out["device_share"] <= 0.3, out


@pytest.mark.parametrize("key", ["tiny", pytest.param("coatnet-0", marks=pytest.mark.slow)])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_sharded_step_equals_a_single_device_step(request, key, optimizer):
    fixture = "measured" if key == "tiny" else "coatnet0_steps"
    out = request.getfixturevalue(fixture)[key][optimizer]
    # Measured (docs/DISTRIBUTED.md): loss within 2.4e-7, weights within 2.9e-7
    # (CoAtNet-0, AdamW; 3.3e-7 in an earlier run); 1e-6 leaves 3x for another
    # XLA's reduction order. A learning rate 1e-4 off moves the tiny SGD step 6.5e-6.
    assert abs(out["loss"] - out["loss_ref"]) <= 1e-6, out
    assert out["weight_diff"] <= 1e-6, out
    # The step changed the weights by far more than the tolerance.
    assert out["moved"] > 1e-3, out
