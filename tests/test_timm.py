"""Numerical parity with timm 1.0.31, conversion, and resolution change.

timm is the independent reference: its models are built and run by PyTorch,
and every comparison is against its outputs. Skipped without the timm extra,
failed without it where `CI` is set (`helpers.require_timm`).
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import requires_timm

import keras_coatnet as kc
from keras_coatnet._timm import import_timm
from keras_coatnet.convert import from_timm, load_timm_state_dict, timm_names
from keras_coatnet.preprocessing import eval_transform
from keras_coatnet.weights.registry import REGISTRY

pytestmark = requires_timm

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
# Bounds on the largest |ours - timm| of one output (the logits, or one
# stage's features), as a fraction of that output's largest |timm| value.
# Measured here on FAST and SMALL (TensorFlow, seeded and unseeded draws; JAX
# alike on its two): 3.8e-7..9.0e-7 for the logits, 3.4e-7..1.6e-6 for the
# stages. The bounds sit about 2x above, because the summation order, and so
# the rounding, changes with the CPU's kernels, the thread count and the
# backend. A transformer LayerNorm epsilon of 1e-5 instead of timm's 1e-6
# moves the logits and S3/S4 by 5e-6..5e-5 of their largest value and fails
# every parity test here; the former absolute 1e-4 let it through on 2 to 4
# of the 13 models, depending on the draw, and on both 384 checks.
LOGITS_BOUND = 2e-6
STAGE_BOUND = 3e-6
# SLOW adds the paper's wide CoAtNet-2..5, whose long stages round more.
# Measured on all 13 SLOW models: 3.8e-7..9.2e-7 for the logits, within
# LOGITS_BOUND; 4.3e-7..2.6e-6 for the stages (the largest CoAtNet-5's S2,
# then CoAtNet-4's S2 at 2.4e-6), so about 2x above again:
SLOW_STAGE_BOUND = 5e-6


@pytest.fixture(scope="module")
def torch():
    torch, _ = import_timm()
    torch.set_num_threads(2)
    return torch


def _timm_model(torch, name, **kwargs):
    """A timm model whose every norm statistic, affine parameter and bias is random.

    At their initial constants (zero biases, unit scales, zero means, unit
    variances, zero layer-scale) a wrong mapping can still match. Seeded,
    timm's initialisation included, so a difference reproduces.
    """
    import timm

    torch.manual_seed(0)
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


def _assert_matches(got, want, bound, what):
    """max |got - want| <= bound * max |want|, the message giving both sides."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != timm's {want.shape}"
    scale = float(np.abs(want).max())
    assert scale > 0.1, f"{what}: max |timm| {scale:.3g}, too small to compare"
    diff = float(np.abs(got - want).max())
    assert diff <= bound * scale, (
        f"{what}: max abs diff {diff:.3g} ({diff / scale:.3g} of max |timm| {scale:.3g}) "
        f"> bound {bound * scale:.3g} ({bound:g} of it)"
    )


def _check_parity(torch, name, size=None, stage_bound=STAGE_BOUND):
    reference = _timm_model(torch, name, **({"img_size": size} if size else {}))
    model = _convert(reference)
    x = _inputs(reference.img_size[0])
    want = _run_timm(torch, reference, x)
    got = keras.ops.convert_to_numpy(model(x, training=False))
    _assert_matches(got, want, LOGITS_BOUND, f"{name} logits")
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
        _assert_matches(ours, stage.numpy().transpose(0, 2, 3, 1), stage_bound, f"{name} S{i}")


@pytest.mark.parametrize("name", FAST)
def test_converted_model_matches_timm(torch, name):
    _check_parity(torch, name)


