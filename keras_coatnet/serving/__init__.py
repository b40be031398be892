"""Serving: the TF Serving SavedModel export (`keras_coatnet.export` is its function)."""

from keras_coatnet.serving.savedmodel import OUTPUTS, SIGNATURE_BYTES, SIGNATURE_IMAGES, export

__all__ = ["OUTPUTS", "SIGNATURE_BYTES", "SIGNATURE_IMAGES", "export"]
