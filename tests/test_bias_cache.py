"""The gathered relative bias is cached for inference and never goes stale."""

import keras
import numpy as np
import pytest
from helpers import images, randomize, tiny_model

import keras_coatnet as kc
from keras_coatnet.layers import RelativeAttention


def _attention_layers(model):
    return [layer.attn for layer in model.layers if hasattr(layer, "attn")]


def _uncached_twin(model, tmp_path):
    """The same weights in a model that gathers on every call."""
    path = str(tmp_path / "twin.weights.h5")
    model.save_weights(path)
    return tiny_model(cache_bias=False, weights=path)


def _predict(model, x):
    return model.predict(x, verbose=0, batch_size=len(x))


def test_cached_and_uncached_outputs_are_identical(tmp_path):
    model = tiny_model()
    randomize(model)
    twin = _uncached_twin(model, tmp_path)
    x = images()
    for _ in range(2):  # first call fills the cache, second reads it
        np.testing.assert_array_equal(_predict(model, x), _predict(twin, x))
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(model(x, training=False)),
            keras.ops.convert_to_numpy(twin(x, training=False)),
        )


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="jax.lax.cond traces both branches; the poisoned-cache test covers JAX at run time",
)
def test_inference_gathers_once_in_eager_mode(monkeypatch):
    layer = RelativeAttention(16, head_size=8)
    x = np.random.RandomState(0).normal(size=(1, 4, 4, 8)).astype("float32")
    layer.build(x.shape)
    calls = []
    original = RelativeAttention.relative_bias

    def counting(self, table=None):
        calls.append(1)
        return original(self, table)

    monkeypatch.setattr(RelativeAttention, "relative_bias", counting)
    for _ in range(3):
        layer(x, training=False)
    assert len(calls) == 1
    layer(x, training=True)  # training reads the live table
    assert len(calls) == 2
    layer(x, training=False)  # the table did not change: still cached
    assert len(calls) == 2


def test_compiled_inference_reads_the_cache_instead_of_gathering():
    """Poison the cache while its table copy still matches: predict must use it."""
    model = kc.stage_features(tiny_model())
    randomize(model)
    x = images()
    clean = _predict(model, x)["S4"]
    rng = np.random.RandomState(0)
    for attn in _attention_layers(model):
        attn.bias_cache.assign(rng.normal(0, 20, attn.bias_cache.shape).astype("float32"))
    poisoned = _predict(model, x)["S4"]
    # Recomputing would give `clean` exactly; the poisoned cache was read instead.
    assert np.abs(poisoned - clean).max() > 1e-3
    # Invalidate through the table copy: the next call gathers again.
    for attn in _attention_layers(model):
        attn.cached_table.assign(attn.cached_table + 1.0)
    np.testing.assert_array_equal(_predict(model, x)["S4"], clean)


def _check_fresh(model, tmp_path, x):
    twin = _uncached_twin(model, tmp_path)
    np.testing.assert_array_equal(_predict(model, x), _predict(twin, x))


def test_assigning_the_table_refreshes_the_cache(tmp_path):
    model = tiny_model()
    randomize(model)
    x = images()
    before = _predict(model, x)
    for attn in _attention_layers(model):
        attn.relative_table.assign(attn.relative_table * 5.0 + 1.0)
    after = _predict(model, x)
    assert not np.allclose(before, after)
    _check_fresh(model, tmp_path, x)


def test_loading_weights_refreshes_the_cache(tmp_path):
    source = tiny_model()
    randomize(source, seed=1)
    path = str(tmp_path / "source.weights.h5")
    source.save_weights(path)
    model = tiny_model()
    randomize(model, seed=2)
    x = images()
    _predict(model, x)  # fill the cache with the old table
    model.load_weights(path)
    np.testing.assert_array_equal(_predict(model, x), _predict(source, x))


def test_set_weights_refreshes_the_cache(tmp_path):
    model = tiny_model()
    randomize(model, seed=1)
    other = tiny_model()
    randomize(other, seed=2)
    x = images()
    _predict(model, x)
    model.set_weights(other.get_weights())
    # get_weights carried the other model's cache and its table copy: consistent.
    _check_fresh(model, tmp_path, x)
    np.testing.assert_array_equal(_predict(model, x), _predict(other, x))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.GradientTape")
def test_training_updates_the_table_and_inference_follows(tmp_path):
    model = tiny_model()
    x = images(shape=(4, 64, 64, 3))
    y = np.arange(4) % 10
    _predict(model, x)  # cache filled before training
    tables = [keras.ops.convert_to_numpy(a.relative_table) for a in _attention_layers(model)]
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    changed = [
        not np.array_equal(t, keras.ops.convert_to_numpy(a.relative_table))
        for t, a in zip(tables, _attention_layers(model), strict=True)
    ]
    assert all(changed)
    _check_fresh(model, tmp_path, x)


def test_count_params_is_learned_weights_plus_batchnorm_statistics():
    model = tiny_model()
    learned = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    batchnorms = [
        layer
        for layer in kc._keras_compat.walk_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    statistics = sum(2 * int(layer.moving_mean.shape[0]) for layer in batchnorms)
    assert batchnorms and model.count_params() == learned + statistics
    cache = {id(layer.bias_cache) for layer in _attention_layers(model)}
    # Still carried by compiled steps, but not a weight.
    assert cache <= {id(v) for v in model.variables}
    assert not cache & {id(w) for w in model.weights}
    assert len(model.get_weights()) == len(model.weights)


@pytest.mark.parametrize("cache_bias", [True, False])
def test_serving_bias_is_the_fresh_bias(cache_bias):
    model = tiny_model(cache_bias=cache_bias)
    randomize(model)
    for attn in _attention_layers(model):
        variable = attn.serving_bias()
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(variable), keras.ops.convert_to_numpy(attn.relative_bias())
        )
        # The cache is reused, not copied; a layer without one gets a new variable.
        assert (variable is getattr(attn, "bias_cache", None)) == cache_bias
