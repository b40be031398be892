"""`weights=` builds one model, and files written by earlier code load unchanged.

The Hub forms (tags, `hf://`, first and cached loads) are counted in
`test_pretrained.py`; here the `.weights.h5` forms, without torch. The
fixtures in `tests/fixtures/b08ed0c/` were written by main at commit b08ed0c
with `tools/make_compat_fixtures.py` (its docstring has the command), with
the outputs that code computed for the same images.
"""

import os
import pathlib
import sys

import keras
import numpy as np
import pytest
from helpers import TINY, images, randomize, tiny_model

import keras_coatnet as kc
from keras_coatnet.weights import resolve

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "b08ed0c"
sys.path.insert(0, str(ROOT / "tools"))
import make_compat_fixtures as fixtures  # noqa: E402


@pytest.fixture
def built(monkeypatch):
    """The functional models Keras constructs while the test runs."""
    models = []
    new = keras.Model.__new__

    def counting(cls, *args, **kwargs):
        if args or "inputs" in kwargs:
            models.append(cls)
        return new(cls, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "__new__", counting)
    return models


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_model(classifier_activation=None)
    randomize(model)
    path = str(tmp_path_factory.mktemp("w") / "tiny.weights.h5")
    model.save_weights(path)
    return model, path


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # the file's own head
        {"include_top": False},
        {"include_top": False, "pooling": "avg"},
        {"classes": 3},  # another head: fine-tuning
    ],
    ids=["full-head", "no-top", "no-top-avg", "other-classes"],
)
def test_every_weights_form_builds_exactly_one_model(saved, built, kwargs):
    original, path = saved
    for weights in (path, resolve(path, TINY)):  # a path, or already resolved
        built.clear()
        model = tiny_model(weights=weights, classifier_activation=None, **kwargs)
        assert len(built) == 1, f"{len(built)} models built for {kwargs}"
        # The backbone came from the file: every layer but the classifier.
        for layer in model.layers:
            if layer.weights and layer.name != "predictions":
                ours, theirs = layer.get_weights(), original.get_layer(layer.name).get_weights()
                for a, b in zip(ours, theirs, strict=True):
                    np.testing.assert_array_equal(a, b, err_msg=layer.name)
    if not kwargs:
        np.testing.assert_array_equal(model(images()), original(images()))


def test_a_file_that_does_not_fit_loads_nothing_even_with_another_head(saved, tmp_path):
    _, path = saved
    other = TINY.replace(head_size=32)
    with pytest.raises(ValueError, match="does not fit model"):
        kc.CoAtNet(other, weights=path, input_shape=(64, 64, 3), classes=3)


# -- files written by main b08ed0c ------------------------------------------------------

EXPECTED = np.load(FIXTURES / "outputs.npz") if FIXTURES.is_dir() else None
# The same ops on the same CPU kernels: what b08ed0c computed, to float32 rounding.
TOLERANCE = 1e-5


def _fixture_model(key, **kwargs):
    config = fixtures.configs()[key]
    kwargs.setdefault("classifier_activation", None)
    return kc.CoAtNet(config, input_shape=(fixtures.SIZE, fixtures.SIZE, 3), **kwargs)


@pytest.mark.parametrize("key", ["table", "mlp"])
def test_weights_files_written_by_b08ed0c_load_unchanged(key):
    x = fixtures.images()
    model = _fixture_model(key, weights=str(FIXTURES / f"{key}.weights.h5"))
    np.testing.assert_allclose(model(x), EXPECTED[key], rtol=0, atol=TOLERANCE)
    backbone = _fixture_model(
        key, weights=str(FIXTURES / f"{key}_notop.weights.h5"), include_top=False, pooling="avg"
    )
    np.testing.assert_allclose(backbone(x), EXPECTED[f"{key}_notop"], rtol=0, atol=TOLERANCE)
    # The full file under no head gives the same features as the backbone file.
    features = _fixture_model(
        key, weights=str(FIXTURES / f"{key}.weights.h5"), include_top=False, pooling="avg"
    )
    np.testing.assert_allclose(features(x), EXPECTED[f"{key}_notop"], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("key", ["table", "mlp"])
def test_keras_files_written_by_b08ed0c_load_unchanged(key, tmp_path):
    model = keras.saving.load_model(str(FIXTURES / f"{key}.keras"))
    np.testing.assert_allclose(model(fixtures.images()), EXPECTED[key], rtol=0, atol=TOLERANCE)
    # And it saves again into a file that today's code loads into a fresh model.
    path = os.path.join(tmp_path, "again.weights.h5")
    model.save_weights(path)
    again = _fixture_model(key, weights=path)
    np.testing.assert_array_equal(again(fixtures.images()), model(fixtures.images()))


# -- safetensors read tensor by tensor ----------------------------------------------------


def test_tensor_file_reads_what_safetensors_reads(tmp_path):
    from safetensors.numpy import load_file, save_file

    from keras_coatnet.weights.checkpoint import TensorFile

    rng = np.random.RandomState(0)
    arrays = {
        "a.weight": rng.normal(size=(4, 3, 3, 3)).astype("float32"),
        "a.bias": rng.normal(size=(4,)).astype("float16"),
        "steps": np.array(7, dtype="int64"),
        "empty": np.zeros((0, 5), "float32"),
    }
    path = str(tmp_path / "model.safetensors")
    save_file(arrays, path, metadata={"format": "pt"})
    reference = load_file(path)
    with TensorFile(path) as tensors:
        assert sorted(tensors.keys()) == sorted(reference)
        for key, value in reference.items():
            assert tensors.shape(key) == value.shape
            got = tensors.read(key)
            assert got.dtype == value.dtype
            np.testing.assert_array_equal(got, value)
    # Cut short: named, one line, before any tensor is read.
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-8])
    with pytest.raises(ValueError, match=r"is not a readable safetensors file: .*outside the file"):
        TensorFile(path)
