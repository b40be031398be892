"""CPU throughput of keras_coatnet next to timm, same architecture and weights.

    .venv/bin/python benchmarks/bench.py            # the full run (10-20 min on 2 cores)
    .venv/bin/python benchmarks/bench.py --quick    # smoke run, about a minute or two

Everything is measured in one process so that the ratios compare like with
like on a noisy machine. For every model, input size and batch:

- timm: `model.eval()`, `torch.inference_mode()`, fused attention on;
- keras `predict`: `model.predict(x, batch_size=B, verbose=0)`;
- keras `graph`: `tf.function(lambda x: model(x, training=False))`;
- keras `xla`: the same with `jit_compile=True`;
- keras `savedmodel`: `keras_coatnet.export(...)` reloaded with
  `tf.saved_model.load`, `signatures["serving_default"](images=x)`.

Both frameworks hold the same weights (`keras_coatnet.convert.from_timm`) and
the first outputs of every variant are compared with timm's (max abs diff is
printed). The keras models for predict/graph/xla are built without the
preprocessing layer and get exactly timm's normalized input. The SavedModel
needs the built-in preprocessing (pixels in 0..255): it is exported (in a
child process, from the same timm weights) from a keras model with
preprocessing and `outputs="logits"`, so it also does one per-pixel affine
map and a top-k over the logits on top of the network (both negligible).

The variants are timed in interleaved rounds (one call of each per round,
the order rotated) after warm-up calls, so drift in the machine's load hits
all of them alike. Reported: median and min wall time per call, images/s
from the median, the ratio keras/timm (> 1: keras faster), achieved GFLOP/s
(2 x MACs of `keras_coatnet.profile`) and its share of an sgemm peak measured
in the same run (float32 2048^2 with numpy, tf.matmul and torch.mm, before
every model and at the end; the best of all, since other processes can only
make it lower). timm is also timed in a child process that imports torch and
timm only ("timm (own process)", column "vs timm alone"): timm's speed depends
on the process around it (allocator state and page faults; up to 2x for the
training step), so both ratios are given. The "other load" column is the CPU
(in cores) that other processes used while a block was timed: torch's OpenMP
threads slow down up to 15x when another process takes one of two cores, so
rows with other load above ~0.1 are not comparable. `--wait-idle S` waits
for a quiet machine before each block and `--retries N` times a busy block
again.

The training step (forward, backward, AdamW update; BatchNorm in training
mode, drop path 0) is timed with `model.train_on_batch` after
`model.compile(..., jit_compile=False)` and again with `jit_compile=True`,
each interleaved with timm's `model.train()`, `loss.backward()`,
`optimizer.step()` (timm's row pools both blocks). Its
GFLOP/s count a step as 3 forward passes (the usual estimate).

No assertion depends on timing; the script only reports.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

# torch/timm must not load triton after TensorFlow: import_timm blocks it.
from keras_coatnet._timm import import_timm

torch, timm = import_timm()
# CPU only: torch's autograd probes CUDA once and warns that it is missing.
warnings.filterwarnings("ignore", message="CUDA initialization")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_coatnet  # noqa: E402
from keras_coatnet.convert import from_timm  # noqa: E402

DEFAULT_MODELS = ["coatnet_0_224:224", "coatnet_1_224:224", "coatnet_1_224:384"]
QUICK_MODELS = ["coatnet_0_224:224"]
VARIANTS = ("timm", "predict", "graph", "xla", "savedmodel")
TRAIN_VARIANTS = ("timm", "train_on_batch", "train_on_batch_xla")


# timm timed again in a child process that imports torch and timm only: the
# reference without TensorFlow's thread pools and allocator in the process.
TIMM_WORKER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch, timm
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
timm.layers.set_fused_attn(True)
kwargs = {} if cfg["size"] == 224 else {"img_size": cfg["size"]}
net = timm.create_model(cfg["name"], drop_path_rate=0.0, **kwargs)
assert net.stages[2].blocks[0].attn.fused_attn
x = torch.randn(cfg["batch"], 3, cfg["size"], cfg["size"])
if cfg["train"]:
    net.train()
    y = torch.randint(0, 1000, (cfg["batch"],))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()
else:
    net.eval()
    def step():
        with torch.inference_mode():
            net(x)
start = time.perf_counter()
step()
first = time.perf_counter() - start
for _ in range(cfg["warmup"] - 1):
    step()
times, spent = [], 0.0
for i in range(cfg["repeats"]):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
    spent += times[-1]
    if spent > cfg["budget"] and i + 1 >= 3:
        break
print(json.dumps({"first_s": first, "times_s": times}))
"""


