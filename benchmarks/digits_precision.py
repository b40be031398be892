"""Top-1 of the trained digits model in float32, int8 and bfloat16, on its 360 test scans.

    python benchmarks/digits_precision.py runs/digits/final.weights.h5

Float32 is Keras's own prediction. int8 is `model.quantize("int8")` (Keras
quantizes the Dense layers: attention, FFN, head). bfloat16 is our ONNX
export in OpenVINO with `INFERENCE_PRECISION_HINT=bf16` (what OpenVINO
picks by default on CPUs with AVX512_BF16), and our OpenVINO export the
same way. Prints one JSON line: each variant's top-1 accuracy, its top-1
agreement with float32 and its largest probability difference.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile

import numpy as np


def _test_images(size: int):
    import tensorflow as tf

    from keras_coatnet.training.data import write_digits_tree

    root = write_digits_tree(os.path.join(tempfile.gettempdir(), "coatnet_digits"))
    files = sorted(glob.glob(os.path.join(root, "test", "*", "*.png")))
    labels = np.array([int(os.path.basename(os.path.dirname(f))) for f in files])
    images = np.stack(
        [
            tf.image.resize(tf.io.decode_png(tf.io.read_file(f), channels=3), (size, size)).numpy()
            for f in files
        ]
    ).astype("float32")
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="the digits run's final.weights.h5")
    args = parser.parse_args()

    import keras_coatnet as kc
    from keras_coatnet.serving import load

    def build():
        return kc.create_model("coatnet-digits", classes=10, weights=args.weights)

    model = build()
    size = model.input.shape[1]
    images, labels = _test_images(size)
    results = {}
    reference = model.predict(images, verbose=0, batch_size=64)

    def record(name, probabilities):
        results[name] = {
            "top1": float(np.mean(probabilities.argmax(-1) == labels)),
            "agreement_with_f32": float(np.mean(probabilities.argmax(-1) == reference.argmax(-1))),
            "max_probability_diff": float(np.abs(probabilities - reference).max()),
        }

    record("keras_f32", reference)
    quantized = build()
    quantized.quantize("int8")
    record("keras_int8", quantized.predict(images, verbose=0, batch_size=64))
    folder = tempfile.mkdtemp()
    onnx = kc.export(model, os.path.join(folder, "digits.onnx"), format="onnx")
    xml = kc.export(model, os.path.join(folder, "digits.xml"), format="openvino")
    for name, path, precision in (
        ("onnx_ort_f32", onnx, "f32"),
        ("onnx_openvino_bf16", onnx, "bf16"),
        ("openvino_bf16", xml, "bf16"),
    ):
        if path.endswith(".onnx") and precision == "bf16":
            import openvino as ov

            compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
            out = np.concatenate(
                [compiled(images[i : i + 64])[0] for i in range(0, len(images), 64)]
            )
        else:
            run = load(path, precision=precision)
            out = np.concatenate([run(images[i : i + 64]) for i in range(0, len(images), 64)])
        record(name, out)
    print(json.dumps({"test_images": len(labels), **results}))


if __name__ == "__main__":
    main()
