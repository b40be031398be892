"""The whole run: threads, the sgemm peaks, every case, the summary and the JSON file."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import warnings

import tensorflow as tf

from keras_coatnet._timm import import_timm
from keras_coatnet.bench import report
from keras_coatnet.bench.inference import bench_inference
from keras_coatnet.bench.timing import (
    ForeignLoad,
    Ticker,
    cores,
    free_memory,
    log,
    sgemm_peak,
    wait_idle,
)
from keras_coatnet.bench.training import bench_training


def set_threads(threads: int, inter: int) -> None:
    """The same intra-op threads for TensorFlow and torch (TF's inter-op: `inter` if set)."""
    torch, _ = import_timm()
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    torch.set_num_threads(threads)


def run(options, command: str | None = None, progress: bool = False) -> dict:
    """Run the benchmark; logs as it goes and returns what `--json` writes.

    `command`: the command line to record (defaults to this process's);
    `progress`: show the time since the start on stderr between log lines.
    """
    with Ticker("benchmarking", progress):
        return _run(options, command)


def _run(options, command):
    _, timm = import_timm()
    # CPU only: torch's autograd probes CUDA once and warns that it is missing.
    warnings.filterwarnings("ignore", message="CUDA initialization")
    set_threads(options.threads, options.inter_threads)
    timm.layers.set_fused_attn(True)
    command = command or " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    env = report.environment(options.threads, options.inter_threads)
    log(f"command: {command}")
    log("environment: " + json.dumps(env))

    peaks = []

    def measure_peak(label):
        wait_idle(options.wait_idle)
        with ForeignLoad() as load:
            gflops = sgemm_peak(repeats=options.sgemm_repeats)
        peaks.append({"when": label, "gflops": gflops, "other_load_cores": load.cores})
        log(
            f"sgemm float32 2048^2 GFLOP/s ({label}): "
            + ", ".join(f"{k} {v:.1f}" for k, v in gflops.items())
            + f"; other processes used {cores(load.cores)} cores"
        )

    measure_peak("start")

    rows, checks = [], []
    tmp = tempfile.mkdtemp(prefix="coatnet_bench_")
    started = time.perf_counter()
    try:
        for case in options.cases:
            bench_inference(case, options, rows, checks, tmp)
            free_memory()
            measure_peak(f"after {case.name} {case.size}")
        if options.train is not None:
            bench_training(options.train, options, rows)
            free_memory()
            measure_peak("after training")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    peak = max(max(p["gflops"].values()) for p in peaks)
    for r in rows:
        r["peak_share"] = r["gflops"] / peak
    total = time.perf_counter() - started
    env["loadavg_end"] = os.getloadavg()
    report.summary(command, env, options, peaks, rows, checks, total)
    result = {
        "command": command,
        "environment": env,
        "sgemm_gflops": peaks,
        "sgemm_peak": peak,
        "results": rows,
        "parity": checks,
        "seconds": total,
    }
    if options.json:
        report.write_json(options.json, result)
    return result
