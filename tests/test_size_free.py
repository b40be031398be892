"""Size-free models: `input_shape=(None, None, 3)`, any multiple of 32 at call time.

The reference at each size is a fixed-size model built at that size with the
same weights (its tables resized by the load path, in NumPy) and timm's own
model created at that size (its checkpoint filter resizing the tables).
"""

import os

import keras
import numpy as np
import pytest
from helpers import TINY, import_timm_or_skip
from test_timm import LOGITS_BOUND, STAGE_BOUND, _assert_matches, _convert, _timm_model

import keras_coatnet as kc

# The native grid (224: 14x14 at S3, 7x7 at S4), a non-square one, a larger one.
SIZES = [(224, 224), (256, 320), (384, 384)]
NAMES = ["coatnet_0_rw_224", "coatnet_rmlp_1_rw_224"]
# Size-free against fixed-size: the same layers, except the bias of a
# non-native grid, resized in the graph (two matrix products) instead of by
# the load path (timm's corner sums): float32 rounding apart. As a fraction
# of each output's largest value, like the parity bounds.
FIXED_BOUND = 1e-5


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _child(code, *args) -> dict:
    """Run `code` in a fresh Python process with `args`; the JSON of its `RESULT ` line."""
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


@pytest.fixture(scope="module")
def torch():
    torch, _ = import_timm_or_skip()
    torch.set_num_threads(2)
    return torch


@pytest.fixture(scope="module")
def converted(torch, tmp_path_factory):
    """Per name: timm's seeded model and a `.weights.h5` converted from it at 224."""
    out = {}
    for name in NAMES:
        reference = _timm_model(torch, name)
        path = str(tmp_path_factory.mktemp(name) / f"{name}.weights.h5")
        _convert(reference).save_weights(path)
        out[name] = reference, path
    return out


def _build(name, path, shape):
    return kc.create_model(
        name,
        input_shape=shape,
        weights=path,
        classifier_activation=None,
        include_preprocessing=False,
    )


def _timm_at(torch, reference, size):
    import timm
    from timm.models.maxxvit import checkpoint_filter_fn

    name = reference.pretrained_cfg["architecture"]
    model = timm.create_model(name, img_size=size).eval()
    model.load_state_dict(checkpoint_filter_fn(reference.state_dict(), model))
    return model


# At 224, the native grid, the size-free model runs the fixed model's own
# computation (asserted identical): slow set, with the other sizes default.
@pytest.mark.parametrize(
    "size",
    [pytest.param(SIZES[0], marks=pytest.mark.slow), *SIZES[1:]],
    ids=lambda s: f"{s[0]}x{s[1]}",
)
@pytest.mark.parametrize("name", NAMES)
def test_size_free_model_equals_fixed_size_models_and_timm(torch, converted, name, size):
    reference, path = converted[name]
    free = _build(name, path, (None, None, 3))
    fixed = _build(name, path, (*size, 3))
    x = np.random.RandomState(0).normal(size=(1, *size, 3)).astype("float32")
    ours = {"logits": _numpy(free(x, training=False))}
    theirs = {"logits": _numpy(fixed(x, training=False))}
    for key, value in kc.stage_features(free)(x, training=False).items():
        ours[key] = _numpy(value)
    for key, value in kc.stage_features(fixed)(x, training=False).items():
        theirs[key] = _numpy(value)
    assert sorted(ours) == ["S0", "S1", "S2", "S3", "S4", "logits"]
    for key in ours:
        _assert_matches(ours[key], theirs[key], FIXED_BOUND, f"{name} {size} {key} vs fixed")
    if size == (224, 224):  # the native grid: the same computation
        np.testing.assert_array_equal(ours["logits"], theirs["logits"])
    # timm's own model at this size, at the suite's parity bounds.
    big = _timm_at(torch, reference, size)
    with torch.no_grad():
        batch = torch.from_numpy(x.transpose(0, 3, 1, 2))
        want = big(batch).numpy()
        stages = big.forward_intermediates(batch, intermediates_only=True)
    _assert_matches(ours["logits"], want, LOGITS_BOUND, f"{name} {size} logits vs timm")
    for i, stage in enumerate(stages):
        want = stage.numpy().transpose(0, 2, 3, 1)
        _assert_matches(ours[f"S{i}"], want, STAGE_BOUND, f"{name} {size} S{i} vs timm")


