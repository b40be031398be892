"""Layer contract (build, config round trip) and numerics against float64 references."""

import warnings

import keras
import numpy as np
import pytest
from helpers import images

from keras_coatnet.layers import (
    DropPath,
    LayerScale,
    MBConvBlock,
    RelativeAttention,
    SqueezeExcite,
    Stem,
    TransformerBlock,
    relative_position_index,
)


def _brute_force_index(h, w):
    n = h * w
    out = np.zeros((n, n), int)
    for i in range(n):
        for j in range(n):
            dh = i // w - j // w
            dw = i % w - j % w
            out[i, j] = (dh + h - 1) * (2 * w - 1) + (dw + w - 1)
    return out


@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (4, 4), (7, 5)])
def test_relative_position_index_matches_brute_force(h, w):
    index = relative_position_index(h, w)
    np.testing.assert_array_equal(index, _brute_force_index(h, w))
    # Every offset of the (2H-1)(2W-1) table is used.
    assert len(np.unique(index)) == (2 * h - 1) * (2 * w - 1)


def _attention_float64(layer, x):
    """Paper eq. (3) in float64 NumPy, written independently of the layer."""
    wqkv, bqkv = (np.asarray(v, np.float64) for v in layer.qkv.get_weights())
    wo, bo = (np.asarray(v, np.float64) for v in layer.proj.get_weights())
    table = np.asarray(layer.relative_table, np.float64)
    b, h, w, _ = x.shape
    n, heads, d = h * w, layer.num_heads, layer.head_size
    tokens = x.reshape(b, n, -1).astype(np.float64)
    qkv = (tokens @ wqkv + bqkv).reshape(b, n, heads, 3, d)
    out = np.zeros((b, n, heads, d))
    for head in range(heads):
        q, k, v = (qkv[:, :, head, s] for s in range(3))
        logits = q @ k.transpose(0, 2, 1) / np.sqrt(d)
        for i in range(n):
            for j in range(n):
                dh, dw = i // w - j // w, i % w - j % w
                logits[:, i, j] += table[(dh + h - 1) * (2 * w - 1) + dw + w - 1, head]
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, :, head] = p @ v
    return (out.reshape(b, n, heads * d) @ wo + bo).reshape(b, h, w, -1)


@pytest.mark.parametrize("cache_bias", [True, False])
@pytest.mark.parametrize("hw", [(3, 4), (1, 1)])
def test_attention_matches_float64_reference(cache_bias, hw):
    layer = RelativeAttention(32, head_size=8, cache_bias=cache_bias)
    x = np.random.RandomState(1).normal(size=(2, *hw, 24)).astype("float32")
    layer.build(x.shape)
    rng = np.random.RandomState(2)
    for v in layer.trainable_weights:
        v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    expected = _attention_float64(layer, x)
    for training in (False, True):
        got = keras.ops.convert_to_numpy(layer(x, training=training))
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)


def test_drop_path_is_identity_at_inference_and_drops_whole_samples():
    x = np.ones((256, 4, 4, 8), "float32")
    layer = DropPath(0.25, seed=3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    per_sample = y.reshape(256, -1)
    # Each sample is either dropped whole or kept and rescaled by 1 / keep.
    assert set(np.unique(per_sample)) <= {np.float32(0.0), np.float32(1 / 0.75)}
    assert np.all(per_sample.min(1) == per_sample.max(1))
    kept = (per_sample[:, 0] > 0).mean()
    assert 0.6 < kept < 0.9
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(DropPath(0.0)(x, training=True)), x)


def test_drop_path_rejects_bad_rate():
    with pytest.raises(ValueError, match="1.5"):
        DropPath(1.5)


