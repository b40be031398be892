"""`keras_coatnet.export`: one entry point for every serving format."""

from __future__ import annotations

from keras_coatnet.serving.formats import FORMATS


def export(
    model,
    path,
    format: str = "tf_saved_model",
    version: int | None = None,
    outputs: str = "probabilities",
    top_k: int | None = None,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    interpolation: str | None = None,
    precision: str | None = None,
    image_size: int | None = None,
) -> str:
    """Export `model` for serving; returns the path of what was written.

    `format="tf_saved_model"` (the default) writes TF Serving version
    directory `path/<version>/` with two signatures: `serving_default`
    (float32 `images`) and `serving_bytes` (encoded images, decoded and
    cropped in the graph); see `keras_coatnet.serving.savedmodel`.

    `"onnx"`, `"litert"` and `"openvino"` write one model file through
    Keras's own `model.export(format=...)`: `path` with `.onnx`, `.tflite`
    or `.xml` (added when `path` has no extension; OpenVINO writes its
    weights to a `.bin` beside it). It takes the same `images` tensor as
    `serving_default` (float32 `[batch, H, W, 3]`, pixels in 0..255,
    dynamic batch) and returns one float32 `[batch, classes]` output,
    the scores named by `outputs`.

    Every format stores each attention bias once, precomputed: no gather
    and no cache refresh in the exported graph. A size-free model
    (`input_shape=(None, None, 3)`) exports to every format but LiteRT:
    its `images` take `[batch, None, None, 3]`, any multiple of 32; at the
    grids the tables are stored for the bias is read as stored, at others
    it is resized and gathered per call, by design. A failure leaves no
    partial version or file behind.

    `precision="bf16"` writes the SavedModel in bfloat16: its `Dense` and
    convolution weights stored as bfloat16 (CoAtNet-0 at 224: 0.55x the
    float32 variables' bytes, its relative biases staying float32) and its
    matmuls and convolutions computed in bfloat16, while the norms, the
    attention logits, biases and softmax, the output softmax and the
    accumulation stay float32 (`keras_coatnet.serving.precision`). Both
    signatures still take and return float32. On the trained digits model
    its top-1 equals float32's on all 360 test scans. Not yet timed here:
    this CPU lacks AVX512_BF16/AMX; TensorFlow runs bf16 matmuls on such
    CPUs by conversion, slower than f32 (a spot check, CoAtNet-0 at 224,
    batch 1: 1.4-1.5x the float32 call's time).

    Args:
        model: A CoAtNet `keras.Model` with its head and built-in
            preprocessing (`include_top=True, include_preprocessing=True`),
            on the TensorFlow backend.
        path: The model's base directory (TF Serving's `--model_base_path`)
            for `"tf_saved_model"`; the model file for the others.
        format: One of `"tf_saved_model"`, `"onnx"`, `"litert"`,
            `"openvino"`.
        version: SavedModel only. Version number; defaults to one more than
            the highest existing version (1 for a new directory). An
            existing version is never overwritten.
        outputs: `"probabilities"` (softmax; the head may be softmax or
            linear) or `"logits"` (the model must be built with
            `classifier_activation=None`).
        top_k: SavedModel only. How many top classes to return. Defaults
            to `5`.
        crop_pct: SavedModel only. Centre-crop fraction of the bytes
            signature (timm's `crop_pct`). Defaults to the model's
            evaluation settings (those of its pretrained weights,
            `keras_coatnet.preprocessing.eval_settings`), else `0.95`.
        crop_mode: SavedModel only. `"center"` (resize the shorter side)
            or `"squash"` (resize both sides) before the crop. Defaults as
            `crop_pct`, else `"center"`.
        interpolation: SavedModel only. `"bicubic"` or `"bilinear"`
            resizing. Defaults as `crop_pct`, else `"bicubic"`.
        precision: SavedModel only. `"f32"` or `"bf16"` (see above).
            Defaults to `"f32"`.
        image_size: SavedModel of a size-free model only: the side
            `serving_bytes` prepares images at. Defaults to the size its
            tables are stored for (its checkpoint's evaluation size).

    Returns:
        The version directory (SavedModel) or the model file written.

    Raises:
        ValueError: For a model that cannot be served this way, bad
            arguments, or an existing version directory.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, received: {format!r}")
    if format == "litert" and model.input.shape[1] is None:
        # The per-call bias converts to TensorFlow select ops, which the LiteRT
        # interpreter lacks (docs/ARCHITECTURE.md, "Size-free models").
        raise ValueError(
            f"model {model.name!r} is size-free (input shape {tuple(model.input.shape)}); "
            "format='litert' takes a fixed size: build it with input_shape=(size, size, 3) "
            "and the same weights (tf_saved_model, onnx and openvino take size-free models)"
        )
    if format == "tf_saved_model":
        from keras_coatnet.serving.savedmodel import write_saved_model

        return write_saved_model(
            model,
            path,
            version=version,
            outputs=outputs,
            top_k=5 if top_k is None else top_k,
            crop_pct=crop_pct,
            crop_mode=crop_mode,
            interpolation=interpolation,
            precision="f32" if precision is None else precision,
            image_size=image_size,
        )
    saved_model_only = dict(
        version=version,
        top_k=top_k,
        crop_pct=crop_pct,
        crop_mode=crop_mode,
        interpolation=interpolation,
        precision=precision,
        image_size=image_size,
    )
    given = [name for name, value in saved_model_only.items() if value is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} only apply to format='tf_saved_model', received format={format!r}"
        )
    from keras_coatnet.serving.files import write_file

    return write_file(model, path, format, outputs=outputs)
