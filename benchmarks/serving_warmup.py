"""First and later calls of an exported SavedModel, with and without warm-up.

    python benchmarks/serving_warmup.py --model coatnet_pico_rw_224 --rounds 3

Exports the model (random weights) once with `keras_coatnet.export`, then
alternates fresh processes that load the version with
`tf.saved_model.load` and time, in order: `serving_default` at batch 1
(twice), at batch 8 (twice), and `serving_bytes` with one 320x240 JPEG
(twice). A "warm" process first replays `assets.extra/tf_serving_warmup_requests`
the way TF Serving does at load time (each record's inputs into its
signature; needs the `serving` extra to parse them); a "cold" one does not.
Prints the median of each time over the rounds. The request pictures differ
from the warm-up picture, and the JPEG has another size than the model's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))

CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import tensorflow as tf

    path, warm = sys.argv[1], sys.argv[2] == "warm"
    times = {}

    def timed(key, call):
        start = time.perf_counter()
        [value.numpy() for value in call().values()]  # the results, on the host
        times[key] = time.perf_counter() - start

    start = time.perf_counter()
    loaded = tf.saved_model.load(path)
    times["load"] = time.perf_counter() - start
    signatures = loaded.signatures
    if warm:
        from tensorflow_serving.apis import prediction_log_pb2

        start = time.perf_counter()
        file = path + "/assets.extra/tf_serving_warmup_requests"
        for record in tf.data.TFRecordDataset(file):
            request = prediction_log_pb2.PredictionLog.FromString(
                record.numpy()).predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            signatures[request.model_spec.signature_name](**inputs)
        times["warm-up replay"] = time.perf_counter() - start
    _, height, width, _ = signatures["serving_default"].structured_input_signature[1][
        "images"].shape
    rng = np.random.default_rng(1)
    one = rng.uniform(0, 255, (1, height, width, 3)).astype("float32")
    eight = rng.uniform(0, 255, (8, height, width, 3)).astype("float32")
    jpeg = tf.io.encode_jpeg(rng.integers(0, 256, (240, 320, 3), dtype="uint8")).numpy()
    serve, serve_bytes = signatures["serving_default"], signatures["serving_bytes"]
    for n in (1, 2):
        timed(f"images b1 call {n}", lambda: serve(images=tf.constant(one)))
    for n in (1, 2):
        timed(f"images b8 call {n}", lambda: serve(images=tf.constant(eight)))
    for n in (1, 2):
        timed(f"bytes b1 call {n}", lambda: serve_bytes(image_bytes=tf.constant([jpeg])))
    print("TIMES" + json.dumps(times))
    """
)


def run(path: str, mode: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, path, mode], capture_output=True, text=True, env=env
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.split("TIMES")[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="coatnet_pico_rw_224")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    import keras_coatnet as kc

    model = kc.create_model(args.model, weights=None)
    with tempfile.TemporaryDirectory() as work:
        path = kc.export(model, os.path.join(work, "model"))
        runs = {"cold": [], "warm": []}
        for _ in range(args.rounds):
            for mode in runs:
                runs[mode].append(run(path, mode))
    print(f"{args.model}, {model.input.shape[1]}x{model.input.shape[2]}, medians of {args.rounds}")
    print("| step | cold (s) | warm (s) |\n|---|---:|---:|")
    keys = list(runs["warm"][0])
    for key in ["load", "warm-up replay", *[k for k in keys if k.startswith(("images", "bytes"))]]:
        cells = [
            f"{statistics.median(r[key] for r in runs[mode]):.3f}" if key in runs[mode][0] else "-"
            for mode in ("cold", "warm")
        ]
        print(f"| {key} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
