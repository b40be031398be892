"""`coatnet bench` (keras_coatnet.bench): flags, timing and ratios, the child processes, a run.

The run is `coatnet bench --smoke` (coatnet_pico_rw_224 at 64x64, one
round of each variant, the training step, both child processes). No
assertion is about speed. Also the checkout's CPU serving comparison
(`benchmarks/cpu_serving.py`, repository tooling outside the package).
"""

import argparse
import ast
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from helpers import requires_timm

import keras_coatnet
from keras_coatnet import counts
from keras_coatnet.bench import options as bench_options
from keras_coatnet.bench import workers
from keras_coatnet.bench.options import Case
from keras_coatnet.bench.report import OWN_PROCESS, add_rows
from keras_coatnet.bench.timing import Ticker, log, summarize, timed_rounds
from keras_coatnet.cli import _common
from keras_coatnet.cli import bench as bench_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCHMARKS)  # cpu_serving and its sibling modules


def parse(*argv):
    """`coatnet bench ARGV` parsed with only the bench command registered."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true")
    common.add_argument("--verbose", action="store_true")
    top = _common.Parser(prog="coatnet")
    bench_cli.register(top.add_subparsers(dest="command", required=True), [common])
    return top.parse_args(["bench", *argv])


# ----------------------------------------------------------------------------- flags


def test_flags_resolve_to_the_documented_defaults_and_presets():
    args = parse()
    assert args.run is bench_cli.run and args.framework is True
    full = bench_options.resolve(args)
    assert full.cases == (
        Case("coatnet_0_224", 224, (1, 8)),
        Case("coatnet_1_224", 224, (1, 8)),
        Case("coatnet_1_224", 384, (1, 8)),
    )
    assert full.train == Case("coatnet_0_224", 224, (8,))
    assert (full.repeats, full.warmup, full.train_repeats, full.budget) == (10, 2, 8, 120.0)
    assert full.variants == ("predict", "graph", "xla", "savedmodel")
    assert full.train_variants == ("train_on_batch", "train_on_batch_xla")
    assert full.timm_own_process and full.threads == os.cpu_count() and full.json is None

    quick = bench_options.resolve(parse("--quick"))
    assert quick.cases == (Case("coatnet_0_224", 224, (1,)),)
    assert (quick.repeats, quick.warmup, quick.train, quick.train_repeats) == (
        2,
        1,
        Case("coatnet_0_224", 224, (2,)),
        2,
    )

    smoke = bench_options.resolve(parse("--smoke"))
    assert smoke.cases == (Case("coatnet_pico_rw_224", 64, (1,)),)
    assert smoke.train == Case("coatnet_pico_rw_224", 64, (1,))
    assert (smoke.repeats, smoke.warmup, smoke.train_repeats) == (1, 1, 1)
    assert smoke.variants == ("predict", "graph", "savedmodel")
    assert smoke.train_variants == ("train_on_batch",)


def test_model_specs_and_explicit_flags():
    opts = bench_options.resolve(
        parse("--models", "coatnet_1_224:384:2,4", "coatnet_0_rw_224", "--batches", "3")
    )
    assert opts.cases == (Case("coatnet_1_224", 384, (2, 4)), Case("coatnet_0_rw_224", 224, (3,)))
    opts = bench_options.resolve(
        parse("--train-model", "coatnet_nano_rw_224:96", "--train-batch", "5", "--variants", "")
    )
    assert opts.train == Case("coatnet_nano_rw_224", 96, (5,))
    assert opts.variants == ()  # timm only
    assert bench_options.resolve(parse("--no-train")).train is None
    assert bench_options.resolve(parse("--no-inference")).cases == ()
    assert bench_options.resolve(parse("--no-timm-own-process")).timm_own_process is False


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--repeats", "0"], r"^--repeats must be at least 1, received: 0$"),
        (["--warmup", "-1"], r"^--warmup must be at least 1, received: -1$"),
        (["--budget", "-5"], r"^--budget must be at least 0"),
        (["--variants", "graph,onnx"], r"^--variants: unknown 'onnx'; choose from predict, "),
        (["--train-variants", "fit"], r"^--train-variants: unknown 'fit'; choose from train_on"),
        (
            ["--models", "coatnet_9_224"],
            r"^--models: unknown timm model 'coatnet_9_224'; closest: ",
        ),
        (["--models", "coatnet_0_224:100"], r"^--models: the size must be a positive multiple"),
        (["--models", "coatnet_0_224:224:0"], r"batch sizes must be at least 1"),
        (["--batches", "1,x"], r"^--batches: not a whole number: 'x'$"),
        (["--train-model", "nope:64"], r"^--train-model: unknown timm model 'nope'"),
        (["--no-train", "--no-inference"], r"leave nothing to measure$"),
        (["--json", "/no/such/folder/out.json"], r"^--json: the folder of .* does not exist$"),
    ],
)
def test_bad_flag_values_are_one_line_errors_before_any_work(argv, message, capsys):
    args = parse(*argv)
    with pytest.raises(_common.CLIError) as raised:
        args.run(args)
    assert raised.value.code == 2
    assert re.search(message, str(raised.value)) and "\n" not in str(raised.value)
    assert capsys.readouterr().out == ""  # nothing measured, nothing logged


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bogus"], r"^coatnet: error: unrecognized arguments: --bogus"),
        (["--quick", "--smoke"], r"^coatnet bench: error: argument --smoke: not allowed with"),
        (["--repeats", "x"], r"^coatnet bench: error: argument --repeats: invalid int value"),
    ],
)
def test_unparseable_flags_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        parse(*argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    out = capsys.readouterr().out
    assert out.startswith("usage: coatnet bench")
    for flag in (
        "--quick --smoke --models --batches --repeats --warmup --budget --wait-idle --retries "
        "--busy --threads --inter-threads --variants --no-train --no-inference "
        "--no-timm-own-process --train-model --train-batch --train-repeats --train-variants "
        "--json --quiet --verbose"
    ).split():
        assert re.search(rf"{flag}\b", out), flag


# ----------------------------------------------------------------------------- timing


def test_timed_rounds_warm_up_then_rotate_the_order():
    calls = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    results = timed_rounds(fns, warmup=2, repeats=3, budget=1e9)
    assert calls == list("aabbcc") + list("abcbcacab")
    assert all(len(r["times_s"]) == 3 and r["first_s"] is not None for r in results.values())
    # Past the budget it stops after min_repeats rounds.
    calls.clear()
    results = timed_rounds(fns, warmup=1, repeats=10, budget=0.0, min_repeats=2)
    assert len(calls) == 3 + 2 * 3 and len(results["a"]["times_s"]) == 2


def test_rows_give_ratios_of_medians_and_each_rows_process():
    macs = 10**9
    # Means would give other ratios: timm 4 s mean, 1 s median; keras 0.7 and 0.5.
    timings = {
        "timm": {"first_s": 3.0, "times_s": [1.0, 10.0, 1.0]},
        "graph": {"first_s": 2.0, "times_s": [0.5, 0.1, 0.5, 0.9, 1.5]},
    }
    own = {"first_s": 1.0, "times_s": [2.0, 2.0, 9.0], "pid": -7}
    rows = []
    add_rows(rows, "m", 64, 4, macs, timings, 0.05, 3, "train: ", own, 0.02)
    by = {r["variant"]: r for r in rows}
    assert list(by) == ["train: timm", "train: graph", f"train: {OWN_PROCESS}"]
    graph = by["train: graph"]
    assert graph["median_ms"] == pytest.approx(500.0) and graph["min_ms"] == pytest.approx(100.0)
    assert graph["images_per_s"] == pytest.approx(4 / 0.5)
    assert graph["gflops"] == pytest.approx(2 * 3 * macs * 8 / 1e9)  # 3 passes per step
    assert graph["ratio_vs_timm"] == pytest.approx(2.0)
    assert graph["ratio_vs_timm_own_process"] == pytest.approx(4.0)
    assert by[f"train: {OWN_PROCESS}"]["ratio_vs_timm"] == pytest.approx(0.5)
    assert by["train: timm"]["pid"] == graph["pid"] == os.getpid()
    assert by[f"train: {OWN_PROCESS}"]["pid"] == -7
    assert (graph["other_load_cores"], by[f"train: {OWN_PROCESS}"]["other_load_cores"]) == (
        0.05,
        0.02,
    )
    assert summarize([3.0], 1, macs)["repeats"] == 1


def test_ticker_draws_on_its_stream_and_log_lines_erase_it(capsys):
    stream = io.StringIO()
    with Ticker("benchmarking", True, stream=stream):
        assert Ticker.active is not None
        for _ in range(100):  # it draws every half second
            if stream.getvalue():
                break
            time.sleep(0.1)
        log("a line")
        drawn = stream.getvalue()
    assert Ticker.active is None
    assert re.match(r"^\rbenchmarking \d+s\033\[K", drawn), drawn
    assert re.search(r"s\033\[K\r\033\[K", drawn), drawn  # erased before the line
    assert capsys.readouterr().out == "a line\n"  # stdout gets the log lines only

    quiet = io.StringIO()
    with Ticker("benchmarking", False, stream=quiet):
        assert Ticker.active is None
        log("b")
    assert quiet.getvalue() == "" and capsys.readouterr().out == "b\n"


def test_worker_command_line(capsys):
    assert workers.main(["nope", "{}"]) == 2
    usage = (
        """usage: python -c "import keras_coatnet_cli as c; """
        """c.run_module('keras_coatnet.bench.workers')" {timm,export} CONFIG_JSON"""
    )
    assert usage in capsys.readouterr().err


