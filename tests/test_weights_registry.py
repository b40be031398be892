"""The pretrained-weights registry, `weights=` resolution of local files, and the
builders' head rules. The Hub path itself is tested in `test_pretrained.py`."""

import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import TINY, images, import_timm_or_skip, randomize, tiny_model

import keras_coatnet as kc
from keras_coatnet import weights as kw
from keras_coatnet.preprocessing import EvalSettings, eval_settings
from keras_coatnet.weights import registry

# -- the registry --------------------------------------------------------------


def test_registry_entries_are_consistent():
    assert len(kw.REGISTRY) == 15
    for tag, entry in kw.REGISTRY.items():
        assert entry.tag == tag and entry.repo_id == f"timm/{tag}"
        assert tag.startswith(entry.model + ".") and entry.model in kc.CONFIGS
        assert entry.model.endswith(f"_{entry.image_size}")  # timm names carry the size
        assert entry.licence == "Apache-2.0"
        assert entry.num_classes in (1000, 11821)
        if entry.num_classes == 11821:
            assert entry.top1 is None
        else:
            assert 80 < entry.top1 < 88


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
RESULTS = os.path.join(FIXTURES, "timm_results_imagenet_coatnet.csv")
WEIGHTS_DOC = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "WEIGHTS.md")


def test_registry_equals_timms_results_table_at_the_cited_commit():
    """Top-1, size, crop, interpolation and parameter count of every row, cited by commit."""
    from keras_coatnet import counts

    with open(RESULTS, encoding="utf-8") as f:
        rows = {row["model"]: row for row in csv.DictReader(f)}
    with open(RESULTS[: -len(".csv")] + ".md", encoding="utf-8") as f:
        commit = re.search(r"\b[0-9a-f]{40}\b", f.read()).group()
    with open(WEIGHTS_DOC, encoding="utf-8") as f:
        assert commit in f.read()
    assert commit in registry.__doc__
    # Every ImageNet-1k tag has its row; the ImageNet-12k heads have none.
    assert sorted(rows) == sorted(t for t, e in kw.REGISTRY.items() if e.num_classes == 1000)
    table = counts.load()
    for tag, row in rows.items():
        entry = kw.REGISTRY[tag]
        assert entry.top1 == float(row["top1"]), tag
        assert entry.image_size == int(row["img_size"]), tag
        assert entry.eval_settings.crop_pct == float(row["crop_pct"]), tag
        assert entry.eval_settings.interpolation == row["interpolation"], tag
        # timm's count in millions, 2 decimals; ours from the counts table.
        assert round(table[entry.model].params / 1e6, 2) == float(row["param_count"]), tag


def test_default_tags_and_listing():
    assert kw.default_tag("coatnet_0_rw_224") == "coatnet_0_rw_224.sw_in1k"
    assert kw.default_tag("coatnet_2_rw_224") == "coatnet_2_rw_224.sw_in12k_ft_in1k"
    assert kw.default_tag("CoAtNet-rmlp-2-rw-224") == "coatnet_rmlp_2_rw_224.sw_in12k_ft_in1k"
    assert kw.default_tag("coatnet_3_rw_224") is None
    assert kw.default_tag("coatnet-0") is None
    assert kw.list_weights("coatnet-0") == []
    assert kw.list_weights() == list(kw.REGISTRY)
    assert [e.tag for e in kc.list_pretrained("coatnet_3_rw_224")] == ["coatnet_3_rw_224.sw_in12k"]


def test_the_settings_travel_with_the_weights_not_the_architecture():
    bn = kw.get_entry("coatnet_bn_0_rw_224.sw_in1k").eval_settings
    assert bn.mean == (0.485, 0.456, 0.406) and bn.std == (0.229, 0.224, 0.225)
    big = kw.get_entry("coatnet_rmlp_2_rw_384.sw_in12k_ft_in1k")
    assert (big.image_size, big.eval_settings.crop_pct, big.eval_settings.crop_mode) == (
        384,
        1.0,
        "squash",
    )
    with pytest.raises(ValueError, match="unknown weights tag 'coatnet_0_rw_224.sw_in1kk'; did"):
        kw.get_entry("coatnet_0_rw_224.sw_in1kk")


