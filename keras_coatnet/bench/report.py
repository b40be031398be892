"""Rows of results, the markdown table, the environment and the closing summary."""

from __future__ import annotations

import json
import os
import platform

import numpy as np

from keras_coatnet.bench.timing import cores, log, summarize

OWN_PROCESS = "timm (own process)"


def add_rows(rows, name, size, batch, macs, timings, load, passes, prefix, own, own_load):
    """Append (and log) one row per variant, plus timm timed in its own process.

    `timings`: `{variant: {"first_s", "times_s"}}` from one process (this one),
    with "timm" among them; `own`: the timm worker's result or None. Ratios
    are of images/s from the medians.
    """
    pid = os.getpid()
    stats = {
        variant: summarize(t["times_s"], batch, macs, passes) for variant, t in timings.items()
    }
    for variant, t in timings.items():
        stats[variant].update(first_call_s=t["first_s"], other_load_cores=load, pid=pid)
    if own is not None:
        stats[OWN_PROCESS] = summarize(own["times_s"], batch, macs, passes)
        stats[OWN_PROCESS].update(
            first_call_s=own["first_s"], other_load_cores=own_load, pid=own["pid"]
        )
    base = stats["timm"]["images_per_s"]
    alone = stats[OWN_PROCESS]["images_per_s"] if own is not None else None
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


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(rows) -> str:
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
            f"| {cores(r['other_load_cores'])} |"
        )
    return "\n".join(lines)


def environment(threads: int, inter: int) -> dict:
    """The machine, the thread settings and every library's version."""
    import keras
    import tensorflow as tf

    from keras_coatnet._timm import import_timm

    torch, timm = import_timm()
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
        "pid": os.getpid(),  # the process that times timm and every Keras variant
    }


def summary(command, env, options, peaks, rows, checks, total) -> None:
    """Log the closing lines: command, machine, sgemm peak, the table, the largest diff."""
    peak = max(max(p["gflops"].values()) for p in peaks)
    log(f"\ncommand: {command}")
    log(
        f"machine: {env['cpu']}, {env['cpu_count']} cores, threads {options.threads} "
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


def write_json(path, result: dict) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    log(f"wrote {path}")
