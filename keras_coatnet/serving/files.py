"""One-file exports through Keras's own `model.export(format=...)`: ONNX, LiteRT, OpenVINO.

Each takes the tensor `serving_default` takes (`images`, float32
`[batch, H, W, 3]`, pixels in 0..255, dynamic batch) and returns the
scores (`probabilities` or `logits`) as one float32 `[batch, classes]`
output. The model is traced inside `frozen_biases`, so each attention bias
is a constant stored once, with no gather. An ONNX graph is traced with the
MBConv 1x1 convolutions as convolutions (`frozen.pointwise_convolutions`)
and then gets the GELU form ONNX Runtime fuses and one node per LayerNorm
(`onnx_fusions`). Files are written beside the
target under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid

import keras

from keras_coatnet.serving.formats import EXTENSIONS
from keras_coatnet.serving.frozen import frozen_biases, pointwise_convolutions
from keras_coatnet.serving.savedmodel import check_model


def target_path(path, format: str) -> str:
    """`path` with the format's extension (added when it has none); else a clear error."""
    path = os.fspath(path)
    extension = EXTENSIONS[format]
    stem, suffix = os.path.splitext(path)
    if not suffix:
        return path + extension
    if suffix != extension:
        raise ValueError(
            f"format={format!r} writes a {extension} file, received path {path!r} "
            f"(give a path ending in {extension}, or none)"
        )
    return path


def _scored(model, outputs, activation):
    """`model`, with a softmax on top when probabilities are asked of a linear head."""
    if outputs == "probabilities" and activation in ("linear", None):
        scores = keras.layers.Softmax(dtype="float32", name="probabilities")(model.outputs[0])
        return keras.Model(model.inputs, scores, name=f"{model.name}_probabilities")
    return model


def write_file(model, path, format: str, outputs: str = "probabilities") -> str:
    """`keras_coatnet.export(..., format=...)` for the one-file formats; returns the file."""
    import tensorflow as tf

    height, width, activation = check_model(model, outputs)
    target = target_path(path, format)
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(target)
    partial = os.path.join(folder, f".{name}.partial-{uuid.uuid4().hex[:8]}")
    os.makedirs(partial)
    signature = [tf.TensorSpec((None, height, width, 3), tf.float32, name="images")]
    try:
        layout = pointwise_convolutions(model) if format == "onnx" else contextlib.nullcontext()
        with frozen_biases(model), layout:
            _scored(model, outputs, activation).export(
                os.path.join(partial, name), format=format, verbose=False, input_signature=signature
            )
        if format == "onnx":
            # GELU in the form ONNX Runtime fuses (see onnx_fusions).
            from keras_coatnet.serving.onnx_fusions import optimize

            optimize(os.path.join(partial, name))
        # OpenVINO writes the weights (.bin) beside the graph (.xml): the
        # graph goes last, so a complete .xml always has its weights.
        written = sorted(os.listdir(partial), key=lambda f: f == name)
        for file in written:
            os.replace(os.path.join(partial, file), os.path.join(folder, file))
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