def test_registry_matches_timm():
    _, timm = import_timm_or_skip()
    from timm.models import get_pretrained_cfg

    assert sorted(kw.REGISTRY) == sorted(timm.list_pretrained("coatnet_*"))
    for tag, entry in kw.REGISTRY.items():
        cfg = get_pretrained_cfg(tag)
        settings = entry.eval_settings
        assert cfg.input_size == (3, entry.image_size, entry.image_size), tag
        assert (cfg.crop_pct, cfg.crop_mode, cfg.interpolation) == (
            settings.crop_pct,
            settings.crop_mode,
            settings.interpolation,
        ), tag
        assert (tuple(cfg.mean), tuple(cfg.std)) == (settings.mean, settings.std), tag
        assert cfg.num_classes == entry.num_classes, tag
        assert cfg.license == entry.licence.lower(), tag
        assert cfg.hf_hub_id == entry.repo_id, tag
    for model in kw.models_with_weights():
        timm_default = f"{model}.{get_pretrained_cfg(model).tag}"
        if kw.REGISTRY[timm_default].num_classes == 1000:
            assert kw.default_tag(model) == timm_default


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"crop_mode": "border"}, "crop_mode must be one of"),
        ({"crop_pct": 1.5}, "crop_pct must be in"),
        ({"mean": (0.5, 0.5)}, "mean needs 3 values"),
        ({"std": (0.5, 0.0, 0.5)}, "std must be positive"),
        ({"interpolation": "lanczos"}, "interpolation must be one of"),
    ],
)
def test_eval_settings_are_validated(changes, match):
    with pytest.raises(ValueError, match=match):
        EvalSettings().replace(**changes)


def test_entries_are_validated():
    with pytest.raises(ValueError, match="tag must be 'MODEL.PRETRAINED_TAG'"):
        kw.WeightsEntry("coatnet_0_rw_224")
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        kw.WeightsEntry("a.b", num_classes=0)


# The command line reads configs and tags without a framework. The package's
# own __init__ is swapped for a bare package so that only these modules count.
_NO_FRAMEWORK = """
import sys, types
package = types.ModuleType("keras_coatnet")
package.__path__ = [sys.argv[1]]
sys.modules["keras_coatnet"] = package
import keras_coatnet.variants as configs
import keras_coatnet.naming, keras_coatnet.preprocessing
assert "numpy" not in sys.modules, "configs, naming or preprocessing imported numpy"
import keras_coatnet.weights.registry as registry
assert configs.get_config("coatnet-0").stages and registry.default_tag("coatnet_0_rw_224")
print(sorted({"tensorflow", "keras", "jax", "torch"} & {m.split(".")[0] for m in sys.modules}))
"""


def test_configs_registry_and_preprocessing_import_no_framework():
    package = os.path.dirname(kc.__file__)
    result = subprocess.run(
        [sys.executable, "-c", _NO_FRAMEWORK, package], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- local files ------------------------------------------------------------------------


def test_a_missing_or_wrong_kind_of_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="weights file not found: '.*missing.weights.h5'"):
        kw.resolve(str(tmp_path / "missing.weights.h5"), TINY)
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="neither a Keras '.weights.h5' file nor a timm"):
        kw.resolve(str(tmp_path / "w.npz"), TINY)
    with pytest.raises(ValueError, match="is a directory"):
        kw.resolve(str(tmp_path), TINY)
    with pytest.raises(ValueError, match="weights must be None, 'imagenet', a tag"):
        kw.resolve(3, TINY)


def test_a_keras_file_resolves_once_with_its_structure_and_classes(tmp_path):
    model = tiny_model()
    path = tmp_path / "tiny.weights.h5"
    model.save_weights(str(path))
    resolved = kw.resolve(path, TINY)
    assert resolved.path == str(path) and resolved.classes == 10
    assert resolved.eval_settings is None
    assert kw.resolve(resolved, TINY) is resolved  # already resolved: as it is


# -- the builders' head rules -----------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    model = tiny_model()
    randomize(model)
    path = tmp_path / "tiny.weights.h5"
    model.save_weights(str(path))
    return model, str(path)


def test_classes_default_to_the_weights_head(saved):
    model, path = saved
    loaded = tiny_model(weights=path, classes=None)
    assert loaded.output.shape[-1] == 10
    x = images()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert kc.CoAtNet(TINY, input_shape=(64, 64, 3)).output.shape[-1] == 1000


