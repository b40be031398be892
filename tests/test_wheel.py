"""The installed package is the whole product: build the wheel, install it into
a fresh virtual environment, and run every command from outside the checkout.

The environment sees the dependencies already installed for the tests (a
`.pth` line naming their site-packages; no network, no second TensorFlow)
but not the checkout: `keras_coatnet.__file__` must lie inside it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import tensorflow as tf
from helpers import SUBCOMMANDS, import_timm_or_skip

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
FRAMEWORKS = ("tensorflow", "keras", "jax", "torch")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, coatnet script, work directory) of a fresh environment with the wheel."""
    root = tmp_path_factory.mktemp("wheel")
    dist, env, work = root / "dist", root / "env", root / "work"
    work.mkdir()
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(dist), ROOT],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    [wheel] = list(dist.glob("keras_coatnet-*.whl"))
    shutil.rmtree(os.path.join(ROOT, "build"), ignore_errors=True)  # setuptools' scratch

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The test environment's packages, after the new environment's own.
    with open(os.path.join(purelib, "test_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
        + ["--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return python, env / "bin" / "coatnet", work


def run(installed, *args, timeout=600, importtime=False):
    python, script, work = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [python, *flags, script, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=timeout,
    )


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "", result.stderr[-3000:]  # no framework log lines either
    return result.stdout


def imported(result) -> set[str]:
    """Top-level modules that `python -X importtime` saw imported."""
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", result.stderr, re.M)
    return {name.split(".")[0] for name in names}


def test_the_package_comes_from_the_environment_not_the_checkout(installed):
    python, _, work = installed
    out = subprocess.run(
        [python, "-c", "import keras_coatnet, sys; print(keras_coatnet.__file__)"],
        capture_output=True,
        text=True,
        cwd=work,
        check=True,
    ).stdout.strip()
    assert out.startswith(str(python.parent.parent)), out
    assert not out.startswith(ROOT + os.sep)


def test_help_and_models_start_without_a_framework(installed):
    for args in (["--help"], ["models"], ["models", "--pretrained"], ["--version"]):
        result = run(installed, *args, importtime=True)
        assert result.returncode == 0, result.stderr[-2000:]
        assert not imported(result) & set(FRAMEWORKS), (args, imported(result) & set(FRAMEWORKS))
    # The check can fail: a command that builds a model does import TensorFlow (--verbose
    # leaves stderr alone, where -X importtime writes).
    result = run(
        installed, "summary", "coatnet-digits", "--image-size", "64", "--verbose", importtime=True
    )
    assert result.returncode == 0 and "tensorflow" in imported(result)


def test_every_subcommand_has_help(installed):
    out = ok(run(installed, "--help"))
    python, _, work = installed
    module = subprocess.run(
        [python, "-m", "keras_coatnet", "--help"], capture_output=True, text=True, cwd=work
    )
    assert module.returncode == 0 and module.stdout == out  # python -m keras_coatnet = coatnet
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\s", out, re.M), name
        result = run(installed, name, "--help", importtime=True)
        assert result.returncode == 0 and result.stdout.startswith(f"usage: coatnet {name}")
        assert not imported(result) & set(FRAMEWORKS), (name, imported(result) & set(FRAMEWORKS))


def test_models_and_summary(installed):
    out = ok(run(installed, "models"))
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert {"coatnet-0", "coatnet-7", "coatnet-digits", "coatnet_rmlp_2_rw_384"} <= set(rows)
    assert rows["coatnet-0"][5] == "25.04M"  # the paper's Table 3 says 25M
    out = ok(run(installed, "summary", "coatnet-digits", "--image-size", "64"))
    assert re.search(r"^stage4\s+Transformer\s+1\s+2x2x128", out, re.M)


def test_an_unknown_model_is_one_line_with_the_closest_names(installed):
    for args in (
        ["summary", "no-such-net"],
        ["predict", "--model", "no-such-net", "--weights", "imagenet", "x.jpg"],
    ):
        result = run(installed, *args, importtime=True)
        lines = [line for line in result.stderr.splitlines() if not line.startswith("import time")]
        assert result.returncode == 2 and result.stdout == ""
        [line] = lines
        assert re.fullmatch(
            rf"coatnet {args[0]}: error: unknown model 'no-such-net'; did you mean "
            r"\S+, \S+ or \S+\? \(`coatnet models` lists all \d+\)",
            line,
        ), line
        # -X importtime reports on stderr, which the command holds while a framework imports:
        # --verbose (the traceback, many lines) shows whether one was.
        result = run(installed, *args, "--verbose", importtime=True)
        assert result.returncode == 2 and not imported(result) & set(FRAMEWORKS)


@pytest.fixture(scope="module")
def converted(installed):
    """`coatnet convert` of a BatchNorm-randomised timm state dict, in the environment."""
    torch, timm = import_timm_or_skip()
    _, _, work = installed
    reference = timm.create_model("coatnet_pico_rw_224")
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for name, buffer in reference.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    torch.save(reference.state_dict(), work / "pico.pth")
    return run(installed, "convert", "coatnet_pico_rw_224", "--checkpoint", "pico.pth")


def test_convert_checks_against_timm_and_writes_weights(installed, converted):
    out = ok(converted)
    diff = float(re.search(r"max abs diff vs timm (\S+)", out).group(1))
    assert diff <= 1e-4
    assert "wrote weights/coatnet_pico_rw_224.weights.h5" in out
    assert re.search(r"^sha256 [0-9a-f]{64}$", out, re.M)


def test_predict_and_export_with_the_converted_weights(installed, converted):
    ok(converted)
    python, _, work = installed
    pixels = np.random.RandomState(0).randint(0, 256, (240, 200, 3)).astype("uint8")
    tf.io.write_file(str(work / "x.png"), tf.io.encode_png(pixels))
    weights = "weights/coatnet_pico_rw_224.weights.h5"
    out = ok(
        run(installed, "predict", "x.png", "--model", "coatnet_pico_rw_224", "--weights", weights,
            "--top", "3", "--format", "json")
    )  # fmt: skip
    [line] = [json.loads(line) for line in out.splitlines()]
    probabilities = [entry["probability"] for entry in line["top"]]
    assert line["image"] == "x.png" and len(probabilities) == 3
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1
    assert all(" " in entry["class"] for entry in line["top"])  # ImageNet names, from the wheel

    out = ok(run(installed, "export", "coatnet-digits", "--classes", "10", "--output", "serving"))
    assert out.strip() == f"wrote {os.path.join('serving', '1')}"
    assert (work / "serving" / "1" / "saved_model.pb").is_file()


def test_bench_smallest_case(installed):
    """The smallest run (tests/test_bench.py checks a fuller one): pico at 64 px, batch 1."""
    out = ok(run(installed, "bench", "--smoke", "--no-train", "--variants", "graph"))
    assert re.search(r"^\| coatnet_pico_rw_224 \| 64 \| 1 \| graph \|", out, re.M), out
    diff = re.search(r"largest max abs diff of any keras variant vs timm:? (\S+)", out)
    assert diff and float(diff.group(1).rstrip(",;")) < 1e-4, out


def test_import_registers_every_layer_before_a_keras_file_loads(installed, tmp_path):
    python, _, work = installed
    save = (
        "import keras_coatnet as kc; "
        "kc.create_model('coatnet-digits', classes=10).save('digits.keras')"
    )
    subprocess.run([python, "-c", save], cwd=work, check=True, capture_output=True)
    load = "import keras; {}keras.saving.load_model('digits.keras'); print('loaded')"
    with_import = subprocess.run(
        [python, "-c", load.format("import keras_coatnet; ")],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert with_import.returncode == 0 and with_import.stdout.strip() == "loaded"
    # Without the import the file cannot load: the check above can fail.
    without = subprocess.run(
        [python, "-c", load.format("")], cwd=work, capture_output=True, text=True
    )
    assert without.returncode != 0
    assert re.search(r"Could not locate class '\w+'", without.stderr), without.stderr[-2000:]
