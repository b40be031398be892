"""Export a CoAtNet as a SavedModel that TF Serving loads as it is.

    keras_coatnet.export(model, "serving/coatnet")   # writes serving/coatnet/1/

(`keras_coatnet.export` with the default `format="tf_saved_model"`.)

Signatures (names are the serving API):

- `serving_default`: `images`, float32 `[batch, H, W, 3]`, pixels in 0..255
  at the model's fixed size -> `probabilities` float32 `[batch, classes]`
  (or `logits`), `top_k_indices` int32 `[batch, k]`, `top_k_scores` float32
  `[batch, k]` (the same quantity as the first output).
- `serving_bytes`: `image_bytes`, string `[batch]` of encoded JPEG/PNG/GIF/BMP
  (the REST API's `{"b64": ...}`) -> the same outputs. Each image is decoded
  to RGB, then resized and centre-cropped to `H x W` by
  `keras_coatnet.preprocessing.eval_transform` with the evaluation settings
  of the model's weights (timm's `crop_pct`, crop mode and interpolation),
  with TensorFlow's bicubic/bilinear kernels instead of PIL's.

The version also holds `assets.extra/tf_serving_warmup_requests`
(`serving.warmup`): one batch-1 request per signature, which TF Serving
replays while loading it, so graph optimisation and kernel set-up are done
before the first client's request. Like the rest, it is written before the
version directory is renamed into place.

The relative attention biases are gathered once at export and stored once,
as variables that both signatures read (`serving.frozen`): the exported
graph has no gather and no variable update, so concurrent requests share
nothing mutable, and the SavedModel is about the size of the weights plus
one copy of the biases. Only TensorFlow can
write SavedModels; a model built on another backend is exported after
moving its weights into a TensorFlow-backend process.
"""

from __future__ import annotations

import os
import shutil
import uuid

import keras

from keras_coatnet.naming import HEAD_LAYER
from keras_coatnet.preprocessing import EvalSettings, eval_transform
from keras_coatnet.preprocessing import eval_settings as model_eval_settings
from keras_coatnet.serving.formats import (
    INPUT_BYTES,
    INPUT_IMAGES,
    OUTPUTS,
    PRECISIONS,
    SIGNATURE_BYTES,
    SIGNATURE_IMAGES,
)
from keras_coatnet.serving.frozen import frozen_biases
from keras_coatnet.serving.precision import bfloat16_twin
from keras_coatnet.serving.tf_graph import convolution_stages_per_image, tf_serving_graph
from keras_coatnet.serving.warmup import write_warmup_requests


def _head_activation(model):
    try:
        head = model.get_layer(HEAD_LAYER)
    except ValueError:
        raise ValueError(
            "export needs a classifier: build the model with include_top=True"
        ) from None
    return keras.activations.serialize(head.activation)


def check_model(model, outputs, top_k=1):
    """Input height, width (`None` for a size-free model) and head activation, else an error."""
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"export writes a TensorFlow SavedModel; the Keras backend is "
            f"{keras.backend.backend()!r}. Save the weights and export from a process "
            "with KERAS_BACKEND=tensorflow"
        )
    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a keras.Model, received: {model!r}")
    if outputs not in OUTPUTS:
        raise ValueError(f"outputs must be one of {OUTPUTS}, received: {outputs!r}")
    names = {layer.name for layer in model.layers}
    if "preprocessing" not in names:
        raise ValueError(
            "export serves pixels in 0..255: build the model with include_preprocessing=True"
        )
    _, height, width, channels = model.input.shape
    if (height is None) != (width is None) or channels != 3:
        raise ValueError(
            "export needs an (H, W, 3) input with both sides fixed or both None, "
            f"the model has {model.input.shape}"
        )
    classes = model.output.shape[-1]
    if not isinstance(top_k, int) or not 1 <= top_k <= classes:
        raise ValueError(f"top_k must be an int in [1, {classes}], received: {top_k!r}")
    activation = _head_activation(model)
    if outputs == "logits" and activation not in ("linear", None):
        raise ValueError(
            f"outputs='logits' needs a model built with classifier_activation=None; this "
            f"head applies {activation!r}"
        )
    if outputs == "probabilities" and activation not in ("softmax", "linear", None):
        raise ValueError(
            f"outputs='probabilities' needs a softmax or linear head, this one applies "
            f"{activation!r}"
        )
    return height, width, activation


