"""ONNX, LiteRT and OpenVINO exports: fresh-process parity in each runtime, bad requests."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from helpers import images, randomize, tiny_model

import keras_coatnet as kc
from keras_coatnet._keras_compat import walk_layers
from keras_coatnet.layers import RelativeAttention
from keras_coatnet.serving import load

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the exporters trace TensorFlow graphs"
)
FILE_FORMATS = ("onnx", "litert", "openvino")

# Run in a fresh process: load every export in its runtime, compare with the
# model's own predictions, then send bad requests and a good one after each.
_CHECK = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from keras_coatnet.serving import load

    paths, x_path = json.loads(sys.argv[1]), sys.argv[2]
    x = np.load(x_path)
    bad = {
        "float64": x.astype("float64"),
        "rank 3": x[0],
        "wrong size": x[:, ::2, ::2],
        "empty batch": x[:0],
    }
    report = {}
    for fmt, path in paths.items():
        model = load(path, threads=2)
        entry = {"scores": model(x).tolist(), "errors": {}, "after": []}
        for name, images in bad.items():
            try:
                model(images)
                entry["errors"][name] = None
            except ValueError as error:
                entry["errors"][name] = str(error)
            entry["after"].append(model(x[:1]).tolist())
        report[fmt] = entry
    print(json.dumps(report))
    """
)


