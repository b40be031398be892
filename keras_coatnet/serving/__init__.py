"""Serving: the TF Serving SavedModel export (`keras_coatnet.export` is its function).

The signature and output names are the serving API; they live here, free of
any framework, so the command line offers them without importing Keras.
`export` (in `savedmodel.py`) is imported on first use.
"""

OUTPUTS = ("probabilities", "logits")
SIGNATURE_IMAGES = "serving_default"
SIGNATURE_BYTES = "serving_bytes"

__all__ = ["OUTPUTS", "SIGNATURE_BYTES", "SIGNATURE_IMAGES", "export"]


def __getattr__(name):
    if name == "export":
        from keras_coatnet.serving.savedmodel import export

        return export
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
