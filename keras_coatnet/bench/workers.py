"""The benchmark's child processes: timm timed alone, and the SavedModel export.

    python -c "import keras_coatnet_cli as c; c.run_module('keras_coatnet.bench.workers')" \
        KIND CONFIG_JSON

prints one JSON line (the last line of stdout). `run(kind, config)` starts
one from the benchmark and reads it back.

- `timm`: timm timed in a process that imports torch and timm only, the
  reference without TensorFlow's thread pools and allocator around it. Run
  through the launcher `keras_coatnet_cli.run_module` (as above), the
  package binds its names lazily (as for the `coatnet` command), so
  importing this module and `keras_coatnet._timm` imports no framework;
  `python -m keras_coatnet.bench.workers` would import Keras and its backend first.
- `export`: exporting traces the model again and keeps several GiB of graphs
  alive in the process (about 7 GiB for CoAtNet-1 at 384): the child writes
  the SavedModel from the same timm weights and exits; the benchmark only
  loads it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings


def timm_model(name: str, size: int):
    """The timm model in eval mode, drop path 0, with its fused attention checked on."""
    from keras_coatnet._timm import import_timm

    _, timm = import_timm()
    kwargs = {} if size == 224 else {"img_size": size}
    model = timm.create_model(name, drop_path_rate=0.0, **kwargs).eval()
    attn = model.stages[2].blocks[0].attn
    if not getattr(attn, "fused_attn", False):
        raise RuntimeError(f"{name}: timm fused attention is off ({type(attn).__name__})")
    return model


def timm_alone(cfg: dict) -> dict:
    """Time timm (inference or one AdamW step) in this process; `{"first_s", "times_s", ...}`."""
    from keras_coatnet._timm import import_timm

    warnings.filterwarnings("ignore")
    torch, timm = import_timm()
    torch.set_num_threads(cfg["threads"])
    timm.layers.set_fused_attn(True)
    net = timm_model(cfg["name"], cfg["size"])
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
    return {
        "first_s": first,
        "times_s": times,
        "pid": os.getpid(),
        "threads": torch.get_num_threads(),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def export_savedmodel(cfg: dict) -> dict:
    """Export timm weights (`cfg["state"]`) as a SavedModel with preprocessing, logits out."""
    from keras_coatnet._timm import import_timm

    torch, timm = import_timm()
    from keras_coatnet.convert import from_timm
    from keras_coatnet.serving import export

    kwargs = {} if cfg["size"] == 224 else {"img_size": cfg["size"]}
    net = timm.create_model(cfg["name"], drop_path_rate=0.0, **kwargs).eval()
    net.load_state_dict(torch.load(cfg["state"]))
    size = cfg["size"]
    model = from_timm(net, input_shape=(size, size, 3), classifier_activation=None)
    return {"path": str(export(model, cfg["path"], outputs="logits")), "pid": os.getpid()}


WORKERS = {"timm": timm_alone, "export": export_savedmodel}
MODULE = "keras_coatnet.bench.workers"
# `python -m MODULE` with the package started lazily (see keras_coatnet_cli).
LAUNCH = f"import keras_coatnet_cli as c; c.run_module({MODULE!r})"


def run(kind: str, cfg: dict):
    """`(result, None)` of worker `kind` in a child process, or `(None, its stderr)`."""
    result = subprocess.run(
        [sys.executable, "-c", LAUNCH, kind, json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return None, result.stderr
    try:
        return json.loads(result.stdout.strip().splitlines()[-1]), None
    except (ValueError, IndexError):
        return None, f"no result on the worker's stdout:\n{result.stdout[-2000:]}"


def main(argv) -> int:
    if len(argv) != 2 or argv[0] not in WORKERS:
        usage = f'usage: python -c "{LAUNCH}" {{{",".join(WORKERS)}}} CONFIG_JSON'
        print(usage, file=sys.stderr)
        return 2
    result = WORKERS[argv[0]](json.loads(argv[1]))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
