"""The `coatnet` command: every subcommand in a subprocess, on coatnet-digits at 64x64 or less.

Success paths run one `python -m keras_coatnet_cli ...` process each (the
launcher of the `coatnet` console script, which starts the package lazily; `python
-m keras_coatnet` is the same command after an eager `import keras_coatnet`). The help
texts and the error paths (one line on stderr, exit status) run together in
one process that calls `keras_coatnet.cli.main` once per command line, which
saves a TensorFlow import per case; two of them also run as processes of
their own.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import SUBCOMMANDS, requires_timm

import keras_coatnet as kc
from keras_coatnet import counts, plots

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
# The command turns the frameworks' logging down itself: no TF_CPP_MIN_LOG_LEVEL here, and
# stderr is checked whole (TensorFlow's C++ start-up lines would show).
ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="the plot extra")


def coatnet(*args, env=None, timeout=300):
    """Run `python -m keras_coatnet_cli ARGS`, the same as `coatnet ARGS`."""
    result = subprocess.run(
        [sys.executable, "-m", "keras_coatnet_cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**ENV, **(env or {})},
        timeout=timeout,
    )
    return result


# TensorFlow's C++ start-up lines, which the command keeps off stderr unless --verbose.
FRAMEWORK_LOG = re.compile(r"^(I0000|W0000|E0000|WARNING: All log messages|To enable)", re.M)


def ok(result):
    assert result.returncode == 0, result.stderr
    assert not FRAMEWORK_LOG.search(result.stderr), result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny "trained" model (random weights, 10 and 1000 classes) and image trees."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.RandomState(0)
    for split, count in (("train", 2), ("test", 1)):
        for label in range(10):
            folder = root / "tree" / split / str(label)
            folder.mkdir(parents=True)
            for i in range(count):
                # Sizes other than 64x64, not square: the command resizes.
                pixels = rng.randint(0, 256, (40 + 8 * i, 48, 3)).astype("uint8")
                tf.io.write_file(str(folder / f"{i}.png"), tf.io.encode_png(pixels))
    (root / "broken.png").write_bytes(b"not an image")
    (root / "empty").mkdir()
    (root / "names.txt").write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    (root / "three.txt").write_text("a\nb\nc\n")
    kc.create_model("coatnet-digits", classes=10).save_weights(str(root / "digits.weights.h5"))
    kc.create_model("coatnet-digits").save_weights(str(root / "imagenet.weights.h5"))
    return root


# ----------------------------------------------------------------------------- entry points


def test_module_help_lists_every_subcommand():
    out = ok(coatnet("--help"))
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\s", out, re.M), name


def test_python_m_keras_coatnet_is_the_same_command():
    """`python -m keras_coatnet` still runs it, after the package's eager import.

    That import starts TensorFlow before the command can turn its logging
    down, so only stdout is compared.
    """
    result = subprocess.run(
        [sys.executable, "-m", "keras_coatnet", "--version"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"coatnet {kc.__version__}"


def test_console_script_is_installed_and_runs():
    script = os.path.join(os.path.dirname(sys.executable), "coatnet")
    if not os.path.exists(script):
        pytest.skip("the package is not installed with its console script (pip install -e .)")
    out = subprocess.run([script, "--version"], capture_output=True, text=True, env=ENV)
    assert out.returncode == 0
    assert out.stdout.strip() == f"coatnet {kc.__version__}"


# ----------------------------------------------------------------------------- subcommands


def test_models_table_has_a_row_per_variant_from_the_counts_table():
    out = ok(coatnet("models", "--filter", "coatnet[-_][6dn]*"))
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert {"coatnet-6", "coatnet-digits", "coatnet_nano_rw_224"} <= set(rows)
    assert "coatnet-7" not in rows and "coatnet-0" not in rows
    digits = rows["coatnet-digits"]
    assert digits[1:5] == ["demo", "C-C-T-T", "2-1-1-2-1", "32-32-64-96-128"]
    counted = kc.profile(kc.create_model("coatnet-digits"))
    assert digits[5] == f"{counted.params / 1e3:.2f}K"
    assert digits[6] == f"{counted.macs / 1e6:.2f}M"
    # CoAtNet-6 is not built: the table's counts (checked in tests/test_counts.py).
    assert rows["coatnet-6"][5] == f"{counts.load()['coatnet-6'].params / 1e9:.3f}B"
    assert rows["coatnet_nano_rw_224"][-1] == "sw_in1k"


def test_summary_groups_layers_by_stage():
    out = ok(coatnet("summary", "coatnet-digits", "--image-size", "64", "--classes", "10"))
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert list(rows)[:8] == ["stage", "input", "stem", "stage1", "stage2", "stage3", "stage4"] + [
        "head"
    ]
    assert "2x2x128" in rows["stage4"] and "Transformer" in rows["stage4"]
    assert "32x32x32" in rows["stem"]
    counted = kc.profile(kc.create_model("coatnet-digits", classes=10))
    assert f"{counted.params / 1e3:.2f}K" in rows["total"]
    assert rows["total"].rstrip().endswith("100.0%")


def test_evaluate_prints_accuracy_loss_and_throughput(files):
    out = ok(
        coatnet(
            "evaluate",
            "--model", "coatnet-digits",
            "--weights", files / "digits.weights.h5",
            "--dataset", files / "tree",
            "--batch-size", "4",
        )
    )  # fmt: skip
    assert "test: 10 images, 10 classes" in out  # the test/ split was picked
    top1, top5, loss = map(
        float, re.search(r"top-1 (\S+)\s+top-5 (\S+)\s+loss (\S+)", out).groups()
    )
    assert 0.0 <= top1 <= top5 <= 1.0 and loss > 0
    assert re.search(r"images/s \d+\.\d end to end .*, \d+\.\d for the model after", out)


def test_evaluate_counts_match_a_hand_count(files, tmp_path):
    """A head whose kernel is zero predicts softmax(bias) for every image: the
    ranking is known, so top-1, top-5 and the loss can be counted by hand."""
    probabilities = np.array([0.3, 0.2, 0.15, 0.1, 0.08, 0.06, 0.05, 0.03, 0.02, 0.01])
    model = kc.create_model("coatnet-digits", classes=10)
    head = model.get_layer("predictions")
    head.set_weights([np.zeros_like(head.get_weights()[0]), np.log(probabilities)])
    weights = tmp_path / "known.weights.h5"
    model.save_weights(str(weights))
    counts = {0: 3, 1: 1, 4: 2, 5: 1, 7: 2, 9: 1}  # images per class folder
    for label in range(10):
        folder = tmp_path / "tree" / str(label)
        folder.mkdir(parents=True)
        for i in range(counts.get(label, 0)):
            pixels = np.full((48, 40, 3), 20 * label + i, "uint8")
            tf.io.write_file(str(folder / f"{i}.png"), tf.io.encode_png(pixels))
    out = ok(
        coatnet(
            "evaluate", "--model", "coatnet-digits", "--weights", weights,
            "--dataset", tmp_path / "tree", "--batch-size", "3",
        )
    )  # fmt: skip
    total = sum(counts.values())  # 10
    top1 = counts[0] / total  # only class 0 is ranked first
    top5 = sum(n for label, n in counts.items() if label < 5) / total  # classes 0..4
    loss = sum(-n * np.log(probabilities[label]) for label, n in counts.items()) / total
    assert f"{total} images, 10 classes" in out
    assert f"top-1 {top1:.4f}  top-5 {top5:.4f}  loss {loss:.4f}" in out, out


def test_predict_gives_probabilities_that_sum_to_one(files):
    folder = files / "tree" / "test"
    out = ok(
        coatnet(
            "predict", folder / "3", folder / "7" / "0.png",
            "--model", "coatnet-digits",
            "--weights", files / "digits.weights.h5",
            "--classes-file", files / "names.txt",
            "--top", "10",
            "--format", "json",
        )
    )  # fmt: skip
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["image"] for line in lines] == [
        str(folder / "3" / "0.png"),
        str(folder / "7" / "0.png"),
    ]
    for line in lines:
        probabilities = [entry["probability"] for entry in line["top"]]
        assert abs(sum(probabilities) - 1.0) < 1e-5
        assert probabilities == sorted(probabilities, reverse=True)
        assert {entry["class"] for entry in line["top"]} == {f"digit {i}" for i in range(10)}


@needs_matplotlib
def test_plot_bias_writes_a_heat_map_grid_per_attention_block(files, tmp_path):
    out = ok(
        coatnet(
            "plot-bias",
            "--model", "coatnet-digits",
            "--weights", files / "digits.weights.h5",
            "--out", tmp_path / "bias",
        )
    )  # fmt: skip
    # coatnet-digits: S3 (4x4 map, 96/32 = 3 heads) twice, S4 (2x2 map, 4 heads) once.
    expected = {"stage3_block0": 3, "stage3_block1": 3, "stage4_block0": 4}
    assert sorted(os.listdir(tmp_path / "bias")) == [f"{n}_bias.png" for n in sorted(expected)]
    for name, heads in expected.items():
        image = tf.io.decode_png(tf.io.read_file(str(tmp_path / "bias" / f"{name}_bias.png")))
        width, height = plots.bias_figure_pixels(heads)
        assert image.shape[:2] == (height, width)
        assert len(np.unique(image.numpy().reshape(-1, image.shape[-1]), axis=0)) > 20
    assert "stage4_block0_bias.png: 4 heads, 3x3 offsets" in out


@needs_matplotlib
def test_train_then_plot_history_of_its_logs(files, tmp_path):
    run = tmp_path / "run"
    out = ok(
        coatnet(
            "train",
            "--dataset", files / "tree",
            "--model", "coatnet-digits",
            "--image-size", "32",
            "--batch-size", "4",
            "--epochs", "1",
            "--steps-per-epoch", "2",
            "--randaugment-ops", "0",
            "--output-dir", run,
        )
    )  # fmt: skip
    assert "held-out accuracy" in out and (run / "final.weights.h5").exists()
    out = ok(coatnet("plot-history", run, "--out", tmp_path / "history.png"))
    image = tf.io.decode_png(tf.io.read_file(str(tmp_path / "history.png")))
    assert image.shape[:2] == plots.history_figure_pixels(3)[::-1]  # loss, accuracy, lr
    assert re.search(r"^accuracy\s+validation\s+1\s", out, re.M)


def test_read_scalars_takes_the_latest_value_of_a_repeated_epoch(tmp_path):
    # A resumed run writes a second event file that repeats epoch 1.
    for values in ((2.0, 1.5), (None, 1.2, 0.9)):
        writer = tf.summary.create_file_writer(str(tmp_path / "train"))
        with writer.as_default():
            for step, value in enumerate(values):
                if value is not None:
                    tf.summary.scalar("epoch_loss", value, step=step)
                    tf.summary.scalar("batch_loss", 9.0, step=step)
        writer.close()
    scalars = plots.read_scalars(str(tmp_path))
    assert scalars == {"train": {"loss": pytest.approx({0: 2.0, 1: 1.2, 2: 0.9})}}


def test_export_writes_a_serving_version(files, tmp_path):
    out = ok(
        coatnet(
            "export", "coatnet-digits",
            "--weights", files / "digits.weights.h5",
            "--classes", "10",
            "--output", tmp_path / "serving",
        )
    )  # fmt: skip
    assert out.strip() == f"wrote {tmp_path / 'serving' / '1'}"
    assert (tmp_path / "serving" / "1" / "saved_model.pb").exists()


def test_export_size_free_takes_any_multiple_of_32(files, tmp_path):
    import tensorflow as tf

    out = ok(
        coatnet(
            "export", "coatnet-digits", "--size-free", "--image-size", "96",
            "--weights", files / "digits.weights.h5",
            "--classes", "10",
            "--output", tmp_path / "serving",
        )
    )  # fmt: skip
    loaded = tf.saved_model.load(out.split()[-1])
    images = loaded.signatures["serving_default"].structured_input_signature[1]["images"]
    assert images.shape.as_list() == [None, None, None, 3]
    for shape in ((1, 64, 64, 3), (1, 32, 96, 3)):
        scores = loaded.signatures["serving_default"](images=tf.zeros(shape))["probabilities"]
        assert scores.shape == (1, 10)
    # serving_bytes prepares its images at --image-size.
    image = tf.io.encode_png(tf.zeros((40, 50, 3), tf.uint8))
    scores = loaded.signatures["serving_bytes"](image_bytes=tf.stack([image]))["probabilities"]
    assert scores.shape == (1, 10)


@requires_timm
def test_convert_checks_against_timm_and_writes(tmp_path):
    out = ok(coatnet("convert", "coatnet_pico_rw_224", "--output-dir", tmp_path))
    assert "max abs diff vs timm" in out
    assert (tmp_path / "coatnet_pico_rw_224.weights.h5").exists()


# ----------------------------------------------------------------------------- help and errors


def _batch_cases(files):
    """{key: (argv, env, expected exit status, regex on stderr, or on stdout for status 0)}."""
    tree, weights = str(files / "tree"), str(files / "digits.weights.h5")
    trained = ["--model", "coatnet-digits", "--weights", weights]
    image = str(files / "tree" / "test" / "0" / "0.png")
    cases = {}

    def case(key, argv, code, pattern, env=None):
        cases[key] = (argv, env, code, pattern)

    # --help of every subcommand; the delegated ones show their own flags.
    for name in SUBCOMMANDS:
        case(f"help-{name}", [name, "--help"], 0, rf"usage: coatnet {name}")
    case("train-help-flags", ["train", "--help"], 0, r"--steps-per-epoch")
    imagenet = ["--model", "coatnet-digits", "--weights", str(files / "imagenet.weights.h5")]
    case("imagenet-names", ["predict", image, *imagenet, "--top", "2"], 0, r"\n  0\.\d{4}  n\d{8} ")
    case(
        "text-predict",
        ["predict", image, *trained, "--top", "3"],
        0,
        r"^\S+0\.png\n(  0\.\d{4}  \d\n){3}$",
    )

    # Errors: the subcommand, a bad invocation (2) or a failure (1), a hint.
    case("no-command", [], 2, r"^coatnet: error: .*required: COMMAND")
    case("unknown-command", ["fit"], 2, r"invalid choice: 'fit' \(choose from .*models")
    case("unknown-flag", ["summary", "coatnet-0", "--bogus"], 2, r"unrecognized arguments: --bogus")
    case(
        "unknown-model",
        ["summary", "coatnet-9x"],
        2,
        r"^coatnet summary: error: unknown model 'coatnet-9x'; did you mean coatnet-\d"
        r".*`coatnet models` lists all 29",
    )
    case(
        "unknown-model-list",
        ["summary", "resnet"],
        2,
        r"unknown model 'resnet'; did you mean \S+, \S+ or \S+\? \(`coatnet models`",
    )
    case(
        "bad-size",
        ["summary", "coatnet-0", "--image-size", "100"],
        2,
        r"multiple of 32, received: 100",
    )
    case(
        "no-match",
        ["models", "--filter", "resnet*"],
        2,
        r"no model matches --filter 'resnet\*'; the models: coatnet-0",
    )
    case(
        "no-dataset",
        ["evaluate", *trained, "--dataset", str(files / "nowhere")],
        2,
        r"dataset directory not found",
    )
    case(
        "empty-dataset",
        ["evaluate", *trained, "--dataset", str(files / "empty")],
        2,
        r"no images under",
    )
    no_file = ["--model", "coatnet-digits", "--weights", "x/none.weights.h5"]
    case(
        "no-weights",
        ["evaluate", *no_file, "--dataset", tree],
        2,
        r"weights file not found: 'x/none.weights.h5'",
    )
    no_tag = ["--model", "coatnet-digits", "--weights", "sw_in1k"]
    case(
        "unknown-tag",
        ["predict", image, *no_tag],
        2,
        r"no pretrained weights exist for 'coatnet-digits' \(weights='sw_in1k'\)",
    )
    other = ["--model", "coatnet-0", "--image-size", "64", "--weights", weights]
    case(
        "wrong-architecture",
        ["predict", image, *other],
        2,
        r"^coatnet predict: error: weights file .* does not fit model 'coatnet_0': "
        r"layer 'stem/conv1'",
    )
    case(
        "missing-image",
        ["predict", str(files / "nope.png"), *trained],
        2,
        r"no such image or folder: .*nope\.png",
    )
    case(
        "broken-image",
        ["predict", image, str(files / "broken.png"), *trained],
        1,
        r"cannot read image .*broken\.png': Unknown image file format",
    )
    three = ["--classes-file", str(files / "three.txt")]
    case(
        "classes-file",
        ["predict", image, *trained, *three],
        2,
        r"names 3 classes, the model has 10",
    )
    nowhere = ["--classes-file", str(files / "no.txt")]
    case("no-classes-file", ["predict", image, *trained, *nowhere], 2, r"classes file not found")
    case("top-zero", ["predict", image, *trained, "--top", "0"], 2, r"--top must be at least 1")
    crop = ["--dataset", tree, "--crop-pct", "1.5"]
    case("bad-crop", ["evaluate", *trained, *crop], 2, r"--crop-pct must be in \(0, 1\]")
    case(
        "missing-required",
        ["evaluate", "--model", "coatnet-digits"],
        2,
        r"required: --weights, --dataset",
    )
    case("no-logdir", ["plot-history", str(files / "nowhere")], 2, r"log directory not found")
    case("no-events", ["plot-history", str(files / "empty")], 2, r"no TensorBoard event files in")
    case(
        "train-combination",
        ["train", "--data-dir", str(files)],
        2,
        r"^coatnet train: error: --data-dir and --manual-dir need --dataset$",
    )
    case(
        "train-flag",
        ["train", "--epochs", "x"],
        2,
        r"^coatnet train: error: argument --epochs: invalid int value",
    )
    case(
        "export-flag",
        ["export", "coatnet-digits"],
        2,
        r"^coatnet export: error: .*required: --output",
    )
    case("convert-flag", ["convert"], 2, r"^coatnet convert: error: .*required: model")
    return cases


RUNNER = """
import contextlib, io, json, os, sys
from keras_coatnet.cli import main
results = {}
for key, (argv, env, _, _) in json.loads(sys.argv[1]).items():
    saved = dict(os.environ)
    os.environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    os.environ.clear()
    os.environ.update(saved)
    results[key] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def batch(files):
    cases = _batch_cases(files)
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(cases)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return cases, json.loads(result.stdout.splitlines()[-1])


