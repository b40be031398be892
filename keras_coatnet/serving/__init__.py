"""Serving: exports for TF Serving, ONNX, LiteRT and OpenVINO (`keras_coatnet.export`).

The formats, signature and output names are the serving API; they live
here, free of any framework, so the command line offers them without
importing Keras. `export` (in `exporter.py`) and `load` (in `runtimes.py`, which
runs an export in its own runtime) are imported on first use.
"""

OUTPUTS = ("probabilities", "logits")
SIGNATURE_IMAGES = "serving_default"
SIGNATURE_BYTES = "serving_bytes"
# The first is the default: the two-signature TF Serving SavedModel.
FORMATS = ("tf_saved_model", "onnx", "litert", "openvino")
# The file each one-file format writes (OpenVINO also writes a .bin beside it).
EXTENSIONS = {"onnx": ".onnx", "litert": ".tflite", "openvino": ".xml"}

__all__ = [
    "EXTENSIONS",
    "FORMATS",
    "OUTPUTS",
    "SIGNATURE_BYTES",
    "SIGNATURE_IMAGES",
    "export",
    "load",
]


def __getattr__(name):
    if name == "export":
        from keras_coatnet.serving.exporter import export

        return export
    if name == "load":
        from keras_coatnet.serving.runtimes import load

        return load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
