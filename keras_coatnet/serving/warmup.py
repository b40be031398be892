"""TF Serving warm-up records, written into every SavedModel version.

TF Serving replays `assets.extra/tf_serving_warmup_requests` when it loads a
version (`--enable_model_warmup`, on by default), before the version takes
requests: the first call's graph optimisation and kernel set-up happen at
load time instead of in the first client's request. The file is a TFRecord
of `tensorflow.serving.PredictionLog` protos (at most 1000 are read), one
here per signature:

- `serving_default`: `images`, one deterministic `H x W` picture (float32,
  whole pixel values in 0..255);
- `serving_bytes`: `image_bytes`, the same picture as one JPEG, which the
  signature decodes, resizes and crops.

Reference: https://www.tensorflow.org/tfx/serving/saved_model_warmup and
tensorflow_serving/servables/tensorflow/saved_model_warmup{,_util}.cc (the
reader looks the signature up by `model_spec.signature_name`, never by model
name, so the name is left empty).

The records are encoded here rather than with tensorflow-serving-api, which
stays an optional extra: each input is a `TensorProto` that TensorFlow
serializes, and the three messages around it are written in the protobuf
wire format by hand.
"""

from __future__ import annotations

import os

import numpy as np

from keras_coatnet.serving.formats import (
    INPUT_BYTES,
    INPUT_IMAGES,
    SIGNATURE_BYTES,
    SIGNATURE_IMAGES,
)

# tensorflow/cc/saved_model/constants.h kSavedModelAssetsExtraDirectory and
# tensorflow_serving/servables/tensorflow/saved_model_warmup_util.h
# WarmupConsts::kRequestsFileName.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

# Field numbers, as in tensorflow-serving-api 2.21's protos:
# prediction_log.proto  PredictionLog.predict_log = 6, PredictLog.request = 1;
# predict.proto         PredictRequest.model_spec = 1, .inputs = 2
#                       (map<string, TensorProto>: entries {key = 1, value = 2});
# model.proto           ModelSpec.signature_name = 3 (name = 1 stays unset).
_PREDICT_LOG = 6
_REQUEST = 1
_MODEL_SPEC = 1
_INPUTS = 2
_SIGNATURE_NAME = 3
_KEY, _VALUE = 1, 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited field (wire type 2): a message, string or bytes."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def predict_log(signature_name: str, inputs: dict[str, bytes]) -> bytes:
    """A serialized `PredictionLog` holding one `PredictRequest`.

    Args:
        signature_name: the signature the request calls.
        inputs: input name -> serialized `TensorProto`.
    """
    spec = _field(_SIGNATURE_NAME, signature_name.encode())
    entries = b"".join(
        _field(_INPUTS, _field(_KEY, name.encode()) + _field(_VALUE, tensor))
        for name, tensor in sorted(inputs.items())
    )
    request = _field(_MODEL_SPEC, spec) + entries
    return _field(_PREDICT_LOG, _field(_REQUEST, request))


def sample_image(height: int, width: int) -> np.ndarray:
    """A deterministic float32 `(height, width, 3)` picture, whole pixels in 0..255."""
    y, x = np.mgrid[0:height, 0:width].astype("float64")
    red = 255 * x / max(width - 1, 1)
    green = 255 * y / max(height - 1, 1)
    blue = 127.5 + 127.5 * np.sin((x + 2 * y) / 6)  # texture for the convolutions
    return np.round(np.stack([red, green, blue], axis=-1)).astype("float32")


def write_warmup_requests(version_dir: str, height: int, width: int) -> str:
    """Write one warm-up request per signature under `version_dir`; returns the file."""
    import tensorflow as tf

    image = sample_image(height, width)
    jpeg = tf.io.encode_jpeg(image.astype("uint8"), quality=95).numpy()
    records = [
        predict_log(
            SIGNATURE_IMAGES,
            {INPUT_IMAGES: tf.make_tensor_proto(image[None]).SerializeToString()},
        ),
        predict_log(
            SIGNATURE_BYTES,
            {INPUT_BYTES: tf.make_tensor_proto([jpeg], tf.string).SerializeToString()},
        ),
    ]
    path = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    return path
