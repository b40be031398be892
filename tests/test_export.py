"""SavedModel export for TF Serving: signatures, frozen biases, bad requests."""

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from helpers import TINY, images, randomize, tiny_model

import keras_coatnet as kc
from keras_coatnet._keras_compat import walk_layers
from keras_coatnet.serving.savedmodel import gather_ops

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="SavedModel export is TensorFlow-only"
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A randomized tiny model, exported twice: default crop, and crop_pct=1."""
    keras.utils.set_random_seed(0)
    model = tiny_model()
    randomize(model)
    base = tmp_path_factory.mktemp("serving") / "coatnet"
    first = kc.export(model, base)
    second = kc.export(model, base, crop_pct=1.0)
    return model, str(base), first, second


def _png(pixels):
    import tensorflow as tf

    return tf.io.encode_png(tf.cast(pixels, tf.uint8)).numpy()


def test_versions_follow_tf_serving_layout(exported):
    model, base, first, second = exported
    assert first == os.path.join(base, "1") and second == os.path.join(base, "2")
    assert os.path.isfile(os.path.join(first, "saved_model.pb"))
    with pytest.raises(ValueError, match="exists"):
        kc.export(model, base, version=1)


def test_fresh_process_reproduces_predict_on_both_signatures(exported, tmp_path):
    model, _, first, second = exported
    x = np.round(images((3, 64, 64, 3)))  # whole pixel values survive PNG
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", model.predict(x, verbose=0))
    pngs = [_png(image) for image in x]
    with open(tmp_path / "pngs.json", "w") as f:
        json.dump([p.hex() for p in pngs], f)
    code = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        import tensorflow as tf
        x = np.load({str(tmp_path / "x.npy")!r})
        expected = np.load({str(tmp_path / "expected.npy")!r})
        pngs = [bytes.fromhex(h) for h in json.load(open({str(tmp_path / "pngs.json")!r}))]
        loaded = tf.saved_model.load({first!r})  # kept referenced while called
        out = loaded.signatures["serving_default"](images=tf.constant(x))
        dense = np.abs(out["probabilities"].numpy() - expected).max()
        order = np.argsort(-expected, axis=1)[:, :5]
        assert (out["top_k_indices"].numpy() == order).all()
        cropless = tf.saved_model.load({second!r})
        out = cropless.signatures["serving_bytes"](image_bytes=tf.constant(pngs))
        encoded = np.abs(out["probabilities"].numpy() - expected).max()
        assert "keras_coatnet" not in sys.modules
        print("diffs", dense, encoded)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    dense, encoded = map(float, result.stdout.split("diffs")[-1].split())
    assert dense <= 1e-5 and encoded <= 1e-5


def test_saved_model_cli_lists_the_documented_signatures(exported):
    _, _, first, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run(
        [cli, "show", "--dir", first, "--all"], capture_output=True, text=True
    ).stdout
    default = shown.split("signature_def['serving_default']")[1]
    encoded = shown.split("signature_def['serving_bytes']")[1].split("signature_def[")[0]
    assert "inputs['images']" in default and "shape: (-1, 64, 64, 3)" in default
    assert "dtype: DT_FLOAT" in default.split("outputs")[0]
    assert "inputs['image_bytes']" in encoded and "dtype: DT_STRING" in encoded
    assert "shape: (-1)" in encoded
    for name, dtype, shape in (
        ("probabilities", "DT_FLOAT", "(-1, 10)"),
        ("top_k_indices", "DT_INT32", "(-1, 5)"),
        ("top_k_scores", "DT_FLOAT", "(-1, 5)"),
    ):
        part = default.split(f"outputs['{name}']")[1].split("outputs[")[0]
        assert dtype in part and shape in part, (name, part)


def test_serving_graph_has_no_gather_on_the_bias(exported, tmp_path):
    model, _, first, _ = exported
    assert gather_ops(first) == [] and gather_ops(first, "serving_bytes") == []
    # The check can fail: Keras's own export gathers the table (in the cache branch).
    plain = str(tmp_path / "plain")
    model.export(plain, format="tf_saved_model", verbose=False)
    assert any("attn" in name for name in gather_ops(plain, "serve"))


def test_concurrent_calls_match_serial_calls(exported):
    import tensorflow as tf

    _, _, first, _ = exported
    loaded = tf.saved_model.load(first)
    serve = loaded.signatures["serving_default"]
    batches = [images((2, 64, 64, 3), seed=s) for s in range(8)]
    serial = [serve(images=tf.constant(b))["probabilities"].numpy() for b in batches]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        parallel = list(
            pool.map(lambda b: serve(images=tf.constant(b))["probabilities"].numpy(), batches)
        )
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_bytes_checks_run_before_the_decode(exported):
    """Each DecodeImage op waits for the request checks (control inputs)."""
    import tensorflow as tf

    _, _, first, _ = exported
    graph_def = tf.saved_model.load(first).signatures["serving_bytes"].graph.as_graph_def()
    nodes = [n for f in graph_def.library.function for n in f.node_def]
    decodes = [n for n in nodes if n.op == "DecodeImage"]
    assert decodes
    for node in decodes:
        controls = [i for i in node.input if i.startswith("^")]
        assert len(controls) >= 2, (node.name, list(node.input))


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda jpeg, png: b"", "empty string"),
        (lambda jpeg, png: b"this is not an image", "Unknown image file format"),
        (lambda jpeg, png: jpeg[: len(jpeg) // 2], "truncated JPEG"),
        (lambda jpeg, png: png[: len(png) // 2], "PNG|png|Invalid|truncated"),
    ],
    ids=["empty", "not-an-image", "truncated-jpeg", "truncated-png"],
)
def test_malformed_bytes_fail_that_request_clearly(exported, make, message):
    import tensorflow as tf

    _, _, first, _ = exported
    loaded = tf.saved_model.load(first)
    pixels = images((1, 64, 64, 3))[0]
    jpeg = tf.io.encode_jpeg(tf.cast(pixels, tf.uint8)).numpy()
    bad = tf.constant([make(jpeg, _png(pixels))] * 16)

    def error_of(_):
        try:
            loaded.signatures["serving_bytes"](image_bytes=bad)
        except tf.errors.InvalidArgumentError as error:
            return error.message
        return None

    # The checks must run before the decode whatever the thread scheduling: many
    # requests at once, so a race between them shows.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        errors = list(pool.map(error_of, range(48)))
    assert all(e is not None and re.search(message, e) for e in errors), {
        e.splitlines()[0] if e else e for e in errors
    }
    # The next, well-formed request is served.
    good = loaded.signatures["serving_bytes"](image_bytes=tf.constant([jpeg]))
    assert good["probabilities"].shape == (1, 10)


def test_malformed_images_fail_clearly_and_the_next_call_is_answered(exported):
    import tensorflow as tf

    model, _, first, _ = exported
    serve = tf.saved_model.load(first).signatures["serving_default"]
    bad = {
        "wrong size": np.zeros((1, 32, 32, 3), "float32"),
        "one channel": np.zeros((1, 64, 64, 1), "float32"),
        "empty batch": np.zeros((0, 64, 64, 3), "float32"),
    }
    x = images((1, 64, 64, 3))
    for name, value in bad.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[batch, 64, 64, 3\]"):
            serve(images=tf.constant(value))
        out = serve(images=tf.constant(x))["probabilities"].numpy()
        np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-6, err_msg=name)
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor"):
        serve(images=tf.constant(x.astype("float64")))
    with pytest.raises(tf.errors.InvalidArgumentError):
        serve(images=tf.constant(x[0]))
    np.testing.assert_allclose(serve(images=tf.constant(x))["probabilities"].numpy(), out)


def test_export_rejects_models_it_cannot_serve(tmp_path):
    with pytest.raises(ValueError, match="include_preprocessing=True"):
        kc.export(tiny_model(include_preprocessing=False), tmp_path / "a")
    with pytest.raises(ValueError, match="include_top=True"):
        kc.export(tiny_model(include_top=False, pooling="avg"), tmp_path / "b")
    with pytest.raises(ValueError, match="classifier_activation=None"):
        kc.export(tiny_model(), tmp_path / "c", outputs="logits")
    with pytest.raises(ValueError, match="top_k"):
        kc.export(tiny_model(), tmp_path / "d", top_k=11)
    assert not os.path.exists(tmp_path / "a")


def test_logits_export_and_frozen_state_is_restored(tmp_path):
    import tensorflow as tf

    model = tiny_model(classifier_activation=None)
    randomize(model)
    target = kc.export(model, tmp_path / "logits", outputs="logits", top_k=3)
    x = images()
    out = tf.saved_model.load(target).signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(out["logits"].numpy(), model.predict(x, verbose=0), atol=1e-5)
    attention = [layer for layer in walk_layers(model) if hasattr(layer, "frozen_bias")]
    assert attention and all(layer.frozen_bias is None for layer in attention)


def _bytes_under(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)


@pytest.mark.parametrize("cache_bias", [True, False])
def test_the_saved_model_holds_the_weights_and_one_copy_of_the_biases(tmp_path, cache_bias):
    import tensorflow as tf

    # 384 px: the S3 maps are 24x24, so the biases are 15x the weights and the
    # graph (0.7 MB) is small beside them. The old export (constants in each
    # signature, the cache, the weights twice) wrote 2.7x this bound.
    model = tiny_model(input_shape=(384, 384, 3), cache_bias=cache_bias)
    randomize(model)
    attention = [layer for layer in walk_layers(model) if hasattr(layer, "frozen_bias")]
    bias = sum(4 * layer.num_heads * (layer.height * layer.width) ** 2 for layer in attention)
    weights = 4 * model.count_params()
    assert bias > 10 * weights
    target = kc.export(model, tmp_path / "big")
    # Besides: the warm-up requests, one float32 picture and a JPEG of it.
    warmup = os.path.getsize(os.path.join(target, "assets.extra", "tf_serving_warmup_requests"))
    picture = 4 * 384 * 384 * 3
    assert picture < warmup < 1.05 * picture
    assert _bytes_under(target) - warmup < 1.1 * (weights + bias)
    x = images((2, 384, 384, 3))
    out = tf.saved_model.load(target).signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(out["probabilities"].numpy(), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.slow
def test_coatnet_1_at_384_exports_its_weights_and_one_copy_of_the_biases(tmp_path):
    import tensorflow as tf

    model = kc.CoAtNet1(weights=None, input_shape=(384, 384, 3))
    attention = [layer for layer in walk_layers(model) if hasattr(layer, "frozen_bias")]
    bias = sum(4 * layer.num_heads * (layer.height * layer.width) ** 2 for layer in attention)
    target = kc.export(model, tmp_path / "c1")
    assert _bytes_under(target) < 1.1 * (4 * model.count_params() + bias)
    x = images((1, 384, 384, 3))
    out = tf.saved_model.load(target).signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(out["probabilities"].numpy(), model.predict(x, verbose=0), atol=1e-5)


def test_client_example_builds_real_requests(tmp_path):
    pytest.importorskip("tensorflow_serving")
    import base64

    import tensorflow as tf

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    import serving_client

    path = tmp_path / "digit.png"
    path.write_bytes(_png(images((1, 64, 64, 3))[0]))
    body = serving_client.rest_body([str(path)])
    assert body["signature_name"] == "serving_bytes"
    assert base64.b64decode(body["instances"][0]["b64"]) == path.read_bytes()
    request = serving_client.bytes_request([str(path)], "coatnet")
    assert request.model_spec.signature_name == "serving_bytes"
    assert tf.make_ndarray(request.inputs["image_bytes"])[0] == path.read_bytes()
    dense = serving_client.images_request(np.zeros((2, 64, 64, 3), "float32"), "coatnet")
    assert tf.make_ndarray(dense.inputs["images"]).shape == (2, 64, 64, 3)
    # The command line prints both.
    script = os.path.join(os.path.dirname(__file__), "..", "examples", "serving_client.py")
    out = subprocess.run(
        [sys.executable, script, str(path), "--size", "64"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "/v1/models/coatnet:predict" in out.stdout and '"b64"' in out.stdout
    assert "serving_default, images (1, 64, 64, 3)" in out.stdout


def test_export_command_writes_a_version(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_coatnet_cli",
            "export",
            "coatnet-digits",
            "--classes",
            "10",
            "--output",
            str(tmp_path / "digits"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "digits" / "1" / "saved_model.pb").is_file()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_coatnet_cli",
            "export",
            "coatnet-99",
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown model 'coatnet-99'" in bad.stderr


def test_bytes_signature_follows_the_weights_eval_settings(tmp_path):
    """A model carrying squash/1.0 settings serves a non-square image squashed whole."""
    import tensorflow as tf

    from keras_coatnet.preprocessing import EvalSettings, eval_transform
    from keras_coatnet.weights import resolve
    from keras_coatnet.weights.resolver import ResolvedWeights

    source = tiny_model(classifier_activation=None)
    randomize(source)
    source.save_weights(str(tmp_path / "w.weights.h5"))
    settings = EvalSettings(crop_pct=1.0, crop_mode="squash")
    resolved = resolve(str(tmp_path / "w.weights.h5"), TINY)
    model = tiny_model(
        weights=ResolvedWeights(**{**resolved.__dict__, "eval_settings": settings}),
        classifier_activation=None,
    )
    target = kc.export(model, tmp_path / "serving", outputs="logits")
    # Bright at the top, dark at the bottom: the centre crop cuts both ends off.
    ramp = np.repeat(np.linspace(255, 0, 96)[:, None], 64, axis=1)
    pixels = np.round(np.stack([ramp, 255 - ramp, ramp**2 / 255], axis=-1)).astype("float32")
    served = (
        tf.saved_model.load(target)
        .signatures["serving_bytes"](image_bytes=tf.constant([_png(pixels)]))["logits"]
        .numpy()
    )
    squashed = tf.image.resize(pixels, (64, 64), method="bicubic", antialias=True)
    want = model.predict(np.clip(squashed.numpy(), 0, 255)[None], verbose=0)
    np.testing.assert_allclose(served, want, atol=1e-5)
    # The default centre crop would see another picture.
    centre = eval_transform(pixels, (64, 64), EvalSettings()).numpy()
    assert np.abs(model.predict(centre[None], verbose=0) - want).max() > 1e-3


@pytest.mark.parametrize("interruption", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_an_interrupted_export_leaves_no_version(tmp_path, monkeypatch, interruption):
    """TF Serving must never see a partial version directory."""
    archive_class = type(keras.export.ExportArchive())  # the backend's class
    original = archive_class.write_out

    def write_half_then_fail(self, filepath, **kwargs):
        original(self, filepath, **kwargs)  # everything on disk, then the failure
        raise interruption

    monkeypatch.setattr(archive_class, "write_out", write_half_then_fail)
    with pytest.raises(type(interruption)):
        kc.export(tiny_model(), tmp_path / "serving")
    assert os.listdir(tmp_path / "serving") == []
    monkeypatch.undo()
    assert kc.export(tiny_model(), tmp_path / "serving") == str(tmp_path / "serving" / "1")


def test_export_command_failures_end_in_one_line(tmp_path, capsys):
    from keras_coatnet.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    argv = ["export", "coatnet-digits", "--classes", "10", "--output", str(blocker / "serving")]
    assert main(argv) == 1  # I/O failure while working
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("coatnet export: error: ")
    assert "(--verbose shows the traceback)" in err
    assert main([*argv, "--verbose"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    assert main(["export", "coatnet-digits", "--top-k", "0", "--output", str(tmp_path)]) == 2
    assert "top_k must be an int" in capsys.readouterr().err


def test_jpegs_with_bytes_after_the_end_marker_are_served(exported):
    """Cameras and some servers append data after the end-of-image marker."""
    import tensorflow as tf

    _, _, first, _ = exported
    serve = tf.saved_model.load(first).signatures["serving_bytes"]
    pixels = images((1, 64, 64, 3))[0]
    jpeg = tf.io.encode_jpeg(tf.cast(pixels, tf.uint8)).numpy()
    clean = serve(image_bytes=tf.constant([jpeg]))["probabilities"].numpy()
    padded = jpeg + b"\x00" * 37 + b"trailing metadata"
    np.testing.assert_array_equal(
        serve(image_bytes=tf.constant([padded]))["probabilities"].numpy(), clean
    )
    # Cut before its end marker, it is still refused as truncated.
    with pytest.raises(tf.errors.InvalidArgumentError, match="truncated JPEG"):
        serve(image_bytes=tf.constant([jpeg[: len(jpeg) - 40] + b"trailing metadata"]))


def _warmup_records(version_dir):
    """The warm-up file parsed as TF Serving parses it: {signature name: PredictRequest}."""
    prediction_log_pb2 = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
    import tensorflow as tf

    file = os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")
    records = [r.numpy() for r in tf.data.TFRecordDataset(file)]
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in records]
    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log"] * 2
    requests = [log.predict_log.request for log in logs]
    # Nothing dropped as an unknown field: the parse re-encodes to the same bytes.
    for log, record in zip(logs, records, strict=True):
        assert log.SerializeToString(deterministic=True) == record
    return {request.model_spec.signature_name: request for request in requests}


def test_warmup_records_hold_one_valid_request_per_signature(exported):
    import tensorflow as tf

    _, _, first, second = exported
    requests = _warmup_records(first)
    assert sorted(requests) == ["serving_bytes", "serving_default"]
    assert all(r.model_spec.name == "" for r in requests.values())
    images_request, bytes_request = requests["serving_default"], requests["serving_bytes"]
    assert list(images_request.inputs) == ["images"]
    assert list(bytes_request.inputs) == ["image_bytes"]
    pixels = tf.make_ndarray(images_request.inputs["images"])
    assert pixels.dtype == np.float32 and pixels.shape == (1, 64, 64, 3)
    assert pixels.min() >= 0 and pixels.max() <= 255 and pixels.std() > 30
    encoded = tf.make_ndarray(bytes_request.inputs["image_bytes"])
    assert encoded.dtype == object and encoded.shape == (1,)
    assert encoded[0][:2] == b"\xff\xd8"  # a JPEG
    # Deterministic: every export of this size writes the same file.
    file = os.path.join("assets.extra", "tf_serving_warmup_requests")
    with open(os.path.join(first, file), "rb") as a, open(os.path.join(second, file), "rb") as b:
        assert a.read() == b.read()


def test_warmup_records_replay_like_direct_calls(exported):
    """Each record, fed to its signature, answers what the same inputs give directly."""
    import tensorflow as tf

    from keras_coatnet.preprocessing import EvalSettings, eval_settings, eval_transform

    model, _, first, _ = exported
    requests = _warmup_records(first)
    signatures = tf.saved_model.load(first).signatures
    replies = {
        name: signatures[name](
            **{key: tf.constant(tf.make_ndarray(p)) for key, p in request.inputs.items()}
        )
        for name, request in requests.items()
    }
    pixels = tf.make_ndarray(requests["serving_default"].inputs["images"])
    want = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(replies["serving_default"]["probabilities"].numpy(), want, atol=1e-6)
    # The bytes record: its decoded picture, cropped as the signature crops it
    # (the model's settings), through the images path.
    jpeg = tf.make_ndarray(requests["serving_bytes"].inputs["image_bytes"])[0]
    decoded = tf.io.decode_jpeg(jpeg, channels=3)
    settings = eval_settings(model, EvalSettings())
    cropped = eval_transform(decoded, (64, 64), settings).numpy()[None]
    direct = signatures["serving_default"](images=tf.constant(cropped))["probabilities"].numpy()
    served = replies["serving_bytes"]["probabilities"].numpy()
    np.testing.assert_allclose(served, direct, atol=1e-6)
    top = np.sort(direct[0])[-2:]
    assert top[1] - top[0] > 1e-4  # the top-1 is well defined
    assert served.argmax() == direct.argmax() == model.predict(cropped, verbose=0).argmax()
