"""CPU inference of timm's CoAtNet and ours, each runtime in its own process.

    .venv/bin/python benchmarks/cpu_serving.py          # the documented run: docs/BENCHMARKS.md
    .venv/bin/python benchmarks/cpu_serving.py --smoke  # pico at 64 px, one round, no doc

Repository tooling, run from a checkout (it writes this checkout's
docs/BENCHMARKS.md; `coatnet bench` is what users run). Needs the timm and
export extras: pip install -e '.[timm,export]'.

For each case (a timm architecture, an input size, batches) the same random
weights (seeded) are run by every variant of `cpu_serving_workers.VARIANTS`:
timm eager (torch), timm under torch.compile (inductor, as timm's
benchmark.py --torchcompile; its compiling first call untimed; with --smoke
only if --variants names it), timm -> ONNX
Runtime, timm -> OpenVINO (f32 pinned and bf16), and ours as tf.function,
XLA, SavedModel (TensorFlow's default kernels, oneDNN forced on, and its
`serving_bytes` signature fed JPEG files), ONNX -> ONNX Runtime, OpenVINO
(f32, bf16) and LiteRT (XNNPACK). Every timed call runs in a fresh
process that imports only its runtime, with `--threads` intra-op threads
(and OMP/BLAS pools) for all; the rounds alternate the variants (the order
rotates each round) and the table gives the median over rounds of each
process's median call. Each worker compares its logits with timm eager's:
float32 variants must agree within `--tolerance` (1e-4), bf16, int8 and the
JPEG input report the top-1 agreement. The matmul limit is the best float32
sgemm GFLOP/s of the run (numpy, torch; 2048^2, 256^2 with --smoke) divided
by 2 x MACs per image. The run records the CPU's model and the /proc/cpuinfo
flags these runtimes' kernels depend on (`cpu_serving_report.CPU_FLAGS`),
TensorFlow's version and whether its oneDNN kernels are on by default here.

This process imports no framework (the package starts lazily, as for the
`coatnet` command); the workers (`cpu_serving_workers.py`) do. The report
and the docs section: `cpu_serving_report.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

import cpu_serving_workers as workers
from cpu_serving_report import (
    CPU_FLAGS,
    cpu_flags,
    cpu_model,
    machine,
    markdown,
    notes,
    section,
    write_doc,
)

import keras_coatnet_cli

# Before the package's first import: its names bind on first use, so this
# process imports neither Keras nor TensorFlow.
keras_coatnet_cli.start_lazily()

from keras_coatnet.bench.options import parse_spec  # noqa: E402
from keras_coatnet.bench.timing import log, wait_idle  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODELS = ("coatnet_0_224:224:1,8", "coatnet_1_224:384:1")
SMOKE_MODEL = "coatnet_pico_rw_224:64:1"
# Left out of --smoke unless --variants names them: a cold inductor compile
# takes minutes even for the smoke model (and timing is not its point).
SLOW_VARIANTS = ("timm_compile",)
REFERENCE = "timm_ort"
EXPORTS = {  # our export each variant needs
    "ours_tf_function": None,
    "ours_xla": None,
    "ours_int8": None,
    "ours_savedmodel": "savedmodel",
    "ours_savedmodel_onednn": "savedmodel",
    "ours_savedmodel_bytes": "savedmodel",
    "ours_ort": "onnx",
    "ours_ort_unfused": "onnx",
    "ours_onnx_ov_f32": "onnx",
    "ours_onnx_ov_bf16": "onnx",
    "ours_ov_f32": "openvino",
    "ours_ov_bf16": "openvino",
    "ours_litert": "litert",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/cpu_serving.py",
        description="CPU inference: timm eager, timm -> ONNX Runtime/OpenVINO and our "
        "exports, each in its own process, alternating rounds.",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help=f"{SMOKE_MODEL}, one round, no doc; {', '.join(SLOW_VARIANTS)} only if "
        "--variants names it",
    )
    p.add_argument(
        "--models", nargs="+", help=f"timm_name[:size[:b1,b2]] (default: {DEFAULT_MODELS})"
    )
    p.add_argument("--variants", help="comma list (default: all): " + ",".join(workers.VARIANTS))
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every runtime")
    p.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --smoke)")
    p.add_argument("--min-seconds", type=float, help="timed seconds per process (default 4)")
    p.add_argument("--min-calls", type=int, help="timed calls per process at least (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per process")
    p.add_argument("--tolerance", type=float, default=1e-4, help="float32 max abs logit diff")
    p.add_argument("--wait-idle", type=float, default=0.0, help="wait up to S s before a round")
    p.add_argument("--workdir", help="keep the artifacts here and reuse them (default: a temp dir)")
    p.add_argument(
        "--doc",
        help="write the section into this markdown file "
        "(default docs/BENCHMARKS.md of the checkout; none with --smoke)",
    )
    p.add_argument("--no-doc", action="store_true", help="write no markdown file")
    p.add_argument("--json", help="write every result to this JSON file")
    return p


def resolve(args) -> dict:
    """The run's settings from the flags; ValueError (one line) names a bad value."""
    variants = [v for v in workers.VARIANTS if not (args.smoke and v in SLOW_VARIANTS)]
    if args.variants is not None:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        for v in variants:
            if v not in workers.VARIANTS:
                raise ValueError(
                    f"--variants: unknown {v!r}; choose from {', '.join(workers.VARIANTS)}"
                )
    if not variants:
        raise ValueError("--variants: name at least one variant")
    for flag, value in (
        ("--threads", args.threads),
        ("--rounds", args.rounds),
        ("--min-calls", args.min_calls),
        ("--warmup", args.warmup),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, received: {value}")
    specs = args.models or ((SMOKE_MODEL,) if args.smoke else DEFAULT_MODELS)
    doc = None
    if not args.no_doc:
        doc = args.doc or (None if args.smoke else default_doc())
    return {
        "cases": [parse_spec(s, (1,), "--models") for s in specs],
        "variants": variants,
        "threads": args.threads,
        "rounds": args.rounds or (1 if args.smoke else 3),
        "warmup": args.warmup if not args.smoke else 1,
        "min_calls": args.min_calls or (2 if args.smoke else 5),
        "min_seconds": args.min_seconds
        if args.min_seconds is not None
        else (0.0 if args.smoke else 4.0),
        "max_calls": 1000,
        "sgemm_n": 256 if args.smoke else 2048,
        "tolerance": args.tolerance,
        "wait_idle": args.wait_idle,
        "workdir": args.workdir,
        "doc": doc,
        "json": args.json,
    }


def default_doc() -> str:
    """This checkout's docs/BENCHMARKS.md (next to the benchmarks/ folder)."""
    return os.path.join(ROOT, "docs", "BENCHMARKS.md")


def prepare(case, settings, directory) -> dict:
    """Build what the chosen variants need in `directory` (reused when present)."""
    variants, threads = settings["variants"], settings["threads"]
    batches = list(case.batches)
    info = {}
    inputs = [os.path.join(directory, f"logits_{b}.npy") for b in batches]
    need_onnx = any(workers.VARIANTS[v][1] == "timm.onnx" for v in variants)
    have = all(map(os.path.exists, inputs)) and (
        not need_onnx or os.path.exists(os.path.join(directory, "timm.onnx"))
    )
    cfg = {"name": case.name, "size": case.size, "batches": batches, "dir": directory}
    if not have:
        start = time.perf_counter()
        result, error = workers.run("prep_timm", {**cfg, "threads": threads, "onnx": need_onnx})
        if result is None:
            raise RuntimeError(f"timm's model and ONNX export failed:\n{error}")
        log(f"   timm weights, inputs, logits and ONNX in {time.perf_counter() - start:.0f}s")
        info.update(result)
    exports = sorted({EXPORTS[v] for v in variants if EXPORTS.get(v)})
    names = {
        "savedmodel": "ours_savedmodel",
        "onnx": "ours_unfused.onnx",
        "litert": "ours.tflite",
        "openvino": "ours_ov.xml",
    }
    missing = [e for e in exports if not os.path.exists(os.path.join(directory, names[e]))]
    macs_file = os.path.join(directory, "ours.json")
    if any(v.startswith("ours") for v in variants) and (missing or not os.path.exists(macs_file)):
        start = time.perf_counter()
        result, error = workers.run("prep_ours", {**cfg, "threads": threads, "exports": missing})
        if result is None:
            raise RuntimeError(f"our model or an export failed:\n{error}")
        log(
            f"   ours converted and exported ({', '.join(missing) or 'no exports'}) in "
            f"{time.perf_counter() - start:.0f}s"
        )
        with open(macs_file, "w") as f:
            json.dump(result, f)
    if os.path.exists(macs_file):
        with open(macs_file) as f:
            info.update(json.load(f))
    return info


def run(settings, command: str) -> dict:
    """Every case, round and variant; returns what `--json` writes."""
    threads = settings["threads"]
    env = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_flags_checked": list(CPU_FLAGS),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }
    build, error = workers.run("tf_build", {"threads": threads})
    if build is None:
        env["tensorflow_build"] = {"error": error.strip().splitlines()[-1] if error else "failed"}
    else:
        env["tensorflow_build"] = {k: build[k] for k in ("version", "onednn_default")}
    log(f"command: {command}\nmachine: {machine(env)}; threads {threads}")
    workdir = settings["workdir"] or tempfile.mkdtemp(prefix="coatnet_serving_")
    peaks, runs, infos = [], [], {}

    def measure_peak():
        result, error = workers.run("sgemm", {"threads": threads, "n": settings["sgemm_n"]})
        if result is not None:
            peaks.append(max(result["gflops"].values()))
            n = settings["sgemm_n"]
            log(f"   sgemm float32 {n}^2: {json.dumps(result['gflops'])} GFLOP/s")

    measure_peak()
    for case in settings["cases"]:
        key = f"{case.name}_{case.size}"
        directory = os.path.join(workdir, key)
        os.makedirs(directory, exist_ok=True)
        log(f"== {case.name} at {case.size}: preparing in {directory}")
        infos[key] = prepare(case, settings, directory)
    for r in range(settings["rounds"]):
        wait_idle(settings["wait_idle"])
        for case in settings["cases"]:
            directory = os.path.join(workdir, f"{case.name}_{case.size}")
            for batch in case.batches:
                names = settings["variants"]
                order = names[r % len(names) :] + names[: r % len(names)]
                for variant in order:
                    cfg = {
                        k: settings[k]
                        for k in ("threads", "warmup", "min_calls", "min_seconds", "max_calls")
                    }
                    cfg.update(name=case.name, size=case.size, batch=batch, dir=directory)
                    result, error = workers.run(variant, cfg)
                    row = {
                        "round": r,
                        "model": case.name,
                        "size": case.size,
                        "batch": batch,
                        "variant": variant,
                        "loadavg": os.getloadavg()[0],
                    }
                    if result is None:
                        row["error"] = error.strip().splitlines()[-1] if error else "failed"
                        log(
                            f"   round {r + 1} {case.name} {case.size} b{batch} {variant}: "
                            f"FAILED {row['error']}"
                        )
                    else:
                        row.update(result)
                        log(
                            f"   round {r + 1} {case.name} {case.size} b{batch} {variant:>16}: "
                            f"{result['images_per_s']:7.2f} img/s, max diff "
                            f"{result['max_abs_diff']:.1e}, load {row['loadavg']:.2f}"
                        )
                    runs.append(row)
    if settings["rounds"] > 1:  # again at the end: other load can only lower it
        measure_peak()
    env["loadavg_end"] = os.getloadavg()
    rows = summarize(runs, settings, infos, max(peaks, default=0.0))
    versions = {}
    for r in runs:
        versions.update(r.get("versions", {}))
    for info in infos.values():
        versions.update({k: info[k] for k in ("torch", "timm", "tensorflow", "keras") if k in info})
    env["versions"] = versions
    env["sgemm_gflops"] = max(peaks, default=None)
    table, notes_lines = markdown(rows), notes(rows)
    log("\n" + "\n".join([table, *notes_lines]))
    result = {
        "command": command,
        "environment": env,
        "rows": rows,
        "runs": runs,
        "settings": {k: v for k, v in settings.items() if k != "cases"},
    }
    if settings["json"]:
        with open(settings["json"], "w") as f:
            json.dump(result, f, indent=2, default=str)
    if settings["doc"]:
        write_doc(settings["doc"], section(command, env, settings, table, notes_lines))
        log(f"wrote {settings['doc']}")
    return result


def summarize(runs, settings, infos, peak) -> list[dict]:
    """One row per case, batch and variant: medians over rounds, ratio, matmul-limit share."""
    rows = []
    for case in settings["cases"]:
        macs = infos.get(f"{case.name}_{case.size}", {}).get("macs")
        for batch in case.batches:
            mine = [
                r
                for r in runs
                if (r["model"], r["size"], r["batch"]) == (case.name, case.size, batch)
            ]
            medians = {}
            for variant in settings["variants"]:
                done = [r for r in mine if r["variant"] == variant and "images_per_s" in r]
                row = {"model": case.name, "size": case.size, "batch": batch, "variant": variant}
                if not done:
                    failed = [r["error"] for r in mine if r["variant"] == variant]
                    row["error"] = failed[0] if failed else "not run"
                    rows.append(row)
                    continue
                ips = statistics.median(r["images_per_s"] for r in done)
                medians[variant] = ips
                precision = workers.VARIANTS[variant][3]
                diff = max(r["max_abs_diff"] for r in done)
                row.update(
                    images_per_s=ips,
                    rounds=len(done),
                    precision=precision,
                    max_abs_diff=diff,
                    top1_agreement=min(r["top1_agreement"] for r in done),
                    parity=precision != "f32" or diff <= settings["tolerance"],
                    limit_share=ips * 2 * macs / 1e9 / peak if macs and peak else None,
                )
                firsts = [r["first_call_s"] for r in done if "first_call_s" in r]
                if firsts:
                    row["first_call_s"] = max(firsts)  # timm_compile: its compile time
                for fact in ("onednn", "compile_cache", "jpeg_bytes_per_image"):
                    values = list(dict.fromkeys(r[fact] for r in done if fact in r))
                    if values:
                        row[fact] = values[0] if len(values) == 1 else values
                rows.append(row)
            for row in rows[-len(settings["variants"]) :]:
                ref = medians.get(REFERENCE)
                if "images_per_s" in row and ref:
                    row["ratio_vs_timm_ort"] = row["images_per_s"] / ref
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:
        settings = resolve(args)
    except ValueError as error:
        print(f"cpu_serving: error: {error}", file=sys.stderr)
        return 2
    command = " ".join(shlex.quote(a) for a in ["python benchmarks/cpu_serving.py", *argv])
    result = run(settings, command)
    failed = [r for r in result["rows"] if "error" in r or not r.get("parity", True)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