def _layers():
    return [
        (Stem(16, name="stem"), (2, 32, 32, 3)),
        (SqueezeExcite(16, 4), (2, 8, 8, 16)),
        (MBConvBlock(16, 32, strides=2, drop_path_rate=0.1), (2, 16, 16, 16)),
        (MBConvBlock(32, 32, padding="same"), (2, 8, 8, 32)),
        (TransformerBlock(16, 32, strides=2, head_size=8), (2, 8, 8, 16)),
        (TransformerBlock(16, 32, strides=1, head_size=8, pool_type="max"), (2, 4, 4, 16)),
        (RelativeAttention(32, head_size=8), (2, 4, 4, 16)),
        (DropPath(0.2, seed=1), (2, 4, 4, 3)),
        # timm's rw / rmlp options
        (Stem(16, hidden_filters=8, activation="silu", name="stem_rw"), (2, 32, 32, 3)),
        (
            MBConvBlock(
                16,
                32,
                strides=2,
                expand_from="input",
                se_from="hidden",
                se_activation="relu",
                se_before_norm=True,
                activation="silu",
                pre_norm_activation=True,
                output_bias=False,
                stride_mode="pool",
                pool_type="max3",
                name="mbconv_rw",
            ),
            (2, 16, 16, 16),
        ),
        (
            TransformerBlock(
                16,
                32,
                strides=2,
                head_size=8,
                attention_width="input",
                norm="batchnorm",
                shortcut_bias=False,
                layer_scale=0.5,
                relative_bias="mlp",
                relative_mlp_dim=24,
                pool_type="max3",
                name="transformer_rw",
            ),
            (2, 8, 8, 16),
        ),
        (
            RelativeAttention(16, head_size=8, output_filters=32, bias_type="mlp", mlp_dim=8),
            (2, 4, 4, 16),
        ),
        (LayerScale(0.1), (2, 4, 4, 8)),
    ]


@pytest.mark.parametrize("layer,shape", _layers(), ids=lambda v: getattr(v, "name", ""))
def test_config_round_trip_gives_identical_outputs(layer, shape):
    x = np.random.RandomState(0).normal(size=shape).astype("float32")
    layer.build(shape)
    y = keras.ops.convert_to_numpy(layer(x, training=False))
    assert y.shape == tuple(layer.compute_output_shape(shape))
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone.build(shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(x, training=False)), y)
    # Registered for deserialization by name.
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)


def test_bare_build_creates_every_variable():
    block = TransformerBlock(16, 32, strides=2, head_size=8)
    block.build((1, 8, 8, 16))
    names = sorted(v.path.split("/", 1)[1] for v in block.trainable_weights)
    # The weight format, pinned by hand: a renamed sublayer breaks saved files.
    assert names == sorted(
        [
            "attn/proj/bias",
            "attn/proj/kernel",
            "attn/qkv/bias",
            "attn/qkv/kernel",
            "attn/relative_table",
            "fc1/bias",
            "fc1/kernel",
            "fc2/bias",
            "fc2/kernel",
            "norm1/beta",
            "norm1/gamma",
            "norm2/beta",
            "norm2/gamma",
            "shortcut/bias",
            "shortcut/kernel",
        ]
    )
    # 4x4 output map: (2*4-1)^2 offsets, 32 / 8 heads.
    assert tuple(block.attn.relative_table.shape) == (49, 4)