def _run_check(paths, x, tmp_path):
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run(
        [sys.executable, "-c", _CHECK, json.dumps(paths), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# A linear head: ONNX and OpenVINO add the softmax (outputs="probabilities"),
# LiteRT returns the logits.
OUTPUTS = {"onnx": "probabilities", "litert": "logits", "openvino": "probabilities"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = tiny_model(classifier_activation=None)
    randomize(model)
    folder = tmp_path_factory.mktemp("files")
    paths = {
        fmt: kc.export(model, folder / "tiny", format=fmt, outputs=OUTPUTS[fmt])
        for fmt in FILE_FORMATS
    }
    return model, paths


def _softmax(logits):
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def _assert_parity_and_clear_errors(report, expected, x):
    for fmt, entry in report.items():
        want = expected[fmt] if isinstance(expected, dict) else expected
        np.testing.assert_allclose(entry["scores"], want, atol=1e-4, err_msg=fmt)
        for name, message in entry["errors"].items():
            # One line naming what was received and what is allowed.
            assert message and "\n" not in message, (fmt, name, message)
            assert f"[batch, {x.shape[1]}, {x.shape[2]}, 3]" in message, (fmt, message)
        assert "float64" in entry["errors"]["float64"] and "none" in entry["errors"]["empty batch"]
        for after in entry["after"]:
            np.testing.assert_allclose(after, want[:1], atol=1e-4, err_msg=fmt)


def test_each_format_matches_keras_in_a_fresh_process(exported, tmp_path):
    model, paths = exported
    assert sorted(os.path.basename(p) for p in paths.values()) == [
        "tiny.onnx",
        "tiny.tflite",
        "tiny.xml",
    ]
    assert os.path.isfile(paths["openvino"][: -len(".xml")] + ".bin")
    x = images((3, 64, 64, 3), seed=1)
    logits = model.predict(x, verbose=0)
    expected = {fmt: logits if OUTPUTS[fmt] == "logits" else _softmax(logits) for fmt in paths}
    report = _run_check(paths, x, tmp_path)
    assert sorted(report) == sorted(FILE_FORMATS)
    _assert_parity_and_clear_errors(report, expected, x)


def test_onnx_holds_each_bias_once_and_gathers_none(exported):
    onnx = pytest.importorskip("onnx")
    model, paths = exported
    graph = onnx.load(paths["onnx"]).graph
    initializers = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    attention = [layer for layer in walk_layers(model) if isinstance(layer, RelativeAttention)]
    shapes = [(a.num_heads, a.height * a.width, a.height * a.width) for a in attention]
    stored = [dims for dims in initializers.values() if dims in shapes]
    # One stored bias per attention layer: not a copy per use, not a table.
    assert attention and sorted(stored) == sorted(shapes)
    # Every GELU is in the form ONNX Runtime fuses: erf(x / sqrt 2), not erf(x * 0.707).
    producer = {output: node for node in graph.node for output in node.output}
    erfs = [node for node in graph.node if node.op_type == "Erf"]
    assert erfs and all(producer[node.input[0]].op_type == "Div" for node in erfs)

    # Each of the model's LayerNorms (two per transformer block and the head's:
    # 7) is in the graph once: one LayerNormalization node (opset 17) where it
    # normalizes the last axis, else its moments, ReduceMean over axis 1, which
    # the fusion leaves alone. tf2onnx keeps two maps channels-first: the input
    # of the first transformer block (after the convolution stages) and the
    # last block's second norm. So 5 nodes for 7 norms.
    def layer_of(node, marker):  # "tiny_probabilities_1/stage3_block0_1/norm1_1/layer_norm"
        return "/".join(
            part.removesuffix("_1") for part in node.name.split(marker)[0].split("/")[1:]
        )

    norms = sorted(
        path.split("/", 1)[1]
        for path, layer in walk_layers(model, paths=True)
        if isinstance(layer, keras.layers.LayerNormalization)
    )
    fused = [layer_of(n, "/layer_norm") for n in graph.node if n.op_type == "LayerNormalization"]
    moments = [n for n in graph.node if n.op_type == "ReduceMean" and "/moments/mean" in n.name]
    for node in moments:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes["axes"] == [1], node.name
    unfused = [layer_of(n, "/moments/mean") for n in moments]
    assert len(norms) == 7 and sorted(fused + unfused) == norms, (fused, unfused)
    assert unfused == ["stage3_block0/norm1", "stage4_block0/norm2"]
    # MBConv blocks run as convolutions only (1x1s included): no layout change
    # around each depthwise convolution in ONNX Runtime.
    for block in [layer.name for layer in model.layers if isinstance(layer, kc.layers.MBConvBlock)]:
        ops = [node.op_type for node in graph.node if f"/{block}_" in node.name]
        assert ops.count("Conv") >= 3 and "MatMul" not in ops, (block, ops)
    # Gathers that remain index shapes (the dynamic batch), never a stored table.
    for node in graph.node:
        if node.op_type == "Gather":
            assert len(initializers.get(node.input[0], ())) <= 1, node.name


def test_bad_arguments_fail_in_one_line(exported, tmp_path):
    model, paths = exported
    cases = [
        (dict(path=tmp_path / "m", format="pt"), "format must be one of tf_saved_model, onnx"),
        (dict(path=tmp_path / "m.tflite", format="onnx"), "writes a .onnx file"),
        (dict(path=tmp_path / "m", format="onnx", version=2), "version only apply to"),
        (dict(path=tmp_path / "m", format="litert", top_k=3), "top_k only apply to"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            kc.export(model, **kwargs)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="an existing .onnx, .tflite or .xml file"):
        load(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="needs OpenVINO"):
        load(paths["onnx"], precision="bf16")
    with pytest.raises(ValueError, match="reads .onnx and .xml"):
        load(paths["litert"], runtime="openvino")
    with pytest.raises(ValueError, match="runtime must be"):
        load(paths["onnx"], runtime="tensorrt")


def test_onnx_runs_in_openvino_in_float32_and_bfloat16(exported):
    model, paths = exported
    x = images((2, 64, 64, 3), seed=4)
    expected = _softmax(model.predict(x, verbose=0))
    f32 = load(paths["onnx"], runtime="openvino")
    assert f32.runtime == "openvino" and f32.format == "onnx"
    np.testing.assert_allclose(f32(x), expected, atol=1e-4)
    # bfloat16 (or float32 on a CPU without it): probabilities within 0.05.
    bf16 = load(paths["onnx"], runtime="openvino", precision="bf16")
    np.testing.assert_allclose(bf16(x), expected, atol=0.05)
    # What OpenVINO compiled for, read back: float32 by default, bfloat16 when
    # asked on a CPU that has it (OpenVINO 2026.4 on an AVX2 CPU without it
    # lists FP32, INT8, BIN, EXPORT_IMPORT and reads back f32 for both).
    ov = pytest.importorskip("openvino")
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    hint = "INFERENCE_PRECISION_HINT"
    assert f32._compiled_model.get_property(hint) == ov.Type.f32
    assert bf16._compiled_model.get_property(hint) == (ov.Type.bf16 if has_bf16 else ov.Type.f32)


def test_openvino_is_pinned_to_float32_unless_asked(exported, monkeypatch):
    # On a CPU without bfloat16 OpenVINO's own default is float32 too, so the
    # read-back above cannot tell a pin from a default: the call must carry it.
    ov = pytest.importorskip("openvino")
    _, paths = exported
    configs = []
    compile_model = ov.Core.compile_model

    def recording(self, model, device, config=None):
        configs.append(dict(config or {}))
        return compile_model(self, model, device, config or {})

    monkeypatch.setattr(ov.Core, "compile_model", recording)
    load(paths["openvino"])
    load(paths["onnx"], runtime="openvino", threads=1)
    load(paths["onnx"], runtime="openvino", precision="bf16")
    hints = [c.get("INFERENCE_PRECISION_HINT") for c in configs]
    assert hints == ["f32", "f32", "bf16"], f"precision hints passed to OpenVINO: {configs}"


def test_an_interrupted_export_leaves_no_file(tmp_path, monkeypatch):
    model = tiny_model()

    def fail_half_way(self, filepath, **kwargs):
        with open(filepath, "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "export", fail_half_way)
    with pytest.raises(KeyboardInterrupt):
        kc.export(model, tmp_path / "m.onnx", format="onnx")
    assert list(tmp_path.iterdir()) == []
    attention = [layer for layer in walk_layers(model) if isinstance(layer, RelativeAttention)]
    assert attention and all(layer.frozen_bias is None for layer in attention)


def test_export_command_writes_each_format(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "keras_coatnet_cli", "export", "coatnet-digits", "--classes", "10"]
        + ["--format", "onnx", "--output", str(tmp_path / "digits")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == f"wrote {tmp_path / 'digits.onnx'}"
    assert load(tmp_path / "digits.onnx")(images((1, 64, 64, 3))).shape == (1, 10)
    bad = subprocess.run(
        [sys.executable, "-m", "keras_coatnet_cli", "export", "coatnet-digits", "--format", "onnx"]
        + ["--top-k", "3", "--output", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "top_k only apply to" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.mark.slow
def test_coatnet_0_in_each_format_matches_keras_in_a_fresh_process(tmp_path):
    model = kc.CoAtNet0(weights=None)
    randomize(model)
    paths = {fmt: kc.export(model, tmp_path / "c0", format=fmt) for fmt in FILE_FORMATS}
    x = images((2, 224, 224, 3), seed=3)
    report = _run_check(paths, x, tmp_path)
    _assert_parity_and_clear_errors(report, model.predict(x, verbose=0), x)