def timm_own_process(name, size, batch, args, train=False):
    """`{"first_s", "times_s"}` of timm in a torch-only child process, or None on failure."""
    cfg = {
        "name": name,
        "size": size,
        "batch": batch,
        "train": train,
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.train_repeats if train else args.repeats,
        "budget": args.budget / 2,
    }
    result = subprocess.run(
        [sys.executable, "-c", TIMM_WORKER, json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        log(f"   timm in its own process failed:\n{result.stderr[-2000:]}")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


# Exporting traces the model again and keeps several GiB of graphs alive in the
# process (about 7 GiB for CoAtNet-1 at 384): a child process writes the
# SavedModel from the same timm weights and exits, this process only loads it.
EXPORT_WORKER = r"""
import json, sys
from keras_coatnet._timm import import_timm
torch, timm = import_timm()
from keras_coatnet.convert import from_timm
from keras_coatnet.export import export
cfg = json.loads(sys.argv[1])
kwargs = {} if cfg["size"] == 224 else {"img_size": cfg["size"]}
net = timm.create_model(cfg["name"], drop_path_rate=0.0, **kwargs).eval()
net.load_state_dict(torch.load(cfg["state"]))
size = cfg["size"]
model = from_timm(net, input_shape=(size, size, 3), classifier_activation=None)
print(export(model, cfg["path"], outputs="logits"))
"""


def export_in_child(net, name, size, tmp):
    """Export `net`'s weights (built-in preprocessing, logits) in a child; the version dir."""
    state = os.path.join(tmp, f"{name}_{size}.pt")
    torch.save(net.state_dict(), state)
    cfg = {"name": name, "size": size, "state": state, "path": os.path.join(tmp, f"{name}_{size}")}
    result = subprocess.run(
        [sys.executable, "-c", EXPORT_WORKER, json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        log(f"   SavedModel: export failed, skipped:\n{result.stderr[-2000:]}")
        return None
    return result.stdout.strip().splitlines()[-1]


def log(*args):
    print(*args, flush=True)


# --------------------------------------------------------------------------- setup


def set_threads(threads: int, inter: int | None):
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    torch.set_num_threads(threads)


def parse_spec(spec: str, default_batches: list[int]):
    """`timm_name[:size[:b1,b2]]` -> (timm_name, size, batches)."""
    parts = spec.split(":")
    name = parts[0]
    size = int(parts[1]) if len(parts) > 1 and parts[1] else None
    batches = [int(b) for b in parts[2].split(",")] if len(parts) > 2 else default_batches
    if size is None:
        size = int(name.rsplit("_", 1)[-1]) if name.rsplit("_", 1)[-1].isdigit() else 224
    return name, size, batches


def timm_model(name: str, size: int):
    kwargs = {} if size == 224 else {"img_size": size}
    model = timm.create_model(name, drop_path_rate=0.0, **kwargs).eval()
    attn = model.stages[2].blocks[0].attn
    if not getattr(attn, "fused_attn", False):
        raise RuntimeError(f"{name}: timm fused attention is off ({type(attn).__name__})")
    return model


def normalized_inputs(timm_net, batch: int, size: int, seed: int = 0):
    """(pixels 0..255 NHWC, normalized NHWC, normalized NCHW torch tensor)."""
    rng = np.random.RandomState(seed)
    pixels = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    cfg = timm_net.pretrained_cfg
    mean = np.asarray(cfg["mean"], "float32")
    std = np.asarray(cfg["std"], "float32")
    normalized = ((pixels / 255.0 - mean) / std).astype("float32")
    nchw = torch.from_numpy(np.ascontiguousarray(normalized.transpose(0, 3, 1, 2)))
    return pixels, normalized, nchw


# --------------------------------------------------------------------------- timing


def timed_rounds(fns: dict, warmup: int, repeats: int, budget: float, min_repeats: int = 3):
    """Warm up every fn, then time them in interleaved rounds.

    Returns `{name: {"first_s", "times_s"}}`; stops after `repeats` rounds, or
    earlier once `budget` seconds of rounds are spent and `min_repeats` done.
    """
    results = {name: {"first_s": None, "times_s": []} for name in fns}
    for name, fn in fns.items():
        for i in range(warmup):
            start = time.perf_counter()
            fn()
            if i == 0:
                results[name]["first_s"] = time.perf_counter() - start
    names = list(fns)
    spent = 0.0
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            fns[name]()
            elapsed = time.perf_counter() - start
            results[name]["times_s"].append(elapsed)
            spent += elapsed
        if spent > budget and r + 1 >= min_repeats:
            break
    return results


def summarize(times, batch, macs, passes=1):
    median = statistics.median(times)
    ips = batch / median
    gflops = 2.0 * macs * passes * ips / 1e9
    return {
        "median_ms": median * 1e3,
        "min_ms": min(times) * 1e3,
        "repeats": len(times),
        "images_per_s": ips,
        "images_per_s_best": batch / min(times),
        "gflops": gflops,
    }


def sgemm_peak(n: int = 2048, repeats: int = 10):
    """GFLOP/s of float32 n x n matmul in numpy, TensorFlow and torch (best time each)."""
    a = np.random.RandomState(0).standard_normal((n, n)).astype("float32")
    b = np.random.RandomState(1).standard_normal((n, n)).astype("float32")
    ta, tb = tf.constant(a), tf.constant(b)
    pa, pb = torch.from_numpy(a), torch.from_numpy(b)
    fns = {
        "numpy": lambda: a @ b,
        "tf.matmul": lambda: tf.matmul(ta, tb).numpy(),
        "torch.mm": lambda: torch.mm(pa, pb),
    }
    out = {}
    for name, fn in fns.items():
        fn()
        best = min(_time(fn) for _ in range(repeats))
        out[name] = 2.0 * n**3 / best / 1e9
    return out


class ForeignLoad:
    """CPU use of other processes (in cores) while a block runs: /proc/stat minus our own."""

    def __enter__(self):
        self.start = (_busy_seconds(), _own_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc):
        busy, own, wall = _busy_seconds(), _own_seconds(), time.perf_counter()
        if None in (busy, self.start[0]):
            self.cores = None
        else:
            other = (busy - self.start[0]) - (own - self.start[1])
            self.cores = max(0.0, other / (wall - self.start[2]))
        return False


def quiet_block(args, run, *run_args):
    """`(run(*run_args), cores used by others meanwhile)`, run again while that is too high.

    Waits for a quiet machine first (`--wait-idle`); a block during which other
    processes used more than `--busy` cores is run again, up to `--retries` times.
    """
    for attempt in range(args.retries + 1):
        wait_idle(args.wait_idle)
        with ForeignLoad() as load:
            result = run(*run_args)
        log(f"   other processes used {_cores(load.cores)} cores meanwhile")
        if load.cores is None or load.cores <= args.busy or attempt == args.retries:
            return result, load.cores
        log(f"   busy machine: timing this block again ({attempt + 1}/{args.retries})")


def wait_idle(max_wait: float, threshold: float = 0.2, window: float = 3.0):
    """Wait (up to `max_wait` s) until other processes use < `threshold` cores for `window` s."""
    if max_wait <= 0:
        return
    start = time.perf_counter()
    while True:
        before = _busy_seconds()
        time.sleep(window)
        after = _busy_seconds()
        if before is None or after is None:
            return
        used = (after - before) / window
        waited = time.perf_counter() - start
        if used < threshold:
            if waited > window + 1:
                log(f"   waited {waited:.0f}s for other processes to finish")
            return
        if waited > max_wait:
            log(f"   machine still busy ({used:.2f} cores used by others) after {waited:.0f}s")
            return


def rss_gib():
    """(current, peak) resident memory of this process in GiB, from /proc/self/status."""
    values = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0]) / 2**20
    except OSError:
        return None, None
    return values.get("VmRSS"), values.get("VmHWM")


def _busy_seconds():
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds():
    t = os.times()  # waited-for children (the torch-only timm worker) count as our own
    return t.user + t.system + t.children_user + t.children_system


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- inference


def inference_fns(net, model, graph_fn, xla_fn, served, variants, batch, normalized, pixels, out):
    """One callable per variant; each stores its first output in `out[variant]`."""
    nchw = torch.from_numpy(np.ascontiguousarray(normalized.transpose(0, 3, 1, 2)))
    x_tf = tf.constant(normalized)
    px_tf = tf.constant(pixels)

    def keep(variant, value):
        if variant not in out:
            out[variant] = np.asarray(value)

    def run_timm():
        with torch.inference_mode():
            keep("timm", net(nchw).numpy())

    fns = {"timm": run_timm}
    if "predict" in variants:
        fns["predict"] = lambda: keep(
            "predict", model.predict(normalized, batch_size=batch, verbose=0)
        )
    if "graph" in variants:
        fns["graph"] = lambda: keep("graph", graph_fn(x_tf).numpy())
    if "xla" in variants:
        fns["xla"] = lambda: keep("xla", xla_fn(x_tf).numpy())
    if served is not None:
        fns["savedmodel"] = lambda: keep("savedmodel", served(images=px_tf)["logits"].numpy())
    return fns


def add_rows(rows, name, size, batch, macs, timings, load, passes, prefix, own, own_load):
    """Append (and log) one row per variant, plus timm timed in its own process."""
    stats = {
        variant: summarize(t["times_s"], batch, macs, passes) for variant, t in timings.items()
    }
    for variant, t in timings.items():
        stats[variant].update(first_call_s=t["first_s"], other_load_cores=load)
    if own is not None:
        stats["timm (own process)"] = summarize(own["times_s"], batch, macs, passes)
        stats["timm (own process)"].update(first_call_s=own["first_s"], other_load_cores=own_load)
    base = stats["timm"]["images_per_s"]
    alone = stats["timm (own process)"]["images_per_s"] if own is not None else None
    for variant, st in stats.items():
        st["ratio_vs_timm"] = st["images_per_s"] / base
        st["ratio_vs_timm_own_process"] = st["images_per_s"] / alone if alone else None
        rows.append(
            {
                "model": name,
                "size": size,
                "batch": batch,
                "variant": prefix + variant,
                "macs": macs,
                **st,
            }
        )
        log(
            f"   {variant:>18}: {st['median_ms']:8.1f} ms/call median "
            f"({st['min_ms']:.1f} min, n={st['repeats']}, first call {st['first_call_s']:.1f}s)"
            f"  {st['images_per_s']:7.2f} img/s  x{st['ratio_vs_timm']:.2f} vs timm"
            + (f", x{st['ratio_vs_timm_own_process']:.2f} vs timm alone" if alone else "")
        )


def bench_inference(name, size, batches, args, rows, checks, tmp):
    log(f"\n== {name} at {size}x{size}, batches {batches}")
    net = timm_model(name, size)
    start = time.perf_counter()
    model = from_timm(
        net,
        input_shape=(size, size, 3),
        classifier_activation=None,
        include_preprocessing=False,
    )
    log(f"   keras model built and converted in {time.perf_counter() - start:.1f}s")
    macs = keras_coatnet.profile(model).macs
    log(f"   {macs / 1e9:.3f} GMACs/image (keras_coatnet.profile)")
    variants = [v for v in args.variants if v in VARIANTS]

    served = None
    if "savedmodel" in variants:
        if importlib.util.find_spec("keras_coatnet.export") is None:
            log("   SavedModel: skipped (keras_coatnet.export not available)")
            variants.remove("savedmodel")
        else:
            start = time.perf_counter()
            path = export_in_child(net, name, size, tmp)
            if path is None:
                variants.remove("savedmodel")
            else:
                served = tf.saved_model.load(path).signatures["serving_default"]
                elapsed = time.perf_counter() - start
                log(f"   exported (child process) and reloaded in {elapsed:.1f}s")

    graph_fn = tf.function(lambda x: model(x, training=False))
    xla_fn = tf.function(lambda x: model(x, training=False), jit_compile=True)

    for batch in batches:
        pixels, normalized, _ = normalized_inputs(net, batch, size)
        outputs = {}
        fns = inference_fns(
            net, model, graph_fn, xla_fn, served, variants, batch, normalized, pixels, outputs
        )

        log(f"-- batch {batch}: warm-up x{args.warmup}, up to {args.repeats} rounds")
        timings, load = quiet_block(args, timed_rounds, fns, args.warmup, args.repeats, args.budget)
        for variant in fns:
            if variant != "timm":
                diff = float(np.max(np.abs(outputs[variant] - outputs["timm"])))
                checks.append(
                    {"model": name, "size": size, "batch": batch, "variant": variant, "diff": diff}
                )
                log(f"   {variant:>10}: max abs diff vs timm {diff:.2e}")
        own, own_load = None, None
        if args.timm_own_process:
            own, own_load = quiet_block(args, timm_own_process, name, size, batch, args)
        add_rows(rows, name, size, batch, macs, timings, load, 1, "", own, own_load)
    keras.backend.clear_session()


# --------------------------------------------------------------------------- training


def bench_training(name, size, batch, args, rows):
    log(f"\n== training step: {name} at {size}x{size}, batch {batch} (AdamW, BN train mode)")
    net = timm_model(name, size).train()
    model = from_timm(
        net,
        input_shape=(size, size, 3),
        classifier_activation=None,
        include_preprocessing=False,
    )
    macs = keras_coatnet.profile(model).macs
    _, normalized, nchw = normalized_inputs(net, batch, size, seed=1)
    labels = np.random.RandomState(2).randint(0, 1000, (batch,)).astype("int64")
    x_tf, y_tf = tf.constant(normalized), tf.constant(labels)
    y_torch = torch.from_numpy(labels)

    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()

    def timm_step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(nchw), y_torch)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def compiled(jit):
        model.compile(
            optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit,
        )

    def keras_step():
        return float(model.train_on_batch(x_tf, y_tf))

    # Keras compiles one train function at a time, so each Keras variant is
    # timed in its own block, interleaved with timm steps; timm's row pools them.
    timings = {"timm": {"first_s": None, "times_s": []}}
    loads = []
    variants = [v for v in TRAIN_VARIANTS[1:] if v in args.train_variants]
    for variant in variants or [None]:
        fns = {"timm": timm_step}
        if variant is not None:
            compiled(variant == "train_on_batch_xla")
            fns[variant] = keras_step
        t, load = quiet_block(args, timed_rounds, fns, args.warmup, args.train_repeats, args.budget)
        loads.append(load)
        if variant is not None:
            timings[variant] = t[variant]
        if timings["timm"]["first_s"] is None:
            timings["timm"]["first_s"] = t["timm"]["first_s"]
        timings["timm"]["times_s"].extend(t["timm"]["times_s"])
    own, own_load = None, None
    if args.timm_own_process:
        own, own_load = quiet_block(args, timm_own_process, name, size, batch, args, True)
    load = max((c for c in loads if c is not None), default=None)
    add_rows(rows, name, size, batch, macs, timings, load, 3, "train: ", own, own_load)
    keras.backend.clear_session()


# --------------------------------------------------------------------------- report


def _ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def _cores(value):
    return "?" if value is None else f"{value:.2f}"


def markdown(rows):
    head = (
        "| model | size | batch | variant | ms/call (median) | ms/call (min) | img/s (median) "
        "| vs timm | vs timm alone | GFLOP/s | % of sgemm | other load |\n"
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['size']} | {r['batch']} | {r['variant']} "
            f"| {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['images_per_s']:.2f} "
            f"| {r['ratio_vs_timm']:.2f}x | {_ratio(r['ratio_vs_timm_own_process'])} "
            f"| {r['gflops']:.1f} | {100 * r['peak_share']:.0f}% "
            f"| {_cores(r['other_load_cores'])} |"
        )
    return "\n".join(lines)