@pytest.mark.parametrize("name", SMALL)
def test_converted_model_matches_timm_at_64(torch, name):
    _check_parity(torch, name, size=64)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_converted_model_matches_timm_slow(torch, name):
    _check_parity(torch, name, stage_bound=SLOW_STAGE_BOUND)


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
    _assert_matches(got, want, LOGITS_BOUND, f"{name} loaded at 384")
    # ... and converting straight to 384.
    direct = _convert(reference, input_shape=(384, 384, 3))
    got = keras.ops.convert_to_numpy(direct(x, training=False))
    _assert_matches(got, want, LOGITS_BOUND, f"{name} converted at 384")


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
    _assert_matches(got, want, LOGITS_BOUND, f"{name} with its preprocessing")


DEFAULT_TAG = "coatnet_0_rw_224.sw_in1k"  # timm's `_cfg` defaults: 224, 0.95, centre


def _eval_cases():
    """`(tag, interpolation)`: one tag of each evaluation setting the registry uses
    (size, crop_pct, crop_mode; all bicubic), and bilinear, which a Hub
    repo's `config.json` may ask for."""
    cases = {}
    for tag, entry in REGISTRY.items():
        s = entry.eval_settings
        cases.setdefault((entry.image_size, s.crop_pct, s.crop_mode, s.interpolation), tag)
    tags = sorted(cases.values())
    return [(tag, REGISTRY[tag].eval_settings.interpolation) for tag in tags] + [
        (DEFAULT_TAG, "bilinear")
    ]


# Bounds on |eval_transform - timm's transform| in pixel levels (0..255), per
# image: the mean, and the max. Measured on both photos and their transposes:
# mean 0.276..0.285 in every case (PIL rounds to uint8 where TensorFlow keeps
# floats); max 3.50..7.50 bicubic, at high-contrast edges (PIL rounds and
# clips the cubic's overshoot between its horizontal and vertical passes,
# TensorFlow clips once, at the end), 0.98..0.99 bilinear (at most 1: PIL's
# two roundings through weights that are all positive). A crop offset
# rounded down instead of timm's round() gives a mean of 6.1..11.8, resizing
# without antialiasing 0.7..6.1 (max 57..90).
TRANSFORM_MEAN_BOUND = 0.3
TRANSFORM_MAX_BOUND = {"bicubic": 8.0, "bilinear": 1.0}


@pytest.mark.parametrize(("tag", "interpolation"), _eval_cases())
def test_eval_transform_matches_timms(torch, tag, interpolation):
    # timm's own evaluation transform (PIL), from the tag's pretrained_cfg,
    # its normalisation undone; ours gets the registry's settings for the tag.
    from PIL import Image
    from sklearn.datasets import load_sample_images
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    cfg = dict(get_pretrained_cfg(tag).to_dict(), interpolation=interpolation)
    config = resolve_data_config(pretrained_cfg=cfg)
    transform = create_transform(**config)
    settings = REGISTRY[tag].eval_settings.replace(interpolation=interpolation)
    size = config["input_size"][1:]
    assert size == (REGISTRY[tag].image_size,) * 2
    mean, std = np.array(config["mean"]), np.array(config["std"])
    photos = load_sample_images()
    for path, photo in zip(photos.filenames, photos.images, strict=True):
        name = os.path.basename(path)
        for what, image in ((name, photo), (f"{name} transposed", photo.swapaxes(0, 1))):
            image = np.ascontiguousarray(image)
            want = transform(Image.fromarray(image)).numpy().transpose(1, 2, 0)
            want = (want * std + mean) * 255
            got = eval_transform(image, size, settings).numpy()
            assert got.shape == want.shape, what
            diff = np.abs(got - want)
            limits = TRANSFORM_MEAN_BOUND, TRANSFORM_MAX_BOUND[interpolation]
            assert diff.mean() <= limits[0] and diff.max() <= limits[1], (
                f"{tag} {interpolation} {what} {image.shape[:2]}: mean abs diff "
                f"{diff.mean():.3f} (bound {limits[0]}), max {diff.max():.2f} (bound {limits[1]})"
            )


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