def _writes(call: ast.Call) -> bool:
    """Whether `call` writes: `open` in a w/a/x/+ mode, `os.replace/rename`, `.write_text`."""
    func = call.func
    name = getattr(func, "attr", getattr(func, "id", ""))
    if name == "open":
        modes = [k.value for k in call.keywords if k.arg == "mode"] + call.args[1:2]
        return any(isinstance(m, ast.Constant) and set(str(m.value)) & set("wax+") for m in modes)
    if name in ("replace", "rename"):
        return isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "os"
    return name in ("write_text", "write_bytes")


def test_the_package_writes_nothing_into_its_install_or_docs():
    """Tooling that writes docs/ or data tables lives in benchmarks/ and tools/.

    A package module that finds files through its own `__file__` (the data
    tables) only reads them.
    """
    for module in ("serving", "serving_workers", "serving_report"):
        assert importlib.util.find_spec(f"keras_coatnet.bench.{module}") is None, module
    assert not hasattr(counts, "write")
    package = os.path.dirname(keras_coatnet.__file__)
    located = []
    for folder, _, files in os.walk(package):
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if "__file__" not in text:
                continue
            located.append(os.path.relpath(path, package))
            calls = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call)]
            writes = [n for n in calls if _writes(n)]
            assert not writes, f"{path} writes at lines {[n.lineno for n in writes]}"
    assert "counts.py" in located  # the check sees the table's reader


