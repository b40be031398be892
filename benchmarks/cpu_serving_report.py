"""The CPU serving benchmark's report: the machine, the markdown table, the docs section."""

from __future__ import annotations

import os
import platform
import re

BEGIN, END = "<!-- cpu-serving:begin -->", "<!-- cpu-serving:end -->"
# /proc/cpuinfo flags that decide these runtimes' CPU kernels: TensorFlow turns
# oneDNN on by default only with AVX512_VNNI/AVX512_BF16/AMX-class features,
# OpenVINO's bf16 and ONNX Runtime's int8 paths look for them too.
CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str] | None:
    """Which of `CPU_FLAGS` /proc/cpuinfo lists, in that order; None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in CPU_FLAGS if flag in present]
    except OSError:
        pass
    return None


def machine(env) -> str:
    """The CPU, its flags of `CPU_FLAGS` and the TensorFlow build, in one line."""
    flags = env.get("cpu_flags")
    if flags is None:
        flags_text = "CPU flags unknown"
    else:
        absent = [f for f in CPU_FLAGS if f not in flags]
        flags_text = f"CPU flags {', '.join(flags) or 'none'} of {len(CPU_FLAGS)} checked" + (
            f" (not {', '.join(absent)})" if absent else ""
        )
    build = env.get("tensorflow_build") or {}
    if "version" in build:
        state = "on" if build["onednn_default"] else "off"
        tf_text = f"TensorFlow {build['version']}, oneDNN {state} by default on this CPU"
    else:
        tf_text = f"TensorFlow build unknown ({build.get('error', 'not probed')})"
    return f"{env['cpu']}, {env['cores']} cores; {flags_text}; {tf_text}"


def notes(rows) -> list[str]:
    """What the table's rows leave out: oneDNN per TensorFlow row, compile times, JPEG input."""
    lines = []
    tf_rows = [r for r in rows if "onednn" in r]
    if tf_rows:
        state = {}
        for r in tf_rows:  # a variant's rows agree unless the environment changed mid-run
            state.setdefault("on" if r["onednn"] is True else "off", {})[r["variant"]] = None
        lines.append(
            "TensorFlow's oneDNN kernels: "
            + "; ".join(f"{k} in {', '.join(v)}" for k, v in sorted(state.items(), reverse=True))
            + (
                " (TF_ENABLE_ONEDNN_OPTS=1 in ours_savedmodel_onednn's process)."
                if any(r["variant"] == "ours_savedmodel_onednn" for r in tf_rows)
                else "."
            )
        )
    compiled = [r for r in rows if r["variant"] == "timm_compile" and "first_call_s" in r]
    if compiled:
        times = ", ".join(
            f"{r['model']} {r['size']} b{r['batch']} {r['first_call_s']:.0f} s "
            f"(inductor cache {_states(r.get('compile_cache', '?'))})"
            for r in compiled
        )
        lines.append(
            "timm_compile is `torch.compile(model)` (inductor, default mode, as timm's "
            "benchmark.py --torchcompile) under torch.inference_mode(); its first call "
            f"compiles and is not timed (the longest over rounds: {times}; the cache lives in "
            "the work directory, cold in a new one)."
        )
    jpeg = [r for r in rows if r["variant"] == "ours_savedmodel_bytes" and "images_per_s" in r]
    if jpeg:
        size = jpeg[0].get("jpeg_bytes_per_image")
        lines.append(
            "ours_savedmodel_bytes calls the SavedModel's serving_bytes signature with the same "
            f"images as JPEG files (quality 95{f', about {size} bytes each' if size else ''}, "
            "encoded before timing): each call decodes, resizes and centre-crops in the graph, "
            'as a REST `{"b64": ...}` request; the JPEG loss and the resize put its logits '
            "outside the float32 tolerance, so it reports the top-1 agreement."
        )
    return lines


def _states(value) -> str:
    """A row's fact: one value, or the rounds' different values joined by '/'."""
    return "/".join(map(str, value)) if isinstance(value, list) else str(value)


def markdown(rows) -> str:
    lines = [
        "| model | size | batch | variant | precision | img/s | vs timm->ORT | "
        "matmul limit | max abs diff vs timm | top-1 agree |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {r['model']} | {r['size']} | {r['batch']} | {r['variant']} |"
        if "error" in r:
            lines.append(f"{head} | failed: {r['error'][:100]} | | | | |")
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


def section(command, env, settings, table, notes_lines=()) -> str:
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
            f"Machine: {machine(env)}; {settings['threads']} intra-op threads "
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
            f"{settings['tolerance']:g}; bf16, int8 and JPEG-input rows report the top-1 "
            "agreement); ours take pixels 0..255 (preprocessing built in), timm "
            "the normalized input.",
            "",
            table,
            *(line for note in notes_lines for line in ("", note)),
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
