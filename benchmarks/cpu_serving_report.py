"""The CPU serving benchmark's report: the machine, the markdown table, the docs section."""

from __future__ import annotations

import os
import platform
import re

BEGIN, END = "<!-- cpu-serving:begin -->", "<!-- cpu-serving:end -->"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(rows) -> str:
    lines = [
        "| model | size | batch | variant | precision | img/s | vs timm->ORT | "
        "matmul limit | max abs diff vs timm | top-1 agree |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {r['model']} | {r['size']} | {r['batch']} | {r['variant']} |"
        if "error" in r:
            lines.append(f"{head} | failed: {r['error'][:60]} | | | | |")
            continue
        ratio = r.get("ratio_vs_timm_ort")
        share = r.get("limit_share")
        mark = "" if r["parity"] else " (over tolerance)"
        lines.append(
            f"{head} {r['precision']} | {r['images_per_s']:.2f} | "
            f"{f'{ratio:.2f}x' if ratio else '-'} | {f'{share:.0%}' if share else '-'} | "
            f"{r['max_abs_diff']:.1e}{mark} | {r['top1_agreement']:.0%} |"
        )
    return "\n".join(lines)


def section(command, env, settings, table) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in sorted(env["versions"].items()))
    load = f"{env['loadavg_start'][0]:.2f} at the start, {env['loadavg_end'][0]:.2f} at the end"
    peak = env["sgemm_gflops"]
    return "\n".join(
        [
            BEGIN,
            "## CPU serving: timm -> ONNX Runtime / OpenVINO next to our exports",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {env['cpu']}, {env['cores']} cores; {settings['threads']} intra-op threads "
            f"for every runtime; Python {env['python']}; {versions}. "
            f"Load average {load}. "
            f"float32 sgemm (2048^2, best of numpy and torch): "
            f"{f'{peak:.0f}' if peak else '?'} GFLOP/s.",
            "",
            f"Each variant ran in its own process, {settings['rounds']} rounds alternating the "
            f"order, {settings['warmup']} warm-up calls then at least "
            f"{settings['min_calls']} calls and {settings['min_seconds']:g} s per process; "
            "img/s is the median over rounds of each "
            'process\'s median call. "matmul limit": img/s x 2 x MACs / sgemm GFLOP/s. '
            "Diffs are against timm eager's logits (float32 must be within "
            f"{settings['tolerance']:g}); ours take pixels 0..255 (preprocessing built in), timm "
            "the normalized input.",
            "",
            table,
            END,
        ]
    )


def write_doc(path: str, text: str) -> None:
    """Replace the section between the markers in `path`, or append it."""
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    new = (
        pattern.sub(lambda _: text, old)
        if pattern.search(old)
        else (old.rstrip("\n") + "\n\n" + text if old else text)
    )
    with open(path, "w") as f:
        f.write(new.rstrip("\n") + "\n")
