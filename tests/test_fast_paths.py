"""The speed-ups compute the same function: folded inference, fused BatchNorm, GELU.

Each fast path is checked against an independent computation: float64 NumPy
formulas, or the same block run through the plain Keras layers.
"""

import math

import keras
import numpy as np
import pytest
from helpers import images, randomize, tiny_model

from keras_coatnet.layers import BatchNorm, MBConvBlock, Stem, TransformerBlock
from keras_coatnet.layers._common import gelu, on_tokens

ERF = np.vectorize(math.erf)


@pytest.fixture
def unfused():
    """Set `fold_batch_norm` / `fused` off inside a `with unfused():` block."""
    classes = (MBConvBlock, Stem)

    class Switch:
        def __enter__(self):
            for cls in classes:
                cls.fold_batch_norm = False
            BatchNorm.fused = False

        def __exit__(self, *exc):
            for cls in classes:
                cls.fold_batch_norm = True
            BatchNorm.fused = True

    yield Switch
    for cls in classes:
        cls.fold_batch_norm = True
    BatchNorm.fused = True


def test_gelu_is_the_exact_erf_gelu():
    x = np.linspace(-8, 8, 20001).astype("float32")
    x64 = x.astype("float64")
    expected = 0.5 * x64 * (1.0 + ERF(x64 / math.sqrt(2.0)))
    got = keras.ops.convert_to_numpy(gelu(x))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def _bn_float64(x, gamma, beta, eps):
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    xhat = (x - mean) / np.sqrt(var + eps)
    return xhat * gamma + beta, mean, var, xhat


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the fused kernel is TensorFlow's"
)
@pytest.mark.parametrize("shape", [(3, 5, 7, 8), (6, 8)])
def test_fused_training_batchnorm_matches_float64(shape):
    """Output, gradients and moving statistics of a training step."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3 + 1).astype("float32")
    upstream = rng.standard_normal(shape).astype("float32")
    layer = BatchNorm(epsilon=1e-5, momentum=0.9)
    layer.build(shape)
    gamma = rng.uniform(0.5, 1.5, shape[-1]).astype("float32")
    beta = rng.normal(0, 1, shape[-1]).astype("float32")
    mean0 = rng.normal(0, 1, shape[-1]).astype("float32")
    var0 = rng.uniform(0.5, 2, shape[-1]).astype("float32")
    layer.set_weights([gamma, beta, mean0, var0])

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=True)
        loss = tf.reduce_sum(y * upstream)
    dx, dgamma, dbeta = tape.gradient(loss, [xt, layer.gamma.value, layer.beta.value])

    x64, g64 = x.astype("float64"), upstream.astype("float64")
    y64, mean, var, xhat = _bn_float64(x64, gamma, beta, 1e-5)
    n = x.size // shape[-1]
    axes = tuple(range(x.ndim - 1))
    dbeta64 = g64.sum(axis=axes)
    dgamma64 = (g64 * xhat).sum(axis=axes)
    dx64 = gamma / np.sqrt(var + 1e-5) * (g64 - dbeta64 / n - xhat * dgamma64 / n)

    np.testing.assert_allclose(y.numpy(), y64, atol=2e-5)
    np.testing.assert_allclose(dx.numpy(), dx64, atol=2e-5)
    np.testing.assert_allclose(dgamma.numpy(), dgamma64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbeta.numpy(), dbeta64, rtol=1e-5, atol=1e-4)
    # Keras's convention: moving = momentum * moving + (1 - momentum) * batch (biased variance).
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.9 * mean0 + 0.1 * mean, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), 0.9 * var0 + 0.1 * var, atol=1e-5)


def test_fused_batchnorm_trains_a_model_like_the_keras_layer(unfused):
    """Same start, same batches: 3 SGD steps end at the same weights."""
    x, y = images((4, 64, 64, 3)), keras.utils.to_categorical([0, 1, 2, 3], 10)

    def run():
        model = tiny_model()
        randomize(model, seed=1)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="categorical_crossentropy")
        for _ in range(3):
            model.train_on_batch(x, y)
        return model.get_weights()

    keras.utils.set_random_seed(0)
    fused = run()
    with unfused():
        keras.utils.set_random_seed(0)
        reference = run()
    assert len(fused) == len(reference)
    for a, b in zip(fused, reference, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_mixed_bfloat16_fused_batchnorm_keeps_float32_state():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = BatchNorm()
        out = layer(np.random.default_rng(0).standard_normal((2, 4, 4, 8)), training=True)
        assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
        assert all(v.dtype == "float32" for v in layer.weights)
        assert np.isfinite(keras.ops.convert_to_numpy(layer.moving_variance)).all()
    finally:
        keras.config.set_dtype_policy("float32")


MBCONV_VARIANTS = {
    "paper stride 2": dict(input_filters=8, filters=16, strides=2),
    "paper stride 1": dict(input_filters=16, filters=16),
    "pooled stride, pre-norm act": dict(
        input_filters=8,
        filters=16,
        strides=2,
        stride_mode="pool",
        pre_norm_activation=True,
        activation="silu",
    ),
    "se before norm, no output bias": dict(
        input_filters=16, filters=16, se_before_norm=True, output_bias=False
    ),
}


@pytest.mark.parametrize("variant", sorted(MBCONV_VARIANTS))
def test_folded_mbconv_inference_matches_the_layers(variant, unfused):
    block = MBConvBlock(**MBCONV_VARIANTS[variant])
    x = np.random.default_rng(0).standard_normal((2, 16, 16, block.input_filters))
    x = x.astype("float32")
    block(x)
    randomize(block, seed=3)
    folded = keras.ops.convert_to_numpy(block(x, training=False))
    with unfused():
        reference = keras.ops.convert_to_numpy(block(x, training=False))
    scale = np.abs(reference).max()
    assert scale > 0.1
    np.testing.assert_allclose(folded, reference, atol=1e-5 * scale)


def test_folded_stem_and_model_inference_match_the_layers(unfused):
    model = tiny_model()
    randomize(model, seed=4)
    x = images()
    stem = model.get_layer("stem")
    inner = keras.Model(model.input, stem.output)
    folded = [inner.predict(x, verbose=0), model.predict(x, verbose=0)]
    with unfused():
        keras.backend.clear_session(free_memory=False)
        reference = [
            keras.ops.convert_to_numpy(inner(x, training=False)),
            keras.ops.convert_to_numpy(model(x, training=False)),
        ]
    for a, b in zip(folded, reference, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, np.abs(b).max()))


def test_transformer_feed_forward_keeps_per_sample_drop_path():
    """The FFN runs on (tokens, channels); drop path must still drop whole samples.

    Each sample's training output must be exactly one of the four outputs the
    block gives with each branch kept (scaled by 1 / keep) or dropped, and the
    batch must mix kept and dropped samples on both branches: a per-batch
    mask, a per-token mask or no drop at all (identity) each fail.
    """
    block = TransformerBlock(16, 16, head_size=8, drop_path_rate=0.5)
    x = np.random.default_rng(0).standard_normal((32, 4, 4, 16)).astype("float32")
    y = keras.ops.convert_to_numpy(block(x, training=True))

    def run(a):
        return keras.ops.convert_to_numpy(a)

    keep = 0.5
    attention = run(block.attn(block.norm1(x, training=False), training=False))
    chosen = []
    for i in range(len(x)):
        matches = []
        for m1 in (0, 1):
            x1 = x[i : i + 1] + m1 * attention[i : i + 1] / keep
            ffn = run(on_tokens(block._feed_forward, block.norm2(x1, training=False), 16))
            for m2 in (0, 1):
                if np.allclose(y[i : i + 1], x1 + m2 * ffn / keep, atol=1e-4):
                    matches.append((m1, m2))
        assert len(matches) == 1, f"sample {i} is no kept/dropped combination: {matches}"
        chosen.append(matches[0])
    chosen = np.array(chosen)
    for branch in (0, 1):
        assert 0 < chosen[:, branch].sum() < len(x), f"branch {branch} not dropped per sample"