def test_mbconv_matches_stock_keras_composition():
    """The block equals the same math written with stock Keras layers."""
    block = MBConvBlock(8, 16, strides=2)
    shape = (2, 8, 8, 8)
    block.build(shape)
    rng = np.random.RandomState(0)
    for v in block.weights:
        if "seed_generator" in v.path:
            continue
        low = 0.5 if "variance" in v.path else -0.5
        v.assign(rng.uniform(low, low + 1.0, v.shape).astype("float32"))
    x = rng.normal(size=shape).astype("float32")

    def bn(layer, t):
        gamma, beta, mean, var = layer.get_weights()
        return (t - mean) / np.sqrt(var + 1e-5) * gamma + beta

    def gelu(t):
        return keras.ops.convert_to_numpy(keras.activations.gelu(t, approximate=False))

    t = bn(block.pre_norm, x)
    t = gelu(bn(block.norm1, t @ block.conv1.get_weights()[0][0, 0]))
    padded = np.pad(t, [(0, 0), (1, 1), (1, 1), (0, 0)])
    kernel = block.conv2.get_weights()[0][:, :, :, 0]
    dw = np.zeros((2, 4, 4, t.shape[-1]), np.float32)
    for i in range(4):
        for j in range(4):
            dw[:, i, j] = (padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3] * kernel).sum((1, 2))
    t = gelu(bn(block.norm2, dw))
    w1, b1 = block.se.reduce.get_weights()
    w2, b2 = block.se.expand.get_weights()
    s = t.mean((1, 2), keepdims=True) @ w1[0, 0] + b1
    s = s / (1 + np.exp(-s))
    t = t / (1 + np.exp(-(s @ w2[0, 0] + b2)))
    wp, bp = block.conv3.get_weights()
    branch = t @ wp[0, 0] + bp
    pooled = x.reshape(2, 4, 2, 4, 2, 8).mean((2, 4))
    ws, bs = block.shortcut.get_weights()
    expected = pooled @ ws[0, 0] + bs + branch
    got = keras.ops.convert_to_numpy(block(x, training=False))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_symmetric_padding_differs_from_tf_same():
    shape = (1, 8, 8, 3)
    a = Stem(4, padding="symmetric")
    b = Stem(4, padding="same")
    a.build(shape)
    b.build(shape)
    b.set_weights(a.get_weights())
    x = images(shape)
    ya = keras.ops.convert_to_numpy(a(x))
    yb = keras.ops.convert_to_numpy(b(x))
    assert ya.shape == yb.shape == (1, 4, 4, 4)
    assert not np.allclose(ya, yb)


def test_max3_pool_matches_pytorch_window_semantics():
    # timm's "max" downsampling is MaxPool2d(3, stride=2, padding=1): windows
    # start one pixel before the map and padding never wins.
    from keras_coatnet.layers._common import pool2x2

    x = np.random.RandomState(0).normal(size=(2, 6, 8, 3)).astype("float32") - 5.0
    got = keras.ops.convert_to_numpy(pool2x2(x, "max3"))
    want = np.empty((2, 3, 4, 3), "float32")
    for i in range(3):
        for j in range(4):
            rows = slice(max(2 * i - 1, 0), 2 * i + 2)
            cols = slice(max(2 * j - 1, 0), 2 * j + 2)
            want[:, i, j] = x[:, rows, cols].max(axis=(1, 2))
    np.testing.assert_array_equal(got, want)


def test_mbconv_widths_follow_expand_and_se_bases():
    paper = MBConvBlock(16, 32, strides=2)
    rw = MBConvBlock(16, 32, strides=2, expand_from="input", se_from="hidden", se_ratio=0.25)
    paper.build((1, 8, 8, 16))
    rw.build((1, 8, 8, 16))
    # paper: 4 x output = 128 hidden, SE 0.25 x output = 8; rw: 4 x input = 64, SE 16
    assert paper.conv1.kernel.shape == (1, 1, 16, 128) and paper.se.reduce.kernel.shape[-1] == 8
    assert rw.conv1.kernel.shape == (1, 1, 16, 64) and rw.se.reduce.kernel.shape[-1] == 16


def test_int8_quantization_applies_to_every_dense_layer():
    from helpers import images, randomize, tiny_model

    from keras_coatnet._keras_compat import walk_layers

    model = tiny_model()
    randomize(model)
    x = images()
    before = model.predict(x, verbose=0)
    # Keras refuses a model with an unbuilt layer (a rate-0 DropPath was one),
    # and warns for each layer it leaves alone.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
        model.quantize("int8")
    dense = [layer for layer in walk_layers(model) if isinstance(layer, keras.layers.Dense)]
    assert dense and all(layer.quantization_mode == "int8" for layer in dense)
    np.testing.assert_allclose(model.predict(x, verbose=0), before, atol=1e-2)