def test_size_free_weights_load_into_fixed_size_models_and_back(tmp_path):
    keras.utils.set_random_seed(0)
    free = kc.CoAtNet(TINY, input_shape=(None, None, 3), classes=10)
    x = np.random.RandomState(1).uniform(0, 255, (2, 96, 64, 3)).astype("float32")
    path = str(tmp_path / "free.weights.h5")
    free.save_weights(path)
    # Its tables are stored at the native grids (the default size, 224,
    # without a checkpoint): a fixed model at that size loads them unchanged
    # and answers the same.
    native = kc.CoAtNet(TINY, input_shape=(224, 224, 3), classes=10, weights=path)
    big = np.random.RandomState(2).uniform(0, 255, (1, 224, 224, 3)).astype("float32")
    np.testing.assert_array_equal(_numpy(native(big)), _numpy(free(big)))
    # A fixed model at another size resizes on load, as the size-free one does per call.
    other = kc.CoAtNet(TINY, input_shape=(96, 64, 3), classes=10, weights=path)
    _assert_matches(_numpy(free(x)), _numpy(other(x)), FIXED_BOUND, "96x64")
    # And back: a fixed model's file into a size-free model.
    back = str(tmp_path / "native.weights.h5")
    native.save_weights(back)
    again = kc.CoAtNet(TINY, input_shape=(None, None, 3), classes=10, weights=back)
    np.testing.assert_array_equal(_numpy(again(x)), _numpy(free(x)))


def test_size_free_model_saves_and_reloads_as_keras_file(tmp_path):
    keras.utils.set_random_seed(0)
    free = kc.CoAtNet(TINY, input_shape=(None, None, 3), classes=10)
    path = str(tmp_path / "free.keras")
    free.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.input_shape == (None, None, None, 3)
    for shape in ((1, 64, 64, 3), (1, 32, 96, 3)):
        x = np.random.RandomState(0).uniform(0, 255, shape).astype("float32")
        np.testing.assert_array_equal(_numpy(loaded(x)), _numpy(free(x)))


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 100, 100, 3), "image size 100x100 is not allowed: height and width must be "
         "multiples of 32, at least 32"),
        ((1, 64, 48, 3), "image size 64x48 is not allowed"),
        ((1, 0, 64, 3), "image size 0x64 is not allowed"),
    ],
)  # fmt: skip
def test_bad_sizes_get_one_line_errors(shape, message):
    model = kc.CoAtNet(TINY, input_shape=(None, None, 3), classes=10)
    with pytest.raises(ValueError) as raised:
        model(np.zeros(shape, "float32"))
    text = str(raised.value)
    assert text.startswith(message) and "\n" not in text, text


def test_a_size_free_model_trains_at_two_sizes():
    keras.utils.set_random_seed(0)
    model = kc.CoAtNet(TINY, input_shape=(None, None, 3), classes=10)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    table = next(v for v in model.trainable_weights if "relative_table" in v.path)
    before = _numpy(table).copy()
    for shape in ((4, 64, 64, 3), (4, 96, 64, 3)):
        x = np.random.RandomState(0).uniform(0, 255, shape).astype("float32")
        loss = float(model.train_on_batch(x, np.arange(4) % 10))
        assert np.isfinite(loss)
    # The table learned through both grids (the second one resized in the graph).
    assert np.abs(_numpy(table) - before).max() > 0


def test_litert_export_of_a_size_free_model_is_refused_in_one_line(tmp_path):
    # Its per-call bias needs TensorFlow select ops the LiteRT interpreter
    # lacks (measured: the file answered at the native size only): refused
    # up front, nothing written.
    model = kc.CoAtNet(TINY, input_shape=(None, None, 3), classes=10)
    with pytest.raises(ValueError, match=r"is size-free .*format='litert' takes a fixed size"):
        kc.export(model, str(tmp_path / "model.tflite"), format="litert")
    assert not os.listdir(tmp_path)


FILES_CHILD = """
import json, sys
import numpy as np
from keras_coatnet.serving import load

out = {}
for path in sys.argv[1:]:
    model = load(path, threads=1)
    result = {"size": list(model.image_size)}
    for name, shape in (("native", (2, 224, 224, 3)), ("other", (1, 96, 64, 3))):
        x = np.random.RandomState(0).uniform(0, 255, shape).astype("float32")
        result[name] = model(x).tolist()
    try:
        model(np.zeros((1, 100, 100, 3), "float32"))
    except ValueError as error:
        result["bad"] = str(error)
    out[path] = result
print("RESULT " + json.dumps(out))
"""


