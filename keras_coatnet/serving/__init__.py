"""Serving: exports for TF Serving, ONNX, LiteRT and OpenVINO (`keras_coatnet.export`).

The formats, signature and output names are the serving API; they live in
`formats.py`, free of any framework, so the command line offers them without
importing Keras, and are re-exported here. `export` (in `exporter.py`) and
`load` (in `runtimes.py`, which runs an export in its own runtime) are
imported on first use.
"""

from keras_coatnet.serving.formats import (
    EXTENSIONS,
    FORMATS,
    OUTPUTS,
    PRECISIONS,
    SIGNATURE_BYTES,
    SIGNATURE_IMAGES,
)

__all__ = [
    "EXTENSIONS",
    "FORMATS",
    "OUTPUTS",
    "PRECISIONS",
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