def environment(threads, inter):
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "tf_inter_op_threads": inter or tf.config.threading.get_inter_op_parallelism_threads(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset)"),
        "loadavg_start": os.getloadavg(),
    }


def free_memory():
    """Drop the last block's models (tf.function and Keras hold reference cycles)."""
    keras.backend.clear_session()
    gc.collect()
    try:  # hand freed heap pages back (glibc); TF's function library itself stays
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    rss, peak = rss_gib()
    if rss is not None:
        log(f"   memory: {rss:.1f} GiB resident now, {peak:.1f} GiB peak")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: coatnet_0 b1, few repeats")
    parser.add_argument(
        "--models",
        nargs="+",
        help=f"timm_name[:size[:b1,b2]] (default: {' '.join(DEFAULT_MODELS)})",
    )
    parser.add_argument("--batches", default=None, help="comma list (default 1,8; quick: 1)")
    parser.add_argument("--repeats", type=int, help="timed rounds per batch (default 10)")
    parser.add_argument("--warmup", type=int, help="warm-up calls per variant (default 2)")
    parser.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="stop timing a batch after this many seconds (at least 3 rounds); default 120",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each timed block wait up to S seconds for other processes to go quiet",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        help="time a block again (up to this many times) if other processes were busy",
    )
    parser.add_argument(
        "--busy",
        type=float,
        default=0.1,
        help="CPU cores used by other processes that make a block 'busy' (default 0.1)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads")
    parser.add_argument("--inter-threads", type=int, default=0, help="TF inter-op (0: default)")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS[1:]),
        help="keras inference variants (comma list of predict,graph,xla,savedmodel)",
    )
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument(
        "--no-inference",
        action="store_true",
        help="only the training step (the full run peaks near 18 GiB resident; the two "
        "halves each need less)",
    )
    parser.add_argument(
        "--no-timm-own-process",
        dest="timm_own_process",
        action="store_false",
        help="skip timing timm again in a torch-only child process",
    )
    parser.add_argument(
        "--train-model", default="coatnet_0_224:224", help="timm_name[:size] of the training step"
    )
    parser.add_argument("--train-batch", type=int, help="default 8 (quick: 2)")
    parser.add_argument("--train-repeats", type=int, help="default 8 (quick: 2)")
    parser.add_argument(
        "--train-variants",
        default=",".join(TRAIN_VARIANTS[1:]),
        help="comma list of train_on_batch,train_on_batch_xla",
    )
    parser.add_argument("--json", metavar="OUT", help="write the raw numbers here")
    args = parser.parse_args(argv)

    quick = args.quick
    batches = [int(b) for b in (args.batches or ("1" if quick else "1,8")).split(",")]
    args.repeats = args.repeats or (2 if quick else 10)
    args.warmup = args.warmup or (1 if quick else 2)
    args.train_batch = args.train_batch or (2 if quick else 8)
    args.train_repeats = args.train_repeats or (2 if quick else 8)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.train_variants = [v.strip() for v in args.train_variants.split(",") if v.strip()]
    specs = [
        parse_spec(s, batches) for s in (args.models or (QUICK_MODELS if quick else DEFAULT_MODELS))
    ]

    set_threads(args.threads, args.inter_threads)
    timm.layers.set_fused_attn(True)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    env = environment(args.threads, args.inter_threads)
    log(f"command: {command}")
    log("environment: " + json.dumps(env))

    peaks = []

    def measure_peak(label):
        wait_idle(args.wait_idle)
        with ForeignLoad() as load:
            gflops = sgemm_peak()
        peaks.append({"when": label, "gflops": gflops, "other_load_cores": load.cores})
        log(
            f"sgemm float32 2048^2 GFLOP/s ({label}): "
            + ", ".join(f"{k} {v:.1f}" for k, v in gflops.items())
            + f"; other processes used {_cores(load.cores)} cores"
        )

    measure_peak("start")

    rows, checks = [], []
    tmp = tempfile.mkdtemp(prefix="coatnet_bench_")
    started = time.perf_counter()
    try:
        for name, size, spec_batches in [] if args.no_inference else specs:
            bench_inference(name, size, spec_batches, args, rows, checks, tmp)
            free_memory()
            measure_peak(f"after {name} {size}")
        if not args.no_train:
            name, size, _ = parse_spec(args.train_model, batches)
            bench_training(name, size, args.train_batch, args, rows)
            free_memory()
            measure_peak("after training")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    peak = max(max(p["gflops"].values()) for p in peaks)
    for r in rows:
        r["peak_share"] = r["gflops"] / peak
    total = time.perf_counter() - started
    env["loadavg_end"] = os.getloadavg()

    log(f"\ncommand: {command}")
    log(
        f"machine: {env['cpu']}, {env['cpu_count']} cores, threads {args.threads} "
        f"(TF intra-op and torch), TF inter-op {env['tf_inter_op_threads']}; "
        f"TF {env['tensorflow']}, Keras {env['keras']}, torch {env['torch']}, "
        f"timm {env['timm']}; load average start {env['loadavg_start'][0]:.2f}, "
        f"end {env['loadavg_end'][0]:.2f}; benchmark {total / 60:.1f} min"
    )
    log(
        f"sgemm peak (best of numpy, tf.matmul, torch.mm over {len(peaks)} measurements): "
        f"{peak:.1f} GFLOP/s; "
        "training GFLOP/s count 3 forward passes per step; 'other load': CPU cores used by "
        "other processes while that block ran (/proc/stat)\n"
    )
    log(markdown(rows))
    worst = max((c["diff"] for c in checks), default=0.0)
    log(f"\nlargest max abs diff of any keras variant vs timm: {worst:.2e}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "command": command,
                    "environment": env,
                    "sgemm_gflops": peaks,
                    "sgemm_peak": peak,
                    "results": rows,
                    "parity": checks,
                    "seconds": total,
                },
                f,
                indent=2,
            )
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
