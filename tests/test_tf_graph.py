"""The SavedModel's prepared graph (`serving.tf_graph`): same function, fewer passes."""

import dataclasses

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from helpers import TINY, images, randomize, tiny_model  # noqa: E402

import keras_coatnet as kc  # noqa: E402
from keras_coatnet._keras_compat import walk_layers  # noqa: E402
from keras_coatnet.layers import MBConvBlock, Stem  # noqa: E402
from keras_coatnet.serving.frozen import frozen_biases  # noqa: E402
from keras_coatnet.serving.tf_graph import (  # noqa: E402
    convolution_stages_per_image,
    tf_serving_graph,
)

# Every MBConv option the prepared branch handles differently: the paper's
# block, timm's rw blocks (norm after squeeze-excite, activation after the
# pre-norm, pooling stride, no output bias, TF padding) and the tanh GELU.
MBCONV_OPTIONS = {
    "paper": {},
    "se_before_norm": dict(se_before_norm=True, se_from="hidden", se_activation="relu"),
    "rw_silu": dict(
        activation="silu",
        pre_norm_activation=True,
        stride_mode="pool",
        output_bias=False,
        expand_from="input",
    ),
    "gelu_prenorm_same": dict(pre_norm_activation=True, padding="same"),
    "approximate": dict(approximate_gelu=True, pool_type="max"),
}


def _model(options, size=64):
    config = TINY.replace(mbconv=dataclasses.replace(TINY.mbconv, **options))
    model = kc.CoAtNet(config, input_shape=(size, size, 3), classes=10)
    randomize(model)
    return model


def _graph_ops(fn, spec):
    graph = fn.get_concrete_function(spec).graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return nodes


@pytest.mark.parametrize("name", sorted(MBCONV_OPTIONS))
def test_prepared_graph_computes_the_models_function(name):
    model = _model(MBCONV_OPTIONS[name])
    x = images((3, 64, 64, 3))
    expected = model.predict(x, verbose=0)
    with frozen_biases(model), tf_serving_graph(model) as prepared:
        assert prepared  # the stem and every MBConv block got their prepared weights
        got = tf.function(lambda images: model(images, training=False))(tf.constant(x))
    # Float32 rounding of a different order of operations; the logits are O(1).
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-5)
    blocks = [layer for layer in walk_layers(model) if isinstance(layer, (MBConvBlock, Stem))]
    assert blocks and all(layer.inference_branch is None for layer in blocks)


def test_prepared_graph_has_no_pad_and_three_pass_gelus():
    model = _model({})
    spec = tf.TensorSpec((None, 64, 64, 3), tf.float32)
    with frozen_biases(model):
        before = _graph_ops(tf.function(lambda x: model(x, training=False)), spec)
        with tf_serving_graph(model):
            after = _graph_ops(tf.function(lambda x: model(x, training=False)), spec)

    def count(nodes, op):
        return sum(node.op == op for node in nodes)

    # The stem's symmetric pad becomes its convolution's explicit padding; the
    # 2 stride-2 depthwise convolutions keep theirs (see the module docstring).
    assert count(before, "Pad") == 3 and count(after, "Pad") == 2
    # The exact GELU was x * 0.5 * (1 + erf(x / sqrt 2)); prepared, erf reads the
    # BiasAdd (or the depthwise output plus bias) directly, no Mul before it.
    by_name = {node.name: node for node in after}
    erf_inputs = [by_name[n.input[0].split(":")[0]].op for n in after if n.op == "Erf"]
    conv_gelus = 1 + 2 * 3  # the stem, and two per MBConv block (3 blocks)
    assert erf_inputs.count("BiasAdd") >= conv_gelus
    assert count(before, "Mul") - count(after, "Mul") >= 2 * conv_gelus


@pytest.mark.parametrize("batch,per_step", [(1, 1), (3, 1), (3, 2), (4, 2)])
def test_convolution_stages_per_image_equal_the_whole_batch(batch, per_step):
    model = tiny_model()
    randomize(model)
    x = images((batch, 64, 64, 3))
    call = tf.function(convolution_stages_per_image(model, per_step))
    got = call(tf.constant(x)).numpy()
    assert got.shape == (batch, 10)
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)


ONEDNN_CHILD = """
import sys
import numpy as np
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port
loaded = tf.saved_model.load(sys.argv[1])
x = np.load(sys.argv[2])
out = loaded.signatures["serving_default"](images=tf.constant(x))["logits"].numpy()
np.save(sys.argv[3], out)
print(_pywrap_util_port.IsMklEnabled())
"""


def test_the_export_runs_with_onednn_on(tmp_path):
    """TF Serving on AVX512_VNNI / AMX CPUs runs with oneDNN on: the export must not abort there."""
    import os
    import subprocess
    import sys

    model = tiny_model(classifier_activation=None)
    randomize(model)
    target = kc.export(model, tmp_path / "model", outputs="logits")
    x = images((2, 64, 64, 3))
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    child = subprocess.run(
        [sys.executable, "-c", ONEDNN_CHILD, target, tmp_path / "x.npy", tmp_path / "y.npy"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split()[-1] == "True"  # oneDNN was on
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model.predict(x, verbose=0), atol=1e-5)
