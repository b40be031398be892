"""Wall time and peak memory of a pretrained load, through a local Hub server.

    python benchmarks/pretrained_load.py --work /tmp/loadbench --repeats 3 \
        [--against /path/to/other/checkout]

`prepare` writes timm's `coatnet_0_rw_224` and `coatnet_2_rw_224` (random
initialisation, saved by timm as `model.safetensors`) as the Hub repos of
their default tags (`timm/coatnet_0_rw_224.sw_in1k`,
`timm/coatnet_2_rw_224.sw_in12k_ft_in1k`) under `--work`, and serves them with
`tests/hub_server.py` on 127.0.0.1 in a process of its own. Each load then
runs in a fresh process with `PYTHONPATH` set to one checkout:

    first   empty Hub and conversion caches (download, check, convert, load)
    cached  the caches a previous load of the same case left

for `include_top=True` (the file's 1000 classes), `include_top=False` and a
10-class head. The child reports the seconds `create_model` took (imports
excluded), the process's peak resident memory (`ru_maxrss`, imports
included, `VmHWM`) and the resident memory before the call, and how many functional
models Keras constructed during the call. Checkouts alternate within each
round; the table gives medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
MODELS = ("coatnet_0_rw_224", "coatnet_2_rw_224")
HEADS = {"top": {}, "notop": {"include_top": False}, "classes10": {"classes": 10}}

_CHILD = r"""
import json, sys, time
import keras
import keras_coatnet as kc

def status_mib(key):
    # VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024

built = []
new = keras.Model.__new__
def counting(cls, *args, **kwargs):
    if args or "inputs" in kwargs:  # functional construction: Model(inputs, outputs)
        built.append(kwargs.get("name"))
    return new(cls, *args, **kwargs)
keras.Model.__new__ = counting

kwargs = json.loads(sys.argv[2])
before = status_mib("VmRSS")
start = time.perf_counter()
model = kc.create_model(sys.argv[1], weights="imagenet", **kwargs)
seconds = time.perf_counter() - start
peak = status_mib("VmHWM")
print(json.dumps({"seconds": seconds, "peak_mib": peak, "before_mib": before,
                  "models_built": len(built), "params": model.count_params()}))
"""


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
                    return f"{name}; " + " ".join(f for f in wanted if f in flags)
    except OSError:
        pass
    return platform.processor()


def prepare(work: str) -> None:
    """Hub repos of random-initialised timm checkpoints (needs the timm extra)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from hub_server import write_repo
    from safetensors.torch import save_file

    from keras_coatnet._timm import import_timm
    from keras_coatnet.weights import default_tag

    torch, timm = import_timm()
    for name in MODELS:
        tag = default_tag(name)  # what weights="imagenet" fetches
        folder = os.path.join(work, "hub", "timm", tag)
        if os.path.isfile(os.path.join(folder, "model.safetensors")):
            continue
        model = timm.create_model(name).eval()
        path = os.path.join(work, "tmp.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        with open(path, "rb") as f:
            write_repo(os.path.join(work, "hub"), f"timm/{tag}", {CHECKPOINT: f.read()})
        os.remove(path)


CHECKPOINT = "model.safetensors"


def serve(work: str):
    port_file = os.path.join(work, "endpoint")
    if os.path.exists(port_file):
        os.remove(port_file)
    server = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "hub_server.py"), work + "/hub", port_file]
    )
    for _ in range(200):
        if os.path.exists(port_file) and open(port_file).read():
            return server, open(port_file).read()
        time.sleep(0.05)
    server.kill()
    raise RuntimeError("the local Hub server did not start")


def load(checkout, endpoint, caches, model, head) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": checkout,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_CACHE": os.path.join(caches, "hf"),
        "KERAS_HOME": os.path.join(caches, "keras"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, model, json.dumps(HEADS[head])],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--prepare"]:
        prepare(argv[1])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, help="folder for the Hub repos and caches")
    parser.add_argument("--against", help="another checkout, measured alternately with this one")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    # In a process of its own, so that this one stays small (its children fork from it).
    subprocess.run([sys.executable, __file__, "--prepare", args.work], check=True)
    checkouts = {"this": ROOT}
    if args.against:
        checkouts["against"] = os.path.abspath(args.against)
    print(f"# {cpu_flags()}; {os.cpu_count()} cores; python {platform.python_version()}")
    server, endpoint = serve(args.work)
    rows = {}
    try:
        for _ in range(args.repeats):
            for model in args.models:
                for head in HEADS:
                    for label, checkout in checkouts.items():
                        caches = tempfile.mkdtemp(dir=args.work, prefix="caches-")
                        try:
                            first = load(checkout, endpoint, caches, model, head)
                            cached = load(checkout, endpoint, caches, model, head)
                        finally:
                            shutil.rmtree(caches)
                        for state, out in (("first", first), ("cached", cached)):
                            rows.setdefault((model, head, state, label), []).append(out)
                            print(json.dumps({"case": [model, head, state, label], **out}))
                            sys.stdout.flush()
    finally:
        server.kill()
    print(
        "| model | head | load | checkout | median s | median peak MiB | RSS before MiB "
        "| models built |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|")
    for (model, head, state, label), outs in rows.items():
        med = {k: statistics.median(o[k] for o in outs) for k in outs[0]}
        print(
            f"| {model} | {head} | {state} | {label} | {med['seconds']:.2f} | "
            f"{med['peak_mib']:.0f} | {med['before_mib']:.0f} | {med['models_built']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
