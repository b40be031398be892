"""Load an export in its own runtime and call it like the model: `serving.load(path)`.

    predict = keras_coatnet.serving.load("c0.onnx")      # ONNX Runtime
    scores = predict(images)                              # float32 [batch, classes]

The format follows the path: a SavedModel version directory (TensorFlow,
its `serving_default` signature), `.onnx` (ONNX Runtime), `.tflite` (the
LiteRT interpreter from `ai-edge-litert`), `.xml` (OpenVINO). Each call
checks the images first (float32, `[batch, H, W, 3]` at the exported size,
at least one image) and raises one clear `ValueError` otherwise, so a bad
request never reaches the runtime and the next good call is answered as
usual. The runtimes are optional: `pip install keras-coatnet[export]`.
"""

from __future__ import annotations

import os

import numpy as np

from keras_coatnet.config import SIZE_STEP
from keras_coatnet.serving.formats import EXTENSIONS, OUTPUTS, PRECISIONS, SIGNATURE_IMAGES

RUNTIMES = (None, "openvino")
_PACKAGES = {"onnx": "onnxruntime", "litert": "ai-edge-litert", "openvino": "openvino"}


def _format_of(path: str) -> str:
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"{path!r} is a directory without saved_model.pb (not a version)")
        return "tf_saved_model"
    formats = {extension: format for format, extension in EXTENSIONS.items()}
    extension = os.path.splitext(path)[1]
    if extension not in formats or not os.path.isfile(path):
        raise ValueError(
            f"path must be a SavedModel version directory or an existing .onnx, .tflite or "
            f".xml file, received: {path!r}"
        )
    return formats[extension]


def _import(format: str):
    try:
        if format == "onnx":
            import onnxruntime

            return onnxruntime
        if format == "litert":
            from ai_edge_litert import interpreter

            return interpreter
        import openvino

        return openvino
    except ImportError:
        package = _PACKAGES[format]
        raise ImportError(
            f"running a {format} export needs {package}: pip install {package} "
            "(or keras-coatnet[export])"
        ) from None


class ExportedModel:
    """An export loaded in its runtime; `model(images)` returns float32 `[batch, classes]`.

    Attributes:
        format: `"tf_saved_model"`, `"onnx"`, `"litert"` or `"openvino"`.
        runtime: The runtime it runs in (the format's, or `"openvino"`).
        image_size: `(H, W)` the export takes.
    """

    def __init__(
        self, path, threads: int | None = None, precision: str = "f32", runtime: str | None = None
    ):
        path = os.fspath(path)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, received: {precision!r}")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be None or 'openvino', received: {runtime!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, received: {threads!r}")
        self.format = _format_of(path)
        if runtime == "openvino" and self.format not in ("onnx", "openvino"):
            raise ValueError(f"runtime='openvino' reads .onnx and .xml files, received: {path!r}")
        self.runtime = "openvino" if runtime == "openvino" else self.format
        if precision != "f32" and self.runtime != "openvino":
            raise ValueError(
                f"precision={precision!r} needs OpenVINO: an .xml file, or an .onnx file "
                "with runtime='openvino'"
            )
        self._compiled_model = None  # OpenVINO's, to read back what it compiled for
        self._run, shape = getattr(self, f"_load_{self.runtime}")(path, threads, precision)
        # (None, None) for an export of a size-free model.
        self.image_size = tuple(_side(side) for side in shape[1:3])

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images)
        height, width = self.image_size
        if height is None:  # size-free: the model's size rule, checked here for every runtime
            expected = (
                f"float32 [batch, H, W, 3] pixels in 0..255, H and W multiples of {SIZE_STEP} "
                f"(at least {SIZE_STEP})"
            )
            fits = images.ndim == 4 and images.shape[3] == 3
            fits = fits and all(s % SIZE_STEP == 0 and s >= SIZE_STEP for s in images.shape[1:3])
        else:
            expected = f"float32 [batch, {height}, {width}, 3] pixels in 0..255"
            fits = images.ndim == 4 and images.shape[1:] == (height, width, 3)
        if images.dtype != np.float32:
            raise ValueError(f"images must be {expected}, received dtype {images.dtype}")
        if not fits:
            raise ValueError(f"images must be {expected}, received shape {images.shape}")
        if images.shape[0] == 0:
            raise ValueError(f"images must be {expected} with at least one image, received none")
        return np.asarray(self._run(np.ascontiguousarray(images)), dtype=np.float32)

    def _load_tf_saved_model(self, path, threads, precision):
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        signature = tf.saved_model.load(path).signatures[SIGNATURE_IMAGES]
        shape = signature.structured_input_signature[1]["images"].shape
        name = next(key for key in signature.structured_outputs if key in OUTPUTS)
        return lambda images: signature(images=tf.constant(images))[name].numpy(), shape

    def _load_onnx(self, path, threads, precision):
        ort = _import("onnx")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda images: session.run(None, {name: images})[0], session.get_inputs()[0].shape

    def _load_litert(self, path, threads, precision):
        interpreter = _import("litert").Interpreter(model_path=path, num_threads=threads)
        runner = interpreter.get_signature_runner()
        name = interpreter.get_signature_list()[SIGNATURE_IMAGES]["inputs"][0]
        # The shape with -1 where it is dynamic (`shape` holds 1 there).
        shape = interpreter.get_input_details()[0]["shape_signature"]
        return lambda images: next(iter(runner(**{name: images}).values())), shape

    def _load_openvino(self, path, threads, precision):
        ov = _import("openvino")
        config = {"INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(path, "CPU", config)
        self._compiled_model = compiled
        request = compiled.create_infer_request()
        shape = compiled.input(0).get_partial_shape()
        sides = [d.get_length() if d.is_static else None for d in shape[1:]]
        return lambda images: request.infer(images)[0], [None, *sides]


def _side(side) -> int | None:
    """An input side as a runtime reports it; `None` where it is dynamic (None, -1, a name)."""
    try:
        side = int(side)
    except (TypeError, ValueError):
        return None
    return side if side > 0 else None


def load(
    path, threads: int | None = None, precision: str = "f32", runtime: str | None = None
) -> ExportedModel:
    """Load an export written by `keras_coatnet.export` in its own runtime.

    Args:
        path: A SavedModel version directory, or a `.onnx`, `.tflite` or
            `.xml` file.
        threads: Intra-op threads of the runtime (`None`: its default).
        precision: OpenVINO's inference precision: `"f32"` (default; pinned,
            since OpenVINO otherwise runs bfloat16 on CPUs that have it) or
            `"bf16"`.
        runtime: `None` (the format's own) or `"openvino"`, to run an
            `.onnx` file in OpenVINO: our fastest CPU path in bfloat16
            (docs/BENCHMARKS.md, "CPU serving").

    Returns:
        An `ExportedModel`: call it on float32 `[batch, H, W, 3]` pixels.
    """
    return ExportedModel(path, threads=threads, precision=precision, runtime=runtime)