@pytest.mark.parametrize(
    "format, runtime",
    [
        # 64 s alone here against OpenVINO's 26 s: the default suite keeps OpenVINO.
        pytest.param("onnx", "onnxruntime", marks=pytest.mark.slow),
        ("openvino", "openvino"),
    ],
)
def test_one_file_export_answers_two_sizes_in_a_fresh_process(tmp_path, format, runtime):
    from helpers import randomize

    pytest.importorskip(runtime)
    keras.utils.set_random_seed(0)
    model = kc.CoAtNet(TINY, input_shape=(None, None, 3), classes=10)
    randomize(model)
    paths = [kc.export(model, str(tmp_path / "m"), format=format)]
    served = _child(FILES_CHILD, *paths)
    for path in paths:
        assert served[path]["size"] == [None, None], path
        for name, shape in (("native", (2, 224, 224, 3)), ("other", (1, 96, 64, 3))):
            x = np.random.RandomState(0).uniform(0, 255, shape).astype("float32")
            np.testing.assert_allclose(
                served[path][name], _numpy(model(x)), atol=1e-4, err_msg=f"{path} {name}"
            )
        # The runtimes have no assertion of their own (tf2onnx drops
        # TensorFlow's); `serving.load` checks the size rule before running.
        assert served[path]["bad"] == (
            "images must be float32 [batch, H, W, 3] pixels in 0..255, H and W multiples of "
            "32 (at least 32), received shape (1, 100, 100, 3)"
        ), served[path]


def test_prepare_image_goes_to_the_native_size_unless_given():
    from keras_coatnet.preprocessing import native_size

    free = kc.CoAtNet(TINY, input_shape=(None, None, 3), classes=10)
    fixed = kc.CoAtNet(TINY, input_shape=(64, 96, 3), classes=10)
    assert native_size(free) == 224 and native_size(fixed) is None  # TINY's default size
    photo = np.random.RandomState(0).uniform(0, 255, (300, 400, 3)).astype("float32")
    assert kc.prepare_image(photo, free).shape == (224, 224, 3)
    assert kc.prepare_image(photo, free, size=(96, 128)).shape == (96, 128, 3)
    assert kc.prepare_image(photo, fixed, size=160).shape == (64, 96, 3)  # its own size wins
    with pytest.raises(ValueError, match="size must be a positive multiple of 32, received: 100"):
        kc.prepare_image(photo, free, size=100)


@pytest.mark.parametrize("shape", [(None, None, 3), (64, 96, 3)])
def test_pyramid_outputs_name_levels_by_stride(shape):
    model = kc.CoAtNet(TINY, input_shape=shape, include_top=False)
    pyramid = kc.pyramid_outputs(model)
    assert list(pyramid) == ["P1", "P2", "P3", "P4", "P5"]
    features = keras.Model(model.input, pyramid)
    x = np.zeros((1, 64, 96, 3), "float32")
    maps = features(x)
    for level, feature in maps.items():
        stride = 2 ** int(level[1:])
        assert tuple(feature.shape[1:3]) == (64 // stride, 96 // stride), level
    # The same tensors as stage_features's S0..S4.
    stages = kc.stage_features(model)(x)
    for i in range(5):
        np.testing.assert_array_equal(_numpy(maps[f"P{i + 1}"]), _numpy(stages[f"S{i}"]))


SAVED_MODEL_CHILD = """
import json, sys
import numpy as np
import tensorflow as tf

loaded = tf.saved_model.load(sys.argv[1])
serve = loaded.signatures["serving_default"]
out = {}
for name, shape in (("native", (2, 224, 224, 3)), ("other", (1, 96, 64, 3))):
    x = np.random.RandomState(0).uniform(0, 255, shape).astype("float32")
    out[name] = serve(images=tf.constant(x))["probabilities"].numpy().tolist()
try:
    serve(images=tf.zeros((1, 100, 100, 3)))
    out["bad"] = None
except tf.errors.InvalidArgumentError as error:
    out["bad"] = error.message
image = tf.io.encode_jpeg(tf.cast(tf.random.uniform((50, 70, 3), 0, 255), tf.uint8))
out["bytes"] = loaded.signatures["serving_bytes"](image_bytes=tf.stack([image]))[
    "probabilities"].shape.as_list()
print("RESULT " + json.dumps(out))
"""


def test_one_saved_model_answers_two_sizes_in_a_fresh_process(tmp_path):
    """The size-free SavedModel: its native grid (the bias as stored) and another (per call)."""
    from helpers import randomize

    keras.utils.set_random_seed(0)
    model = kc.CoAtNet(TINY, input_shape=(None, None, 3), classes=10)
    randomize(model)
    target = kc.export(model, str(tmp_path / "serving"))
    served = _child(SAVED_MODEL_CHILD, target)
    for name, shape in (("native", (2, 224, 224, 3)), ("other", (1, 96, 64, 3))):
        x = np.random.RandomState(0).uniform(0, 255, shape).astype("float32")
        np.testing.assert_allclose(served[name], _numpy(model(x)), atol=1e-4, err_msg=name)
    # TensorFlow's graph error, naming the rule (as the fixed-size export names its size).
    rule = "images must be float32 [batch, H, W, 3] pixels in 0..255, H and W multiples of 32"
    assert f"assertion failed: [{rule} (at least 32)]" in served["bad"], served["bad"]
    assert served["bytes"] == [1, 10]  # prepared at the native size, 224
