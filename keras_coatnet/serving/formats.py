"""The serving API's names: export formats, their files, signatures, outputs, precisions.

Plain data, free of any framework: the command line offers these without
importing Keras, and every serving module reads them from here.
"""

OUTPUTS = ("probabilities", "logits")
SIGNATURE_IMAGES = "serving_default"
SIGNATURE_BYTES = "serving_bytes"
# Each signature's one input.
INPUT_IMAGES = "images"
INPUT_BYTES = "image_bytes"
# The first is the default: the two-signature TF Serving SavedModel.
FORMATS = ("tf_saved_model", "onnx", "litert", "openvino")
# The file each one-file format writes (OpenVINO also writes a .bin beside it).
EXTENSIONS = {"onnx": ".onnx", "litert": ".tflite", "openvino": ".xml"}
# Weight and compute precisions, the first the default: of a SavedModel export
# (`export(precision=...)`) and of OpenVINO inference (`load(precision=...)`).
PRECISIONS = ("f32", "bf16")