# ----------------------------------------------------------------------------- processes


@requires_timm
def test_timm_worker_runs_in_a_process_without_tensorflow():
    cfg = {
        "name": "coatnet_pico_rw_224",
        "size": 64,
        "batch": 1,
        "train": False,
        "threads": 1,
        "warmup": 1,
        "repeats": 2,
        "budget": 100.0,
    }
    result, error = workers.run("timm", cfg)
    assert error is None and result is not None
    assert result["pid"] != os.getpid()
    assert result["tensorflow_imported"] is False  # torch and timm only
    assert result["threads"] == 1
    assert result["first_s"] > 0 and len(result["times_s"]) == 2
    assert all(t > 0 for t in result["times_s"])


@requires_timm
def test_smoke_run_times_every_variant_and_checks_parity(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "keras_coatnet_cli", "bench", "--smoke"]
        + ["--variants", "graph,savedmodel", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # the installed package, nothing of the checkout
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {r["variant"]: r for r in data["results"]}
    assert list(rows) == [
        "timm",
        "graph",
        "savedmodel",  # exported in a child process, served here
        OWN_PROCESS,
        "train: timm",
        "train: train_on_batch",
        f"train: {OWN_PROCESS}",
    ]
    # timm and the Keras variants in the benchmark's process, timm alone in
    # a child of its own for each block.
    bench_pid = data["environment"]["pid"]
    for name in ("timm", "graph", "savedmodel", "train: timm", "train: train_on_batch"):
        assert rows[name]["pid"] == bench_pid, name
    alone = rows[OWN_PROCESS]["pid"], rows[f"train: {OWN_PROCESS}"]["pid"]
    assert bench_pid not in alone and alone[0] != alone[1]
    for name, row in rows.items():
        assert (row["model"], row["size"], row["batch"], row["repeats"]) == (
            "coatnet_pico_rw_224",
            64,
            1,
            1,
        ), name
        timm = rows["train: timm" if name.startswith("train") else "timm"]
        assert row["images_per_s"] == pytest.approx(1e3 / row["median_ms"])
        assert row["ratio_vs_timm"] == pytest.approx(row["images_per_s"] / timm["images_per_s"])
        assert row["peak_share"] == pytest.approx(row["gflops"] / data["sgemm_peak"])
    assert [c["variant"] for c in data["parity"]] == ["graph", "savedmodel"]
    assert max(c["diff"] for c in data["parity"]) < 1e-4  # same weights, same logits
    assert len(data["sgemm_gflops"]) == 3  # start, after the model, after training
    # The log ends with the table and the parity line, as docs/BENCHMARKS.md shows.
    assert "| coatnet_pico_rw_224 | 64 | 1 | savedmodel |" in result.stdout
    assert "largest max abs diff of any keras variant vs timm" in result.stdout


# ----------------------------------------------------------------------------- CPU serving

needs_runtimes = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime")),
    reason="the export extra",
)


