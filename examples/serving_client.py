"""Requests for a CoAtNet served by TF Serving: gRPC PredictRequest and REST JSON.

    coatnet export coatnet-0 --output /tmp/serving/coatnet
    python examples/serving_client.py IMAGE.jpg --model-name coatnet --size 224

Prints the REST body for `POST /v1/models/coatnet:predict` (the bytes
signature, images as `{"b64": ...}`) and the gRPC `PredictRequest` for both
signatures. With `--grpc HOST:PORT` or `--rest URL` it also sends them to a
running TF Serving (`tensorflow_model_server --model_base_path=DIR
--model_name=coatnet --port=8500 --rest_api_port=8501`). Needs the
`serving` extra (tensorflow-serving-api).
"""

from __future__ import annotations

import argparse
import base64
import json


def rest_body(image_paths, signature="serving_bytes"):
    """The REST predict body: one `{"b64": ...}` instance per image."""
    instances = []
    for path in image_paths:
        with open(path, "rb") as f:
            instances.append({"b64": base64.b64encode(f.read()).decode("ascii")})
    return {"signature_name": signature, "instances": instances}


def bytes_request(image_paths, model_name):
    """A gRPC PredictRequest for the `serving_bytes` signature."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_bytes"
    data = []
    for path in image_paths:
        with open(path, "rb") as f:
            data.append(f.read())
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(data, dtype=tf.string))
    return request


def images_request(pixels, model_name):
    """A gRPC PredictRequest for `serving_default`: float32 [batch, H, W, 3] in 0..255."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_default"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(pixels, dtype=tf.float32))
    return request


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--model-name", default="coatnet")
    parser.add_argument("--size", type=int, default=224, help="the model's input side")
    parser.add_argument("--grpc", help="HOST:PORT of TF Serving's gRPC API")
    parser.add_argument("--rest", help="e.g. http://localhost:8501")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    body = rest_body(args.images)
    print(f"REST POST /v1/models/{args.model_name}:predict")
    print(json.dumps(body)[:300] + ("..." if len(json.dumps(body)) > 300 else ""))
    request = bytes_request(args.images, args.model_name)
    print(f"gRPC PredictRequest ({request.ByteSize()} bytes): serving_bytes, image_bytes")

    # serving_default wants pixels at the model's size: decode and resize here.
    pixels = []
    for path in args.images:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        pixels.append(tf.image.resize(tf.cast(image, tf.float32), (args.size, args.size)))
    pixels = np.stack([p.numpy() for p in pixels])
    dense = images_request(pixels, args.model_name)
    print(f"gRPC PredictRequest ({dense.ByteSize()} bytes): serving_default, images {pixels.shape}")

    if args.grpc:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(args.grpc))
        reply = stub.Predict(request, timeout=30.0)
        print("top-k:", tf.make_ndarray(reply.outputs["top_k_indices"]).tolist())
    if args.rest:
        import urllib.request

        req = urllib.request.Request(
            f"{args.rest}/v1/models/{args.model_name}:predict",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as reply:
            print(json.loads(reply.read())["predictions"][0]["top_k_indices"])


if __name__ == "__main__":
    main()
