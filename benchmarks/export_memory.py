"""Export size and peak memory of a SavedModel export, and a serving check, each in its own process.

    python benchmarks/export_memory.py coatnet-4 --image-size 512 [--format tf_saved_model]

Process 1 builds the model (random weights), records its resident memory,
exports it and reports the export's size, the time and the process's peak
resident memory. Process 2 loads the export in its runtime
(`keras_coatnet.serving.load`), answers one image and reports its peak.
Prints one JSON line; the numbers in docs/BENCHMARKS.md come from it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _size(path: str) -> int:
    if os.path.isfile(path):
        files = [path] + ([path[:-4] + ".bin"] if path.endswith(".xml") else [])
        return sum(os.path.getsize(f) for f in files)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def export_child(name: str, size: int, fmt: str, out: str) -> dict:
    import keras_coatnet as kc
    from keras_coatnet._keras_compat import walk_layers
    from keras_coatnet.layers import RelativeAttention

    start = time.perf_counter()
    model = kc.create_model(name, weights=None, input_shape=(size, size, 3))
    built_s = time.perf_counter() - start
    attention = [layer for layer in walk_layers(model) if isinstance(layer, RelativeAttention)]
    bias = sum(4 * a.num_heads * (a.height * a.width) ** 2 for a in attention)
    weights = 4 * model.count_params()
    rss_built = _rss_mib()
    start = time.perf_counter()
    path = kc.export(model, out, format=fmt)
    return {
        "model": name,
        "image_size": size,
        "format": fmt,
        "weights_bytes": weights,
        "bias_bytes": bias,
        "export_bytes": _size(path),
        "export_over_weights_plus_bias": _size(path) / (weights + bias),
        "build_s": round(built_s, 1),
        "export_s": round(time.perf_counter() - start, 1),
        "rss_after_build_mib": round(rss_built),
        "export_peak_rss_mib": round(_peak_mib()),
        "path": path,
    }


def serve_child(path: str, size: int) -> dict:
    import numpy as np

    from keras_coatnet.serving import load

    start = time.perf_counter()
    predict = load(path)
    loaded_s = time.perf_counter() - start
    x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    start = time.perf_counter()
    scores = predict(x)
    return {
        "serve_load_s": round(loaded_s, 1),
        "serve_first_call_s": round(time.perf_counter() - start, 1),
        "serve_scores_sum": float(scores.sum()),
        "serve_peak_rss_mib": round(_peak_mib()),
    }


def _child(*args) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"child {args} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="coatnet-4")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--format", default="tf_saved_model")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "export":
            result = export_child(rest[0], int(rest[1]), rest[2], rest[3])
        else:
            result = serve_child(rest[0], int(rest[1]))
        print(json.dumps(result))
        return
    folder = tempfile.mkdtemp(prefix="export-memory-")
    try:
        target = os.path.join(folder, "model")
        result = _child("export", args.model, str(args.image_size), args.format, target)
        result.update(_child("serve", result["path"], str(args.image_size)))
        result["command"] = " ".join(sys.argv)
        print(json.dumps(result))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