def serving_settings(*argv):
    import cpu_serving

    return cpu_serving.resolve(cpu_serving.parser().parse_args(list(argv)))


def test_serving_flags_defaults_smoke_and_bad_values():
    import cpu_serving
    import cpu_serving_workers

    full = serving_settings()
    assert full["cases"] == [Case("coatnet_0_224", 224, (1, 8)), Case("coatnet_1_224", 384, (1,))]
    assert full["variants"] == list(cpu_serving_workers.VARIANTS) and full["threads"] == 2
    new = {"timm_compile", "ours_savedmodel_onednn", "ours_savedmodel_bytes"}
    assert new <= set(full["variants"])
    assert (full["rounds"], full["min_calls"], full["tolerance"]) == (3, 5, 1e-4)
    # The checkout's docs, found next to benchmarks/ (not through the package).
    assert full["doc"] == os.path.join(ROOT, "docs", "BENCHMARKS.md")
    assert os.path.isfile(full["doc"])
    # --smoke leaves out the minutes-long torch.compile unless named.
    smoke_default = serving_settings("--smoke")["variants"]
    assert smoke_default == [v for v in full["variants"] if v != "timm_compile"]
    smoke = serving_settings("--smoke", "--variants", "timm_ort, ours_ort")
    assert smoke["cases"] == [Case("coatnet_pico_rw_224", 64, (1,))]
    assert (smoke["rounds"], smoke["doc"], smoke["variants"]) == (1, None, ["timm_ort", "ours_ort"])
    assert serving_settings("--no-doc")["doc"] is None
    for argv, message in (
        (["--variants", "timm_ort,tvm"], r"^--variants: unknown 'tvm'; choose from timm_eager, "),
        (["--threads", "0"], r"^--threads must be at least 1, received: 0$"),
        (["--models", "coatnet_0_224:100"], r"^--models: the size must be a positive multiple"),
    ):
        with pytest.raises(ValueError, match=message):
            serving_settings(*argv)
    assert cpu_serving.main(["--variants", "nope"]) == 2