BATCH_KEYS = [f"help-{name}" for name in SUBCOMMANDS] + (
    "train-help-flags imagenet-names text-predict no-command unknown-command unknown-flag "
    "unknown-model unknown-model-list bad-size no-match no-dataset empty-dataset no-weights "
    "unknown-tag wrong-architecture missing-image broken-image classes-file no-classes-file "
    "top-zero bad-crop missing-required no-logdir no-events "
    "train-combination train-flag export-flag convert-flag"
).split()


@pytest.mark.parametrize("key", BATCH_KEYS)
def test_help_and_errors(batch, key):
    cases, results = batch
    _, _, want_code, pattern = cases[key]
    code, out, err = results[key]
    assert code == want_code, (out, err)
    if want_code == 0:
        assert re.search(pattern, out, re.M | re.S), out
        return
    # One line on stderr, nothing on stdout.
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert re.search(pattern, err), err
    assert "Traceback" not in err and out == ""


def test_error_in_its_own_process_is_one_line_with_the_status():
    result = coatnet("summary", "coatnet_9_rw")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert re.fullmatch(
        r"coatnet summary: error: unknown model 'coatnet_9_rw'; did you mean "
        r"coatnet_\d_rw_224, coatnet_\d_rw_224 or coatnet_\d_rw_224\? "
        r"\(`coatnet models` lists all 29\)",
        line,
    )
    assert result.stdout == ""


def test_verbose_shows_the_traceback(files):
    result = coatnet(
        "predict", files / "broken.png",
        "--model", "coatnet-digits",
        "--weights", files / "digits.weights.h5",
        "--verbose",
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert (
        result.stderr.rstrip()
        .splitlines()[-1]
        .startswith("coatnet predict: error: cannot read image")
    )
