"""Numerical parity with timm 1.0.31, conversion, and resolution change.

timm is the independent reference: its models are built and run by PyTorch,
and every comparison is against its outputs. Skipped without the timm extra.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_coatnet as kc
from keras_coatnet._timm import import_timm
from keras_coatnet.convert import from_timm, load_timm_state_dict, timm_names

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("timm") is None or importlib.util.find_spec("torch") is None,
    reason="needs the timm extra (pip install -e '.[timm]')",
)

# One or more of each family in the default run: the paper-like configs, the
# rw variants (strided and pooled MBConv, BatchNorm transformer) and the rmlp
# variants (MLP bias; 3x3 max pooling in rmlp_1).
FAST = [
    "coatnet_0_224",
    "coatnet_1_224",
    "coatnet_0_rw_224",
    "coatnet_nano_rw_224",
    "coatnet_bn_0_rw_224",
    "coatnet_rmlp_nano_rw_224",
    "coatnet_rmlp_1_rw_224",
]
# One architecture of every other combination of block options (timm's
# pretrained_cfg-free differences: stride placement, SE position, shortcut
# biases, LayerScale with a table and with an MLP bias), at 64 px: parity
# does not depend on the size, and these models are large at 224.
SMALL = [
    "coatnet_pico_rw_224",
    "coatnet_1_rw_224",
    "coatnet_2_rw_224",
    "coatnet_3_rw_224",  # LayerScale, table bias
    "coatnet_rmlp_0_rw_224",
    "coatnet_rmlp_2_rw_224",  # LayerScale, MLP bias
]
SLOW = [name for name in timm_names() if name not in FAST]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def torch():
    torch, _ = import_timm()
    torch.set_num_threads(2)
    return torch


def _timm_model(torch, name, **kwargs):
    """A timm model whose every norm statistic, affine parameter and bias is random.

    At their initial constants (zero biases, unit scales, zero means, unit
    variances, zero layer-scale) a wrong mapping can still match.
    """
    import timm

    model = timm.create_model(name, **kwargs).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.dtype.is_floating_point:
                continue
            noise = torch.randn(value.shape, generator=gen)
            if key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
            elif key.endswith("running_mean"):
                value.copy_(0.1 * noise)
            elif key.endswith("bias"):
                value.copy_(0.02 * noise)
            elif key.endswith("gamma"):  # layer scale
                value.copy_(0.5 + 0.1 * noise)
            elif key.endswith("relative_position_bias_table"):
                value.copy_(noise)
            elif value.ndim == 1:  # norm scales
                value.copy_(1.0 + 0.1 * noise)
    return model


def _inputs(size, batch=2):
    return np.random.RandomState(0).normal(size=(batch, size, size, 3)).astype("float32")


def _run_timm(torch, model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()


def _convert(model, **kwargs):
    return from_timm(model, classifier_activation=None, include_preprocessing=False, **kwargs)


def _check_parity(torch, name, size=None):
    reference = _timm_model(torch, name, **({"img_size": size} if size else {}))
    model = _convert(reference)
    x = _inputs(reference.img_size[0])
    want = _run_timm(torch, reference, x)
    got = keras.ops.convert_to_numpy(model(x, training=False))
    assert np.abs(want).max() > 0.1  # not trivially small
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
    # Keras's count is timm's parameters plus its BatchNorm statistics (no bias cache).
    statistics = sum(
        b.numel()
        for key, b in reference.named_buffers()
        if key.endswith(("running_mean", "running_var"))
    )
    assert model.count_params() == sum(p.numel() for p in reference.parameters()) + statistics
    # Every stage, not only the logits.
    with torch.no_grad():
        stages = reference.forward_intermediates(
            torch.from_numpy(x.transpose(0, 3, 1, 2)), intermediates_only=True
        )
    features = kc.stage_features(model)(x, training=False)
    assert len(stages) == 5
    for i, stage in enumerate(stages):
        ours = keras.ops.convert_to_numpy(features[f"S{i}"])
        np.testing.assert_allclose(
            ours, stage.numpy().transpose(0, 2, 3, 1), rtol=0, atol=TOLERANCE, err_msg=f"S{i}"
        )


@pytest.mark.parametrize("name", FAST)
def test_converted_model_matches_timm(torch, name):
    _check_parity(torch, name)


@pytest.mark.parametrize("name", SMALL)
def test_converted_model_matches_timm_at_64(torch, name):
    _check_parity(torch, name, size=64)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_converted_model_matches_timm_slow(torch, name):
    _check_parity(torch, name)


def test_every_timm_coatnet_has_a_config():
    import timm

    ours = set(timm_names())
    theirs = {n for n in timm.list_models("coatnet*") if "_cc_" not in n}
    assert theirs <= ours, sorted(theirs - ours)


@pytest.mark.parametrize("name", ["coatnet_0_224", "coatnet_rmlp_nano_rw_224"])
def test_224_checkpoint_at_384_matches_timm_resizing(torch, name, tmp_path):
    from timm.models.maxxvit import checkpoint_filter_fn

    reference = _timm_model(torch, name)
    big = _timm_model(torch, name, img_size=384)
    big.load_state_dict(checkpoint_filter_fn(reference.state_dict(), big))
    x = _inputs(384, batch=1)
    want = _run_timm(torch, big, x)
    # Through a saved 224 file and builder loading (automatic resize) ...
    path = str(tmp_path / "c224.weights.h5")
    _convert(reference).save_weights(path)
    loaded = kc.create_model(
        name,
        input_shape=(384, 384, 3),
        weights=path,
        classifier_activation=None,
        include_preprocessing=False,
    )
    got = keras.ops.convert_to_numpy(loaded(x, training=False))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
    # ... and converting straight to 384.
    direct = _convert(reference, input_shape=(384, 384, 3))
    got = keras.ops.convert_to_numpy(direct(x, training=False))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


def test_saved_conversion_reloads_into_create_model(torch, tmp_path):
    name = "coatnet_rmlp_nano_rw_224"
    converted = _convert(_timm_model(torch, name))
    path = str(tmp_path / "rmlp.weights.h5")
    converted.save_weights(path)
    fresh = kc.create_model(
        name, weights=path, classifier_activation=None, include_preprocessing=False
    )
    x = _inputs(224)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(fresh(x, training=False)),
        keras.ops.convert_to_numpy(converted(x, training=False)),
    )


def test_preprocessing_matches_timm_normalization(torch):
    # Pixels in [0, 255] through the built-in preprocessing equal timm on
    # (x / 255 - mean) / std with the variant's mean/std (ImageNet's here).
    name = "coatnet_bn_0_rw_224"
    reference = _timm_model(torch, name)
    model = from_timm(reference, classifier_activation=None)
    pixels = np.random.RandomState(0).uniform(0, 255, (1, 224, 224, 3)).astype("float32")
    cfg = reference.pretrained_cfg
    normalized = (pixels / 255.0 - np.array(cfg["mean"])) / np.array(cfg["std"])
    want = _run_timm(torch, reference, normalized.astype("float32"))
    got = keras.ops.convert_to_numpy(model(pixels, training=False))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


def _state(torch, name):
    return {k: v.clone() for k, v in _timm_model(torch, name).state_dict().items()}


def test_state_dict_mismatches_raise_and_load_nothing(torch):
    model = kc.create_model("coatnet_rmlp_nano_rw_224", classifier_activation=None)
    before = [np.array(w) for w in model.get_weights()]
    state = _state(torch, "coatnet_rmlp_nano_rw_224")

    missing = dict(state)
    del missing["stages.2.blocks.1.attn.proj.weight"]
    with pytest.raises(ValueError, match=r"stages\.2\.blocks\.1\.attn\.proj\.weight"):
        load_timm_state_dict(model, missing)

    extra = dict(state, **{"stages.9.blocks.0.mystery": state["stem.conv1.weight"]})
    with pytest.raises(ValueError, match=r"stages\.9\.blocks\.0\.mystery"):
        load_timm_state_dict(model, extra)

    wrong = dict(state)
    wrong["stages.1.blocks.0.conv2_kxk.weight"] = wrong["stages.1.blocks.0.conv2_kxk.weight"][:8]
    with pytest.raises(ValueError, match=r"stages\.1\.blocks\.0\.conv2_kxk\.weight"):
        load_timm_state_dict(model, wrong)

    other = _state(torch, "coatnet_nano_rw_224")  # table bias, not an MLP
    with pytest.raises(ValueError, match="rel_pos"):
        load_timm_state_dict(model, other)

    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_weights_file_of_another_variant_names_the_mismatch(torch, tmp_path):
    path = str(tmp_path / "rmlp.weights.h5")
    _convert(_timm_model(torch, "coatnet_rmlp_nano_rw_224")).save_weights(path)
    model = kc.create_model("coatnet_nano_rw_224", classifier_activation=None)
    before = [np.array(w) for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"stage3_block0"):
        kc.load_weights(model, path)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_convert_script_writes_checks_and_hashes(tmp_path):
    # A fresh process: the command line converts, compares with timm and
    # prints the SHA-256 of the file it wrote.
    script = os.path.join(os.path.dirname(__file__), "..", "weights", "convert_timm.py")
    result = subprocess.run(
        [sys.executable, script, "coatnet_pico_rw_224", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    path = tmp_path / "coatnet_pico_rw_224.weights.h5"
    assert path.is_file()
    digest = kc.weights.sha256_of(path)
    assert f"sha256 {digest}" in result.stdout
    assert "max abs diff" in result.stdout


def test_convert_script_fails_beyond_tolerance_and_writes_nothing(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "weights", "convert_timm.py")
    result = subprocess.run(
        [
            sys.executable,
            script,
            "coatnet_pico_rw_224",
            "--output-dir",
            str(tmp_path),
            "--tolerance",
            "1e-12",  # float32 cannot agree that closely
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    assert "does not match timm; nothing written" in result.stderr
    assert not list(tmp_path.iterdir())