def _next_version(path):
    versions = [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []
    return max(versions, default=0) + 1


def write_saved_model(
    model,
    path,
    version: int | None = None,
    outputs: str = "probabilities",
    top_k: int = 5,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    interpolation: str | None = None,
    precision: str = "f32",
    image_size: int | None = None,
) -> str:
    """`keras_coatnet.export(..., format="tf_saved_model")`: write `path/<version>/`.

    `precision="bf16"` exports `serving.precision.bfloat16_twin(model)`. A
    size-free model (`input_shape=(None, None, 3)`) gets a `serving_default`
    of `[batch, None, None, 3]` (any multiple of 32 per request) and a
    `serving_bytes` that prepares every image at `image_size` (default: the
    size its tables are stored for, `preprocessing.native_size`).
    """
    import tensorflow as tf

    from keras_coatnet.config import SIZE_STEP, check_image_size
    from keras_coatnet.preprocessing import native_size

    height, width, activation = check_model(model, outputs, top_k)
    size_free = height is None
    if image_size is not None and not size_free:
        raise ValueError(
            f"image_size={image_size!r} is for size-free models; this one takes "
            f"{height}x{width} images"
        )
    bytes_size = (height, width)
    if size_free:
        side = check_image_size(image_size or native_size(model), "image_size")
        bytes_size = (side, side)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, received: {precision!r}")
    changes = dict(crop_pct=crop_pct, crop_mode=crop_mode, interpolation=interpolation)
    changes = {key: value for key, value in changes.items() if value is not None}
    settings = model_eval_settings(model, EvalSettings()).replace(**changes)
    path = os.fspath(path)
    version = _next_version(path) if version is None else version
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"version must be a positive int, received: {version!r}")
    target = os.path.join(path, str(version))
    if os.path.exists(target):
        raise ValueError(f"{target!r} exists; TF Serving versions are immutable, pick another")
    if precision == "bf16":
        # Its head is linear: the softmax below runs on float32 logits.
        model = bfloat16_twin(model)
        activation = _head_activation(model)
    softmax = outputs == "probabilities" and activation in ("linear", None)

    def predict(images):
        if size_free:
            expected = (
                "images must be float32 [batch, H, W, 3] pixels in 0..255, H and W "
                f"multiples of {SIZE_STEP} (at least {SIZE_STEP})"
            )
            sides = tf.shape(images)[1:3]
            size_ok = tf.reduce_all((sides % SIZE_STEP == 0) & (sides >= SIZE_STEP))
            shape_check = tf.debugging.assert_equal(size_ok, True, message=expected)
        else:
            expected = f"images must be float32 [batch, {height}, {width}, 3] pixels in 0..255"
            shape_check = tf.debugging.assert_equal(
                tf.shape(images)[1:], tf.constant([height, width, 3]), message=expected
            )
        checks = [
            shape_check,
            tf.debugging.assert_greater(
                tf.shape(images)[0], 0, message=f"{expected}, with at least one image"
            ),
        ]
        # Before the model: otherwise a kernel deep inside may fail first.
        with tf.control_dependencies(checks):
            images = tf.identity(images)
        scores = tf.cast(forward(images), tf.float32)
        if softmax:
            scores = tf.nn.softmax(scores, axis=-1)
        top = tf.math.top_k(scores, k=top_k)
        return {
            outputs: scores,
            "top_k_indices": tf.cast(top.indices, tf.int32),
            "top_k_scores": top.values,
        }

    def decode_one(data):
        length = tf.strings.length(data)
        not_empty = tf.debugging.assert_greater(
            length, 0, message="image_bytes holds an empty string"
        )
        is_jpeg = tf.strings.substr(data, 0, 2) == b"\xff\xd8"
        # An end-of-image marker anywhere after the start: cameras and some
        # servers append bytes after it, which the decoder ignores.
        raw = tf.io.decode_raw(data, tf.uint8)
        complete = tf.reduce_any(tf.logical_and(raw[:-1] == 0xFF, raw[1:] == 0xD9))
        with tf.control_dependencies([not_empty]):
            whole_jpeg = tf.debugging.assert_equal(
                tf.logical_or(tf.logical_not(is_jpeg), complete),
                True,
                message="image_bytes holds a truncated JPEG (no end-of-image marker)",
            )
        # The checks run before the decode: without the dependency, which error a
        # client sees (ours or the decoder's) depends on thread scheduling.
        with tf.control_dependencies([not_empty, whole_jpeg]):
            image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
        return eval_transform(image, bytes_size, settings)

    def predict_bytes(image_bytes):
        images = tf.map_fn(
            decode_one,
            image_bytes,
            fn_output_signature=tf.TensorSpec((*bytes_size, 3), tf.float32),
        )
        return predict(images)

    # Not `archive.track(model)`: it adds Keras's variable wrappers beside the
    # tf.Variables the endpoints capture, and both are written (every weight
    # twice). The variables the endpoints read are tracked on their own.
    archive = keras.export.ExportArchive()
    # Tracing happens as late as write_out: keep the biases frozen until then.
    with frozen_biases(model), tf_serving_graph(model):
        forward = convolution_stages_per_image(model)
        archive.add_endpoint(
            SIGNATURE_IMAGES,
            predict,
            input_signature=[
                tf.TensorSpec((None, height, width, 3), tf.float32, name=INPUT_IMAGES)
            ],
        )
        archive.add_endpoint(
            SIGNATURE_BYTES,
            predict_bytes,
            input_signature=[tf.TensorSpec((None,), tf.string, name=INPUT_BYTES)],
        )
        os.makedirs(path, exist_ok=True)
        # Written beside the version under a name TF Serving ignores (not a
        # number), renamed when complete: a failure half-way leaves no version.
        partial = os.path.join(path, f".{version}.partial-{uuid.uuid4().hex[:8]}")
        try:
            archive.write_out(partial, verbose=False)
            write_warmup_requests(partial, *bytes_size)
            os.rename(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return target


def gather_ops(saved_model_dir, signature=SIGNATURE_IMAGES) -> list[str]:
    """Names of gather ops in a loaded signature's graph and its functions."""
    import tensorflow as tf

    loaded = tf.saved_model.load(saved_model_dir)
    graph_def = loaded.signatures[signature].graph.as_graph_def()
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    # Dense layers on 4-D maps gather static shape entries (Tensordot); those
    # are not table lookups.
    return [node.name for node in nodes if "Gather" in node.op and "Tensordot" not in node.name]