def test_serving_rows_are_medians_over_rounds_with_ratio_parity_and_limit(tmp_path):
    import cpu_serving
    import cpu_serving_report as serving_report

    variants = "timm_ort,ours_ort,ours_ov_bf16,timm_compile,ours_savedmodel_bytes"
    settings = serving_settings("--smoke", "--variants", variants + ",ours_savedmodel_onednn")
    runs = [
        {"model": "coatnet_pico_rw_224", "size": 64, "batch": 1, "variant": v,
         "images_per_s": ips, "max_abs_diff": diff, "top1_agreement": 1.0, **facts}
        for v, ips, diff, facts in (
            ("timm_ort", 10.0, 1e-6, {}), ("timm_ort", 30.0, 1e-6, {}),
            ("timm_ort", 20.0, 1e-6, {}),
            ("ours_ort", 25.0, 2e-4, {}), ("ours_ort", 5.0, 1e-6, {}), ("ours_ort", 24.0, 1e-6, {}),
            ("ours_ov_bf16", 40.0, 3e-2, {}),
            ("ours_savedmodel_bytes", 8.0, 1.5, {"onednn": False, "jpeg_bytes_per_image": 5000}),
            ("ours_savedmodel_onednn", 9.0, 1e-6, {"onednn": True, "first_call_s": 0.5}),
            ("ours_savedmodel_onednn", 11.0, 1e-6, {"onednn": True, "first_call_s": 0.25}),
            ("timm_compile", 12.0, 1e-6, {"first_call_s": 90.0, "compile_cache": "cold"}),
            ("timm_compile", 14.0, 1e-6, {"first_call_s": 6.0, "compile_cache": "warm"}),
        )
    ]  # fmt: skip
    runs, compiled_runs = runs[:-2], runs[-2:]
    reason = "RuntimeError: torch.compile: no C++ compiler 'g++' (set CXX)"
    runs.append({"model": "coatnet_pico_rw_224", "size": 64, "batch": 1,
                 "variant": "timm_compile", "error": reason})  # fmt: skip
    infos = {"coatnet_pico_rw_224_64": {"macs": 10**9}}
    rows = {r["variant"]: r for r in cpu_serving.summarize(runs, settings, infos, peak=100.0)}
    assert rows["timm_ort"]["images_per_s"] == 20.0 and rows["timm_ort"]["rounds"] == 3
    ours = rows["ours_ort"]
    assert ours["images_per_s"] == 24.0 and ours["ratio_vs_timm_ort"] == pytest.approx(1.2)
    assert ours["limit_share"] == pytest.approx(24.0 * 2 / 100.0)
    assert ours["parity"] is False  # one round over 1e-4 fails the variant
    assert rows["ours_ov_bf16"]["parity"] is True  # bf16: the top-1 agreement is reported
    # JPEG input: the lossy file and the in-graph resize, not float32 rounding.
    assert rows["ours_savedmodel_bytes"]["parity"] is True
    onednn = rows["ours_savedmodel_onednn"]
    assert onednn["onednn"] is True and onednn["first_call_s"] == 0.5  # the longest round
    assert rows["timm_compile"]["error"] == reason  # a failed variant is a row, not a crash
    table = serving_report.markdown(list(rows.values()))
    assert "| ours_ort | f32 | 24.00 | 1.20x | 48% | 2.0e-04 (over tolerance) | 100% |" in table
    jpeg = "| ours_savedmodel_bytes | f32, jpeg q95 | 8.00 | 0.40x | 16% | 1.5e+00 | 100% |"
    assert jpeg in table
    assert f"| timm_compile | | failed: {reason} |" in table
    notes = serving_report.notes(list(rows.values()))
    assert notes[0].startswith(
        "TensorFlow's oneDNN kernels: on in ours_savedmodel_onednn; off in ours_savedmodel_bytes ("
    )
    assert "about 5000 bytes each" in notes[1] and len(notes) == 2  # timm_compile failed
    rows = cpu_serving.summarize(runs[:-1] + compiled_runs, settings, infos, peak=100.0)
    compiled = next(r for r in rows if r["variant"] == "timm_compile")
    assert compiled["compile_cache"] == ["cold", "warm"] and compiled["first_call_s"] == 90.0
    assert "coatnet_pico_rw_224 64 b1 90 s (inductor cache cold/warm)" in "".join(
        serving_report.notes(rows)
    )
    env = {"cpu": "AMD EPYC", "cores": 2, "cpu_flags": ["avx2", "fma"],
           "tensorflow_build": {"version": "2.21.0", "onednn_default": False}}  # fmt: skip
    assert serving_report.machine(env) == (
        "AMD EPYC, 2 cores; CPU flags avx2, fma of 9 checked (not avx512f, avx512_vnni, "
        "avx512_bf16, avx_vnni, amx_tile, amx_bf16, amx_int8); TensorFlow 2.21.0, oneDNN off "
        "by default on this CPU"
    )

    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nkept\n")
    for text in ("first", "second"):
        serving_report.write_doc(str(doc), f"{serving_report.BEGIN}\n{text}\n{serving_report.END}")
    written = doc.read_text()
    assert written.startswith("# Benchmarks\n\nkept\n") and written.count(serving_report.BEGIN) == 1
    assert "second" in written and "first" not in written


