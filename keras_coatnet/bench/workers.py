"""The benchmark's child processes: timm timed alone, and the SavedModel export.

    python .../keras_coatnet/bench/workers.py KIND CONFIG_JSON

prints one JSON line (the last line of stdout). `run(kind, config)` starts
one from the benchmark and reads it back.

- `timm`: timm timed in a process that imports torch and timm only, the
  reference without TensorFlow's thread pools and allocator around it. The
  file is run by its path, not with `-m`: importing the `keras_coatnet`
  package imports Keras and with it TensorFlow. So this module imports the
  standard library only, and the worker loads `keras_coatnet/_timm.py` by
  itself (torch and timm come through its `import_timm`).
- `export`: exporting traces the model again and keeps several GiB of graphs
  alive in the process (about 7 GiB for CoAtNet-1 at 384): the child writes
  the SavedModel from the same timm weights and exits; the benchmark only
  loads it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _import_timm():
    """`keras_coatnet._timm.import_timm()`, without importing the keras_coatnet package."""
    module = sys.modules.get("keras_coatnet._timm")
    if module is None:
        path = os.path.join(PACKAGE_ROOT, "keras_coatnet", "_timm.py")
        spec = importlib.util.spec_from_file_location("_keras_coatnet_timm", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.import_timm()


def timm_alone(cfg: dict) -> dict:
    """Time timm (inference or one AdamW step) in this process; `{"first_s", "times_s", ...}`."""
    warnings.filterwarnings("ignore")
    torch, timm = _import_timm()
    torch.set_num_threads(cfg["threads"])
    timm.layers.set_fused_attn(True)
    kwargs = {} if cfg["size"] == 224 else {"img_size": cfg["size"]}
    net = timm.create_model(cfg["name"], drop_path_rate=0.0, **kwargs)
    if not getattr(net.stages[2].blocks[0].attn, "fused_attn", False):
        raise RuntimeError(f"{cfg['name']}: timm fused attention is off")
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


def run(kind: str, cfg: dict):
    """`(result, None)` of worker `kind` in a child process, or `(None, its stderr)`."""
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), kind, json.dumps(cfg)],
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
    # Run by path, this folder leads sys.path: modules named like ours
    # (timing, training, ...) must not shadow those of torch or TensorFlow.
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]
    # The export imports keras_coatnet: the one this file belongs to (an
    # editable install's folder is not on the path by itself).
    if PACKAGE_ROOT not in map(os.path.abspath, sys.path):
        sys.path.insert(0, PACKAGE_ROOT)
    if len(argv) != 2 or argv[0] not in WORKERS:
        print(f"usage: workers.py {{{','.join(WORKERS)}}} CONFIG_JSON", file=sys.stderr)
        return 2
    result = WORKERS[argv[0]](json.loads(argv[1]))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