@pytest.mark.parametrize("cache_bias", [True, False])
def test_another_class_count_keeps_the_backbone_under_a_fresh_head(saved, cache_bias):
    model, path = saved
    tuned = tiny_model(weights=path, classes=3, cache_bias=cache_bias)
    assert tuned.output.shape[-1] == 3
    x = images()
    want = kc.stage_features(model)(x, training=False)["S4"]
    got = kc.stage_features(tuned)(x, training=False)["S4"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    for name in ("head_norm", "head_pre_logits"):  # everything but the classifier
        for ours, theirs in zip(
            tuned.get_layer(name).get_weights(), model.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(ours, theirs)
    assert tuned.get_layer("predictions").get_weights()[0].shape == (32, 3)


@pytest.mark.parametrize("cache_bias", [True, False])
@pytest.mark.parametrize("pooling", [None, "avg"])
def test_include_top_false_loads_the_backbone(saved, cache_bias, pooling):
    model, path = saved
    backbone = tiny_model(weights=path, include_top=False, cache_bias=cache_bias, pooling=pooling)
    full = kc.stage_features(model)(images(), training=False)["S4"]
    got = backbone(images(), training=False)
    want = full if pooling is None else np.mean(full, axis=(1, 2))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_a_file_without_head_needs_include_top_false(tmp_path):
    headless = tiny_model(include_top=False)
    path = tmp_path / "backbone.weights.h5"
    headless.save_weights(str(path))
    with pytest.raises(ValueError, match="have no classifier head; use include_top=False"):
        tiny_model(weights=str(path))
    assert tiny_model(weights=str(path), include_top=False).output.shape[-1] == 64


def test_the_model_keeps_its_weights_settings_through_a_keras_file(tmp_path):
    import keras

    from keras_coatnet.weights.resolver import ResolvedWeights

    model = tiny_model()
    path = tmp_path / "tiny.weights.h5"
    model.save_weights(str(path))
    settings = EvalSettings(crop_pct=0.875, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    resolved = kw.resolve(path, TINY)
    resolved = ResolvedWeights(**{**resolved.__dict__, "eval_settings": settings})
    built = tiny_model(weights=resolved)
    assert eval_settings(built) == settings
    x = images()
    normalised = (x / 255.0 - np.array(settings.mean)) / np.array(settings.std)
    np.testing.assert_allclose(
        np.asarray(built.get_layer("preprocessing")(x)), normalised, rtol=1e-5, atol=1e-5
    )
    built.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert eval_settings(reloaded) == settings
    assert eval_settings(tiny_model()) is None


def test_every_combination_of_top_pooling_cache_and_size_loads_or_says_why(saved):
    """include_top x pooling x cache_bias x input size, from one 64 px file with a head."""
    model, path = saved
    x64, x96 = images(), images((2, 96, 96, 3))
    reference = {
        64: kc.stage_features(model)(x64, training=False)["S4"],
        96: kc.stage_features(tiny_model(weights=path, input_shape=(96, 96, 3)))(
            x96, training=False
        )["S4"],
    }
    for size, x in ((64, x64), (96, x96)):
        for cache_bias in (True, False):
            full = tiny_model(weights=path, input_shape=(size, size, 3), cache_bias=cache_bias)
            assert full.output.shape[-1] == 10
            want_probs = tiny_model(weights=path, input_shape=(size, size, 3))(x, training=False)
            np.testing.assert_allclose(
                np.asarray(full(x, training=False)), np.asarray(want_probs), atol=1e-5
            )
            for pooling in (None, "avg", "max"):
                backbone = tiny_model(
                    weights=path,
                    include_top=False,
                    pooling=pooling,
                    input_shape=(size, size, 3),
                    cache_bias=cache_bias,
                )
                got = np.asarray(backbone(x, training=False))
                features = np.asarray(reference[size])
                want = {
                    None: features,
                    "avg": features.mean(axis=(1, 2)),
                    "max": features.max(axis=(1, 2)),
                }[pooling]
                np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{size} {pooling}")
    with pytest.raises(ValueError, match="pooling must be one of"):
        tiny_model(weights=path, include_top=False, pooling="mean")
    with pytest.raises(ValueError, match="input height must be a positive multiple of 32"):
        tiny_model(weights=path, input_shape=(80, 64, 3))
