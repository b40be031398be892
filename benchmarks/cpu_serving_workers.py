"""The CPU serving benchmark's child processes: one per artifact build and per timed variant.

    python benchmarks/cpu_serving_workers.py KIND CONFIG_JSON

prints one JSON line (the last line of stdout). Each timed variant runs in a
process of its own that imports only its runtime (torch, ONNX Runtime,
OpenVINO, TensorFlow or LiteRT), sets its intra-op threads to `threads`,
warms up, times calls on the case's fixed input and compares its logits with
timm's eager logits (computed once, in `prep_timm`). Run as a script, the
process starts `keras_coatnet` lazily (`keras_coatnet_cli.start_lazily`, as
the `coatnet` command does), so the package's helpers the timm workers use
(`_timm.import_timm`, `bench.workers.timm_model`) import no TensorFlow;
each result says whether TensorFlow was imported.

- `prep_timm` (torch only): timm's model with random weights (seeded), its
  state dict, the input pixels, timm's normalized input and logits, and
  timm's ONNX export (`torch.onnx.export`, dynamic batch).
- `prep_ours` (TensorFlow): the same weights in keras_coatnet
  (`convert.from_timm`, preprocessing built in: the model takes pixels in
  0..255 as users feed it), saved as `.keras`, and its exports: SavedModel
  (`keras_coatnet.export`, logits), ONNX (`keras_coatnet.export`: 1x1
  convolutions as convolutions, the GELU ONNX Runtime fuses; `ours.onnx`),
  and LiteRT and OpenVINO (Keras's `model.export` inside
  `serving.frozen.frozen_biases`). `ours_unfused.onnx` is Keras's exporter
  alone on the same frozen biases, the "before".
- `sgemm`: float32 2048^2 matmul GFLOP/s (numpy and torch, best of both).
- `tf_build`: TensorFlow's version and whether its oneDNN CPU kernels are on
  by default on this CPU (`TF_ENABLE_ONEDNN_OPTS` unset).
- one kind per variant of `VARIANTS`; `ENV` sets or removes environment
  variables of a kind's process (`ours_savedmodel_onednn`:
  `TF_ENABLE_ONEDNN_OPTS=1`, which TF Serving reads too).

`timm_compile` is what timm's `benchmark.py --torchcompile` runs for
inference: `torch._dynamo.reset()`, `torch.compile(model)` (inductor,
default mode), eval mode, calls under `torch.inference_mode()`. Its first
call compiles (a C++ compiler is needed: `CXX`, else g++) and is not timed;
`first_call_s` reports it, `compile_cache` whether the inductor cache (in
the case's directory) was empty before. `ours_savedmodel_bytes` feeds the
SavedModel's `serving_bytes` signature the case's pixels JPEG-encoded once
(quality 95, untimed): each call decodes, resizes and crops in the graph,
as a REST `{"b64": ...}` request does, so its logits differ from timm's by
more than float32 rounding (the JPEG loss and the resize).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

# variant -> (runtime, artifact, input, precision); the input is timm's
# normalized NCHW, our pixels 0..255 NHWC or those pixels as JPEG files. Only
# "f32" rows are held to the float32 tolerance.
JPEG_QUALITY = 95
JPEG = f"f32, jpeg q{JPEG_QUALITY}"
VARIANTS = {
    "timm_eager": ("torch", "timm.pt", "nchw", "f32"),
    "timm_compile": ("torch", "timm.pt", "nchw", "f32"),
    "timm_ort": ("onnxruntime", "timm.onnx", "nchw", "f32"),
    "timm_ov_f32": ("openvino", "timm.onnx", "nchw", "f32"),
    "timm_ov_bf16": ("openvino", "timm.onnx", "nchw", "bf16"),
    "ours_tf_function": ("tensorflow", "ours.keras", "pixels", "f32"),
    "ours_xla": ("tensorflow", "ours.keras", "pixels", "f32"),
    # model.quantize("int8"): Keras quantizes the Dense layers (not the convolutions).
    "ours_int8": ("tensorflow", "ours.keras", "pixels", "int8"),
    "ours_savedmodel": ("tensorflow", "ours_savedmodel", "pixels", "f32"),
    "ours_savedmodel_onednn": ("tensorflow", "ours_savedmodel", "pixels", "f32"),
    "ours_savedmodel_bytes": ("tensorflow", "ours_savedmodel", "jpeg", JPEG),
    "ours_ort": ("onnxruntime", "ours.onnx", "pixels", "f32"),
    "ours_ort_unfused": ("onnxruntime", "ours_unfused.onnx", "pixels", "f32"),
    "ours_ov_f32": ("openvino", "ours_ov.xml", "pixels", "f32"),
    "ours_ov_bf16": ("openvino", "ours_ov.xml", "pixels", "bf16"),
    "ours_onnx_ov_f32": ("openvino", "ours.onnx", "pixels", "f32"),
    "ours_onnx_ov_bf16": ("openvino", "ours.onnx", "pixels", "bf16"),
    "ours_litert": ("litert", "ours.tflite", "pixels", "f32"),
}
# Environment of a kind's process beyond `thread_env` (None: removed).
ONEDNN = "TF_ENABLE_ONEDNN_OPTS"
ENV = {"ours_savedmodel_onednn": {ONEDNN: "1"}, "tf_build": {ONEDNN: None}}
SCRIPT = os.path.abspath(__file__)
SEED = 0


def thread_env(threads: int, kind: str | None = None) -> dict:
    """The environment of a child: every runtime's OpenMP/BLAS pool at `threads`."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("KERAS_BACKEND", "tensorflow")
    for key, value in ENV.get(kind, {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run(kind: str, cfg: dict, timeout: float | None = None):
    """`(result, None)` of worker `kind` in a child process, or `(None, the error)`."""
    try:
        result = subprocess.run(
            [sys.executable, SCRIPT, kind, json.dumps(cfg)],
            capture_output=True,
            text=True,
            check=False,
            env=thread_env(cfg.get("threads", 1), kind),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, f"{kind}: no result within {timeout:.0f}s"
    if result.returncode != 0:
        reason = failure_reason(result.stderr, result.returncode)
        return None, f"{result.stderr[-3000:]}\n{reason}"
    try:
        return json.loads(result.stdout.strip().splitlines()[-1]), None
    except (ValueError, IndexError):
        return None, f"no result on the worker's stdout:\n{result.stdout[-2000:]}"


def failure_reason(stderr: str, returncode: int) -> str:
    """One line saying why a worker failed (the last line of `run`'s error).

    A Python error's last line says it; a process that a signal killed ends
    its stderr with a native stack trace, so the line is the signal and the
    last fatal log line (TensorFlow's `F0000 ... file:line] Check failed: ...`).
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if returncode >= 0:
        return lines[-1] if lines else f"exit status {returncode}, no output"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    fatal = [line.split("] ", 1)[-1] for line in lines if re.match(r"F\d{4} ", line)]
    return f"{name}: {fatal[-1]}" if fatal else f"killed by {name}"


# ----------------------------------------------------------------------------- artifacts


def prep_timm(cfg: dict) -> dict:
    """timm's model, weights, input, logits and ONNX export into `cfg["dir"]`."""
    from keras_coatnet._timm import import_timm

    warnings.filterwarnings("ignore")
    torch, timm = import_timm()
    torch.set_num_threads(cfg["threads"])
    from keras_coatnet.bench.workers import timm_model

    directory, size = cfg["dir"], cfg["size"]
    torch.manual_seed(SEED)
    net = timm_model(cfg["name"], size)
    torch.save(net.state_dict(), os.path.join(directory, "timm.pt"))
    mean = np.asarray(net.pretrained_cfg["mean"], "float32")
    std = np.asarray(net.pretrained_cfg["std"], "float32")
    rng = np.random.RandomState(SEED)
    for batch in cfg["batches"]:
        pixels = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
        nchw = ((pixels / 255.0 - mean) / std).transpose(0, 3, 1, 2)
        nchw = np.ascontiguousarray(nchw, dtype="float32")
        with torch.inference_mode():
            logits = net(torch.from_numpy(nchw)).numpy()
        np.save(os.path.join(directory, f"pixels_{batch}.npy"), pixels)
        np.save(os.path.join(directory, f"nchw_{batch}.npy"), nchw)
        np.save(os.path.join(directory, f"logits_{batch}.npy"), logits)
    if cfg.get("onnx", True):
        example = torch.zeros(1, 3, size, size)
        torch.onnx.export(
            net,
            (example,),
            os.path.join(directory, "timm.onnx"),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return {"pid": os.getpid(), "torch": torch.__version__, "timm": timm.__version__}


def prep_ours(cfg: dict) -> dict:
    """Our model from timm's weights and the exports `cfg["exports"]` asks for."""
    import tensorflow as tf

    _threads_tf(tf, cfg["threads"])
    from keras_coatnet._timm import import_timm

    torch, _ = import_timm()
    import keras

    from keras_coatnet import profile
    from keras_coatnet.bench.workers import timm_model
    from keras_coatnet.convert import from_timm
    from keras_coatnet.serving import export
    from keras_coatnet.serving.frozen import frozen_biases

    directory, size = cfg["dir"], cfg["size"]
    net = timm_model(cfg["name"], size)
    net.load_state_dict(torch.load(os.path.join(directory, "timm.pt")))
    model = from_timm(net, input_shape=(size, size, 3), classifier_activation=None)
    model.save(os.path.join(directory, "ours.keras"))
    signature = [tf.TensorSpec((None, size, size, 3), tf.float32, name="images")]
    formats = {"onnx": "ours.onnx", "litert": "ours.tflite", "openvino": "ours_ov.xml"}
    seconds = {}
    for fmt in cfg["exports"]:
        start = time.perf_counter()
        if fmt == "savedmodel":
            export(model, os.path.join(directory, "ours_savedmodel"), outputs="logits")
        elif fmt == "onnx":
            # ours.onnx: keras_coatnet.export's ONNX (pointwise convolutions, fused
            # GELU); ours_unfused.onnx: Keras's exporter on the same frozen biases.
            path = os.path.join(directory, formats[fmt])
            export(model, path, format="onnx", outputs="logits")
            with frozen_biases(model):
                model.export(
                    os.path.join(directory, "ours_unfused.onnx"),
                    format=fmt,
                    verbose=False,
                    input_signature=signature,
                )
        else:
            with frozen_biases(model):
                model.export(
                    os.path.join(directory, formats[fmt]),
                    format=fmt,
                    verbose=False,
                    input_signature=signature,
                )
        seconds[fmt] = time.perf_counter() - start
    return {
        "pid": os.getpid(),
        "macs": int(profile(model).macs),
        "export_s": seconds,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def sgemm(cfg: dict, repeats: int = 5) -> dict:
    """GFLOP/s of float32 n x n matmul with numpy and torch (best time of each; n = 2048)."""
    n = cfg.get("n", 2048)
    from keras_coatnet._timm import import_timm

    torch, _ = import_timm()
    torch.set_num_threads(cfg["threads"])
    a = np.random.RandomState(0).standard_normal((n, n)).astype("float32")
    b = np.random.RandomState(1).standard_normal((n, n)).astype("float32")
    pa, pb = torch.from_numpy(a), torch.from_numpy(b)
    out = {}
    for name, fn in {"numpy": lambda: a @ b, "torch.mm": lambda: torch.mm(pa, pb)}.items():
        fn()
        best = min(_seconds(fn) for _ in range(repeats))
        out[name] = 2.0 * n**3 / best / 1e9
    return {"gflops": out, "pid": os.getpid()}


def tf_build(cfg: dict) -> dict:
    """TensorFlow's version and whether oneDNN is on (default: `TF_ENABLE_ONEDNN_OPTS` unset)."""
    import tensorflow as tf

    return {"version": tf.__version__, "onednn_default": _onednn(), "pid": os.getpid()}


# ----------------------------------------------------------------------------- variants


def _threads_tf(tf, threads):
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _onednn() -> bool:
    """Whether this process's TensorFlow runs its oneDNN CPU kernels."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def _torch_fn(variant, path, cfg):
    info = {}
    compiled = variant == "timm_compile"
    if compiled:
        # Inductor builds its CPU kernels with `CXX`, else g++
        # (torch._inductor.config.cpp.cxx): checked first, so that a missing
        # compiler fails in one line instead of inductor's pages.
        compiler = os.environ.get("CXX", "g++")
        if shutil.which(compiler) is None:
            raise RuntimeError(f"torch.compile: no C++ compiler {compiler!r} (set CXX)")
        cache = os.path.join(cfg["dir"], "inductor_cache")
        info["compile_cache"] = "warm" if os.path.isdir(cache) and os.listdir(cache) else "cold"
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # before torch's import
    from keras_coatnet._timm import import_timm
    from keras_coatnet.bench.workers import timm_model

    torch, _ = import_timm()
    torch.set_num_threads(cfg["threads"])
    net = timm_model(cfg["name"], cfg["size"])
    net.load_state_dict(torch.load(path))
    if compiled:  # as timm's benchmark.py --torchcompile (inductor, default mode)
        torch._dynamo.reset()
        net = torch.compile(net, backend="inductor")
        net.eval()

    def call(x):
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()

    def compiled_call(x):
        try:
            return call(x)
        except Exception as error:  # inductor's reports run to pages: the table gets one line
            reason = (str(error).strip().splitlines() or [""])[0]
            raise RuntimeError(f"torch.compile: {type(error).__name__}: {reason}") from error

    info["versions"] = {"torch": torch.__version__}
    return (compiled_call if compiled else call), info


def _ort_fn(path, cfg):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = cfg["threads"]
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def call(x):
        return session.run(None, {name: x})[0]

    return call, {"versions": {"onnxruntime": ort.__version__}}


def _openvino_fn(path, cfg, precision, shape):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    model.reshape({model.inputs[0].any_name: ov.PartialShape(list(shape))})
    config = {
        "INFERENCE_NUM_THREADS": cfg["threads"],
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    request = core.compile_model(model, "CPU", config).create_infer_request()

    def call(x):
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data)

    return call, {"versions": {"openvino": ov.__version__}}


def _tf_fn(variant, path, cfg):
    import tensorflow as tf

    _threads_tf(tf, cfg["threads"])
    import keras

    import keras_coatnet.layers  # noqa: F401  (registers the layers for load_model)
    from keras_coatnet.serving.formats import SIGNATURE_BYTES, SIGNATURE_IMAGES

    info = {
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "onednn": _onednn(),
    }
    if VARIANTS[variant][1] == "ours_savedmodel":
        versions_dir = sorted(os.listdir(path), key=int)[-1]
        served = tf.saved_model.load(os.path.join(path, versions_dir))
        if variant == "ours_savedmodel_bytes":
            encoded = served.signatures[SIGNATURE_BYTES]
            return lambda x: encoded(image_bytes=tf.constant(x))["logits"].numpy(), info
        signature = served.signatures[SIGNATURE_IMAGES]
        return lambda x: signature(images=tf.constant(x))["logits"].numpy(), info
    model = keras.saving.load_model(path)
    if variant == "ours_int8":
        model.quantize("int8")
    fn = tf.function(lambda x: model(x, training=False), jit_compile=variant == "ours_xla")
    return lambda x: fn(tf.constant(x)).numpy(), info


def _jpeg(pixels):
    """The pixels 0..255 as one JPEG file per image (quality `JPEG_QUALITY`), a string array."""
    import tensorflow as tf

    images = tf.cast(tf.round(tf.clip_by_value(pixels, 0.0, 255.0)), tf.uint8)
    files = [tf.io.encode_jpeg(image, quality=JPEG_QUALITY).numpy() for image in images]
    return np.array(files, dtype=object)


def _litert_fn(path, cfg, shape):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=cfg["threads"])
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(shape))
    interpreter.allocate_tensors()
    output = interpreter.get_output_details()[0]["index"]

    def call(x):
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        return interpreter.get_tensor(output)

    from importlib.metadata import version

    return call, {"versions": {"ai-edge-litert": version("ai-edge-litert")}}


def variant_fn(variant: str, cfg: dict, shape):
    """`(call(x) -> logits, info)` of `variant` on `cfg["dir"]`'s artifact.

    `info` holds `versions` ({package: version}) and what else the runtime
    reports (TensorFlow: `onednn`; `timm_compile`: `compile_cache`).
    """
    runtime, artifact, _, precision = VARIANTS[variant]
    path = os.path.join(cfg["dir"], artifact)
    if runtime == "torch":
        return _torch_fn(variant, path, cfg)
    if runtime == "onnxruntime":
        return _ort_fn(path, cfg)
    if runtime == "openvino":
        return _openvino_fn(path, cfg, precision, shape)
    if runtime == "litert":
        return _litert_fn(path, cfg, shape)
    return _tf_fn(variant, path, cfg)


def time_variant(variant: str, cfg: dict) -> dict:
    """Load `variant`, warm up, time calls; img/s, the logits' max abs diff and top-1 vs timm."""
    warnings.filterwarnings("ignore")
    _, _, kind, precision = VARIANTS[variant]
    directory, batch = cfg["dir"], cfg["batch"]
    x = np.load(os.path.join(directory, f"{'pixels' if kind == 'jpeg' else kind}_{batch}.npy"))
    reference = np.load(os.path.join(directory, f"logits_{batch}.npy"))
    start = time.perf_counter()
    call, info = variant_fn(variant, cfg, x.shape)
    load_s = time.perf_counter() - start
    if kind == "jpeg":  # untimed; after variant_fn has set TensorFlow's threads
        x = _jpeg(x)
        info["jpeg_bytes_per_image"] = int(np.mean([len(f) for f in x]))
    start = time.perf_counter()
    out = call(x)  # timm_compile: compiles
    first_s = time.perf_counter() - start
    for _ in range(cfg["warmup"] - 1):
        out = call(x)
    times = []
    while len(times) < cfg["max_calls"]:
        times.append(_seconds(lambda: call(x)))
        if len(times) >= cfg["min_calls"] and sum(times) >= cfg["min_seconds"]:
            break
    median = statistics.median(times)
    return {
        "variant": variant,
        "precision": precision,
        "images_per_s": batch / median,
        "median_ms": median * 1e3,
        "calls": len(times),
        "load_and_first_call_s": load_s + first_s,
        "first_call_s": first_s,
        "max_abs_diff": float(np.max(np.abs(out - reference))),
        "top1_agreement": float(np.mean(out.argmax(-1) == reference.argmax(-1))),
        **info,
        "pid": os.getpid(),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def _seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


WORKERS = {"prep_timm": prep_timm, "prep_ours": prep_ours, "sgemm": sgemm, "tf_build": tf_build}


def main(argv) -> int:
    kinds = [*WORKERS, *VARIANTS]
    if len(argv) != 2 or argv[0] not in kinds:
        usage = f"usage: python benchmarks/cpu_serving_workers.py {{{','.join(kinds)}}} CONFIG_JSON"
        print(usage, file=sys.stderr)
        return 2
    kind, cfg = argv[0], json.loads(argv[1])
    result = WORKERS[kind](cfg) if kind in WORKERS else time_variant(kind, cfg)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    import keras_coatnet_cli

    keras_coatnet_cli.start_lazily()  # before the first `import keras_coatnet`
    sys.exit(main(sys.argv[1:]))
