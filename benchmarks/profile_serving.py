"""Where the CPU time goes: our SavedModel in TensorFlow against an ONNX file in ONNX Runtime.

    python benchmarks/profile_serving.py --size 224 --batches 1,8 \
        --savedmodel /tmp/cpuserv/coatnet_0_224-224/ours_savedmodel/1 \
        --onnx /tmp/cpuserv/coatnet_0_224-224/timm.onnx

(`benchmarks/cpu_serving.py --workdir DIR` leaves both files under DIR.)
Each runtime runs in its own process with the same number of threads
(intra-op; TensorFlow's inter-op pool as TF Serving's default, the core
count, unless `--inter-op` is given). The SavedModel is loaded with
`tf.saved_model.load` and its `serving_default` signature is traced with
TensorFlow's profiler; kernel times are read from the trace (`tf_Compute`
lines, the executor's own `Process` events left out). ONNX Runtime's
profiler (`SessionOptions.enable_profiling`) gives its kernel times. Both
are summed per operator type (after each runtime's own graph rewrites, so
the names show which fusions fired) and divided by the profiled calls;
with 2 threads, kernels that run side by side both count, so the sums can
exceed the wall time, which is printed beside them. Prints the CPU's flags
first.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")


def cpu_facts() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return "CPU: unknown"
    lines = text.splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    present = [flag for flag in FLAGS if flag in flags]
    return f"CPU: {model}; flags: {' '.join(present) or 'none of ' + ','.join(FLAGS)}"


def profile_tf(args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    if args.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    fn = tf.saved_model.load(args.savedmodel).signatures["serving_default"]
    result = {"runtime": f"TensorFlow {tf.__version__}", "onednn": _pywrap_util_port.IsMklEnabled()}
    for batch in args.batches:
        x = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, args.size, args.size, 3)))
        x = tf.cast(x, tf.float32)
        for _ in range(3):
            fn(images=x)
        walls = []
        for _ in range(args.calls):
            start = time.perf_counter()
            [v.numpy() for v in fn(images=x).values()]
            walls.append(time.perf_counter() - start)
        logdir = tempfile.mkdtemp(prefix="coatnet_tfprof_")
        tf.profiler.experimental.start(logdir)
        for _ in range(args.calls):
            [v.numpy() for v in fn(images=x).values()]
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        times, counts = collections.Counter(), collections.Counter()
        for plane in space.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    if ":" not in name:
                        continue
                    op = name.rsplit(":", 1)[1]
                    if op in ("Process", "_Retval", "_Arg", "NoOp", "Identity", "Const"):
                        continue
                    times[op] += event.duration_ps / 1e9 / args.calls
                    counts[op] += 1
        result[str(batch)] = {
            "wall_ms": 1000 * float(np.median(walls)),
            "ops": {op: [ms, counts[op] // args.calls] for op, ms in times.items()},
        }
    return result


def profile_ort(args) -> dict:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    result = {"runtime": f"ONNX Runtime {ort.__version__}"}
    for batch in args.batches:
        x = np.random.default_rng(0).normal(size=(batch, 3, args.size, args.size))
        walls = []
        for profiling in (False, True):
            options.enable_profiling = profiling
            options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
            session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x.astype("float32")}
            for _ in range(3 if not profiling else 0):
                session.run(None, feed)
            for _ in range(args.calls):
                start = time.perf_counter()
                session.run(None, feed)
                walls.append(time.perf_counter() - start) if not profiling else None
        with open(session.end_profiling()) as f:
            events = json.load(f)
        times, counts = collections.Counter(), collections.Counter()
        for event in events:
            if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
                continue
            op = event["args"]["op_name"]
            times[op] += event["dur"] / 1000 / args.calls
            counts[op] += 1
        result[str(batch)] = {
            "wall_ms": 1000 * float(np.median(walls)),
            "ops": {op: [ms, counts[op] // args.calls] for op, ms in times.items()},
        }
    return result


def table(tf_result, ort_result, batch, top) -> str:
    rows = []
    for result in (tf_result, ort_result):
        ops = sorted(result[batch]["ops"].items(), key=lambda kv: -kv[1][0])
        total = sum(ms for ms, _ in result[batch]["ops"].values())
        rows.append(([(op, ms, n, 100 * ms / total) for op, (ms, n) in ops[:top]], total))
    lines = [
        f"batch {batch}: {tf_result['runtime']} (oneDNN {'on' if tf_result['onednn'] else 'off'}) "
        f"wall {tf_result[batch]['wall_ms']:.1f} ms; {ort_result['runtime']} wall "
        f"{ort_result[batch]['wall_ms']:.1f} ms",
        "",
        "| ours: TF op (count) | ms/call | share | ONNX Runtime op (count) | ms/call | share |",
        "|---|---:|---:|---|---:|---:|",
    ]
    (tf_rows, tf_total), (ort_rows, ort_total) = rows
    for i in range(max(len(tf_rows), len(ort_rows))):
        cells = []
        for part in (tf_rows, ort_rows):
            if i < len(part):
                op, ms, n, share = part[i]
                cells += [f"{op} ({n})", f"{ms:.2f}", f"{share:.1f}%"]
            else:
                cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"| kernels, total | {tf_total:.1f} | | kernels, total | {ort_total:.1f} | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--savedmodel", required=True, help="a version directory (…/1)")
    p.add_argument("--onnx", required=True)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--inter-op", type=int, default=0, help="TF inter-op threads (0: TF's default)")
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--top", type=int, default=14)
    p.add_argument("--json")
    p.add_argument("--worker", choices=("tf", "ort"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.batches = [int(b) for b in str(args.batches).split(",")]
    if args.worker:
        result = profile_tf(args) if args.worker == "tf" else profile_ort(args)
        print(json.dumps(result))
        return 0
    print(cpu_facts())
    results = {}
    for worker in ("tf", "ort"):
        command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
        out = subprocess.run(command + ["--worker", worker], capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        results[worker] = json.loads(out.stdout.strip().splitlines()[-1])
    for batch in args.batches:
        print(table(results["tf"], results["ort"], str(batch), args.top))
        print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_facts(), **results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
