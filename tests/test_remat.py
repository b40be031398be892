"""Rematerialisation (issue 15): `CoAtNet(..., remat=True)` and `coatnet train --remat`.

Every block's activations are recomputed in the backward pass: on JAX the
compiled gradient's temporary memory drops, and on both backends the
gradients, BatchNorm statistics and drop-path draws equal those without
remat. The tiny config at 64 px, drop path on (the recomputation must draw
the same mask).

XLA's CPU pipeline undoes rematerialisation (it removes the optimization
barriers `jax.checkpoint` sets, then common-subexpression elimination
merges the recomputed forward with the first one), so the JAX worker
compiles with CSE off and the memory-ordered scheduler, as GPU and TPU
compilers keep it; `benchmarks/remat_memory.py` says more.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import images, tiny_model

TESTS = pathlib.Path(__file__).resolve().parent
DROP_PATH = 0.3
# What keeps rematerialisation on XLA's CPU backend, and its cheapest compile.
XLA_FLAGS = (
    "--xla_disable_hlo_passes=cse --xla_cpu_enable_concurrency_optimized_scheduler=false "
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)

WORKER = r"""
import json, sys
import numpy as np
import jax, keras
sys.path.insert(0, TESTS)
from helpers import TINY, images
import keras_coatnet as kc


def largest_difference(a, b):
    pairs = [(np.asarray(p, "float64"), np.asarray(q, "float64")) for p, q in zip(a, b)]
    return max(float(np.max(np.abs(p - q))) for p, q in pairs if np.isfinite(p).all())


x, y = images((4, 64, 64, 3)), np.arange(4) % 10
out = {}
for remat in (False, True):
    keras.utils.set_random_seed(0)
    model = kc.CoAtNet(
        TINY, input_shape=(64, 64, 3), classes=10, drop_path_rate=DROP_PATH, remat=remat
    )
    weights = [v.value for v in model.trainable_variables]
    state = [v.value for v in model.non_trainable_variables]

    def loss(weights, state, x, y):
        pred, state = model.stateless_call(weights, state, x, training=True)
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, pred)), state

    compiled = jax.jit(jax.grad(loss, has_aux=True)).lower(weights, state, x, y).compile()
    grads, updated = compiled(weights, state, x, y)
    out[remat] = dict(
        temp=compiled.memory_analysis().temp_size_in_bytes,
        paths=[v.path for v in model.weights],
        grads=grads,
        state=state,
        updated=updated,
    )
off, on = out[False], out[True]
print("RESULT " + json.dumps({
    "temp": [off["temp"], on["temp"]],
    "paths_equal": off["paths"] == on["paths"],
    "grad_diff": largest_difference(off["grads"], on["grads"]),
    "grad_max": max(float(np.max(np.abs(g))) for g in off["grads"]),
    "state_diff": largest_difference(off["updated"], on["updated"]),
    "state_moved": largest_difference(off["updated"], off["state"]),
}))
"""


@pytest.fixture(scope="module")
def jax_measured():
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="jax", XLA_FLAGS=XLA_FLAGS, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES=""
    )
    code = f"TESTS = {str(TESTS)!r}\nDROP_PATH = {DROP_PATH}\n" + WORKER
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    line = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def test_jax_remat_lowers_the_compiled_steps_temporary_memory(jax_measured):
    off, on = jax_measured["temp"]
    # Measured 9.5 MB -> 7.1 MB (the stem and head are not rematerialised).
    assert on < 0.85 * off, jax_measured


def test_jax_remat_gradients_and_statistics_equal_those_without(jax_measured):
    assert jax_measured["paths_equal"]
    # Measured 3.7e-7 (gradients) and 6e-8 (statistics); docs/BENCHMARKS.md.
    assert jax_measured["grad_diff"] <= 1e-6, jax_measured
    assert jax_measured["grad_max"] > 1e-2, jax_measured  # not all zero
    # BatchNorm statistics and drop-path seeds, updated once, as without remat.
    assert jax_measured["state_moved"] > 1e-3, jax_measured
    assert jax_measured["state_diff"] <= 1e-6, jax_measured


def _sgd_step(remat, weights=None):
    """One SGD step (learning rate 1: the update is the gradient) through Keras's trainer."""
    keras.utils.set_random_seed(0)  # drop path's seeds (not among the weights)
    model = tiny_model(drop_path_rate=DROP_PATH, remat=remat)
    if weights is not None:
        model.set_weights(weights)
    before = model.get_weights()
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="sparse_categorical_crossentropy")
    loss = float(model.train_on_batch(images((4, 64, 64, 3)), np.arange(4) % 10))
    return model, before, loss


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the JAX worker covers JAX")
def test_tensorflow_remat_trains_like_without_it():
    # tf.recompute_grad: the same step, BatchNorm statistics updated once, the same drop path.
    plain, before, loss = _sgd_step(False)
    remat, _, remat_loss = _sgd_step(True, before)
    assert [v.path for v in remat.weights] == [v.path for v in plain.weights]
    assert abs(loss - remat_loss) <= 1e-6
    moved = 0.0
    for a, b, start in zip(plain.get_weights(), remat.get_weights(), before, strict=True):
        if np.isfinite(start).all():
            np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)
            moved = max(moved, float(np.max(np.abs(a.astype("float64") - start))))
    assert moved > 1e-2


def test_remat_is_recorded_in_the_blocks_and_keeps_the_weight_format():
    model = tiny_model(remat=True)
    blocks = [layer for layer in model.layers if kc_block(layer)]
    assert blocks and all(layer.get_config()["remat"] for layer in blocks)
    clone = keras.Model.from_config(model.get_config())
    assert all(clone.get_layer(layer.name).remat for layer in blocks)
    plain = tiny_model()
    assert not any(plain.get_layer(layer.name).remat for layer in blocks)
    assert [(v.path, v.shape) for v in model.weights] == [(v.path, v.shape) for v in plain.weights]
    # At inference nothing is recomputed: the same outputs from the same weights.
    model.set_weights(plain.get_weights())
    x = images()
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model(x, training=False)),
        keras.ops.convert_to_numpy(plain(x, training=False)),
    )


def kc_block(layer):
    from keras_coatnet.layers import MBConvBlock, TransformerBlock

    return isinstance(layer, (MBConvBlock, TransformerBlock))


def test_remat_must_be_true_or_false():
    with pytest.raises(ValueError, match="^remat must be True or False, received: 'yes'$"):
        tiny_model(remat="yes")