@needs_runtimes
def test_gelu_rewrite_lets_onnx_runtime_fuse_it(tmp_path):
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from keras_coatnet.serving.onnx_fusions import fuse_gelu

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value, np.float32), name)

    # Our GELU as Keras's ONNX export writes it (the Add's 1 shaped [1, 1]).
    nodes = [
        helper.make_node("Mul", ["x", "c"], ["a"]),
        helper.make_node("Erf", ["a"], ["e"]),
        helper.make_node("Add", ["one", "e"], ["s"]),
        helper.make_node("Mul", ["half", "x"], ["h"]),
        helper.make_node("Mul", ["h", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        [const("c", 0.7071067811865476), const("one", [[1.0]]), const("half", 0.5)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    x = np.random.RandomState(0).standard_normal((4, 8)).astype("float32")

    def run(model, name):
        path = str(tmp_path / name)
        onnx.save(model, path)
        options = ort.SessionOptions()
        options.optimized_model_filepath = path + ".opt"
        y = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]
        return y, [n.op_type for n in onnx.load(path + ".opt").graph.node]

    before, ops_before = run(model, "raw.onnx")
    assert "Erf" in ops_before and "Gelu" not in ops_before  # ONNX Runtime leaves it unfused
    assert fuse_gelu(model) == 1
    onnx.checker.check_model(model)
    after, ops_after = run(model, "fused.onnx")
    assert ops_after == ["Gelu"]
    np.testing.assert_allclose(after, before, atol=1e-6)


def test_serving_worker_environments_set_onednn_per_variant(monkeypatch):
    import cpu_serving_workers

    key = "TF_ENABLE_ONEDNN_OPTS"
    monkeypatch.setenv(key, "0")
    assert cpu_serving_workers.thread_env(2, "ours_savedmodel_onednn")[key] == "1"
    # The build probe sees TensorFlow's default for this CPU, whatever the caller set.
    assert key not in cpu_serving_workers.thread_env(2, "tf_build")
    assert cpu_serving_workers.thread_env(2, "ours_savedmodel")[key] == "0"


def test_serving_timm_compile_without_a_compiler_fails_in_one_line(tmp_path, monkeypatch):
    import cpu_serving_workers
    import numpy as np

    monkeypatch.setenv("CXX", "no-such-c++")
    cfg = {"threads": 1, "name": "coatnet_pico_rw_224", "size": 64, "batch": 1,
           "dir": str(tmp_path), "warmup": 1, "min_calls": 1, "min_seconds": 0.0,
           "max_calls": 1}  # fmt: skip
    np.save(tmp_path / "nchw_1.npy", np.zeros((1, 3, 64, 64), "float32"))
    np.save(tmp_path / "logits_1.npy", np.zeros((1, 1000), "float32"))
    result, error = cpu_serving_workers.run("timm_compile", cfg)
    assert result is None
    last = error.strip().splitlines()[-1]
    assert last == "RuntimeError: torch.compile: no C++ compiler 'no-such-c++' (set CXX)"


def test_serving_worker_failure_is_one_line_even_for_a_native_abort():
    import cpu_serving_workers

    reason = cpu_serving_workers.failure_reason
    python = "Traceback (most recent call last):\n  ...\nRuntimeError: torch.compile: no g++\n"
    assert reason(python, 1) == "RuntimeError: torch.compile: no g++"
    # TensorFlow's failed CHECK: the fatal line, then a native stack trace.
    native = (
        "I0000 00:00:1.5 1 port.cc:153] oneDNN custom operations are on.\n"
        "F0000 00:00:1.7 1 tensor_format.h:428] Check failed: index >= 0 && index < n\n"
        "*** Check failure stack trace: ***\n    @     0x7f29fa7a6ce3  cfunction_call\n"
    )
    assert reason(native, -6) == "SIGABRT: Check failed: index >= 0 && index < n"
    assert reason("    @     0x7f29fa7a6ce3  cfunction_call\n", -11) == "killed by SIGSEGV"
    assert reason("", 3) == "exit status 3, no output"


def _cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^flags\s*:(.*)$", f.read(), re.M)
    except OSError:
        return None
    return set(match.group(1).split()) if match else None


@requires_timm
@needs_runtimes
def test_serving_smoke_runs_each_variant_in_its_own_process(tmp_path):
    import cpu_serving_report as serving_report
    import cpu_serving_workers

    out = tmp_path / "serving.json"
    variants = ["timm_eager", "timm_ort", "ours_savedmodel_onednn", "ours_savedmodel_bytes"]
    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "cpu_serving.py"), "--smoke"]
        + ["--variants", ",".join(variants), "--json", str(out), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert list(rows) == variants
    assert rows["timm_ort"]["ratio_vs_timm_ort"] == 1.0
    assert all(rows[v]["parity"] and rows[v]["max_abs_diff"] < 1e-4 for v in variants[:3])
    jpeg = rows["ours_savedmodel_bytes"]  # through the serving_bytes signature
    assert jpeg["parity"] and jpeg["precision"] == cpu_serving_workers.JPEG
    assert jpeg["max_abs_diff"] > 1e-4 and jpeg["jpeg_bytes_per_image"] > 0
    assert rows["ours_savedmodel_onednn"]["onednn"] is True
    runs = {r["variant"]: r for r in data["runs"]}
    pids = {r["pid"] for r in runs.values()}
    assert len(pids) == len(variants) and os.getpid() not in pids  # one process per variant
    # torch and ONNX Runtime alone; TensorFlow only where it runs.
    assert [runs[v]["tensorflow_imported"] for v in variants] == [False, False, True, True]
    env = data["environment"]
    assert env["cpu_flags_checked"] == list(serving_report.CPU_FLAGS)
    present = _cpuinfo_flags()
    if present is not None:
        assert env["cpu_flags"] == [f for f in serving_report.CPU_FLAGS if f in present]
    build = env["tensorflow_build"]
    assert re.match(r"^\d+\.\d+", build["version"]) and isinstance(build["onednn_default"], bool)
    assert f"CPU flags {', '.join(env['cpu_flags']) or 'none'} of 9 checked" in result.stdout
    assert "| coatnet_pico_rw_224 | 64 | 1 | timm_ort | f32 |" in result.stdout
    assert "ours_savedmodel_bytes calls the SavedModel's serving_bytes signature" in result.stdout


@pytest.mark.slow
@requires_timm
@pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile needs a C++ compiler"
)
def test_serving_timm_compile_matches_eager_and_reports_its_compile_time(tmp_path):
    out = tmp_path / "serving.json"
    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "cpu_serving.py"), "--smoke"]
        + ["--variants", "timm_eager,timm_compile", "--json", str(out), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    compiled = rows["timm_compile"]
    assert compiled["parity"] and compiled["max_abs_diff"] < 1e-4
    # The first call compiles (a new work directory: an empty inductor cache), untimed.
    assert compiled["compile_cache"] == "cold" and compiled["first_call_s"] > 0
    assert "timm_compile is `torch.compile(model)` (inductor" in result.stdout
