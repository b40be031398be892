"""The pretrained-weights registry and `weights=` resolution, without network.

Downloads go to a `file://` "server" in a temporary directory and into a
temporary cache (`KERAS_HOME`), so nothing touches `~/.keras`.
"""

import hashlib
import os
from pathlib import Path

import keras
import pytest

from keras_coatnet import weights as kw

TEST_MODEL = "coatnet_test_rw_224"
TEST_TAG = f"{TEST_MODEL}.sw_test"


def _save_tiny_weights(path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save_weights(path)
    return path


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A published temporary entry: `(entry, source file, cache dir)`."""
    serve_dir = tmp_path / "server"
    serve_dir.mkdir()
    source = _save_tiny_weights(serve_dir / f"{TEST_TAG}.weights.h5")
    cache = tmp_path / "keras_home"
    monkeypatch.setenv(kw.URL_ENV, serve_dir.as_uri() + "/")
    monkeypatch.setenv("KERAS_HOME", str(cache))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    with kw.registered(kw.WeightsEntry.from_tag(TEST_TAG, sha256=digest)) as entry:
        yield entry, source, cache


def _cached(cache, entry):
    return cache / kw.CACHE_SUBDIR / entry.file_name


# -- resolve(): downloads ---------------------------------------------------


@pytest.mark.parametrize("weights", ["sw_test", TEST_TAG, "imagenet"])
def test_resolve_downloads_into_the_cache(server, weights):
    entry, source, cache = server
    path = kw.resolve(weights, TEST_MODEL)
    assert os.path.samefile(path, _cached(cache, entry))
    assert Path(path).read_bytes() == source.read_bytes()


def test_resolve_uses_the_cache_once_downloaded(server):
    entry, source, cache = server
    first = kw.resolve("sw_test", TEST_MODEL)
    source.unlink()  # the server is gone; the verified cached copy is enough
    assert kw.resolve("sw_test", TEST_MODEL) == first


def test_resolve_honours_an_explicit_cache_dir(server, tmp_path):
    entry, source, _ = server
    path = kw.resolve("sw_test", TEST_MODEL, cache_dir=tmp_path / "elsewhere")
    assert os.path.samefile(path, tmp_path / "elsewhere" / kw.CACHE_SUBDIR / entry.file_name)


def test_a_stale_cached_file_is_downloaded_again(server):
    entry, source, cache = server
    _cached(cache, entry).parent.mkdir(parents=True)
    _cached(cache, entry).write_bytes(b"an older publication")
    path = kw.resolve("sw_test", TEST_MODEL)
    assert Path(path).read_bytes() == source.read_bytes()


def test_wrong_sha256_raises_with_both_hashes_and_deletes_the_file(server):
    entry, source, cache = server
    actual = entry.sha256
    expected = "0" * 64
    kw.register(entry.replace(sha256=expected), replace=True)
    with pytest.raises(ValueError, match="SHA-256 mismatch") as info:
        kw.resolve("sw_test", TEST_MODEL)
    assert expected in str(info.value) and actual in str(info.value)
    assert not _cached(cache, entry).exists()


def test_missing_origin_raises_a_fetch_error_naming_the_convert_command(
    server, tmp_path, monkeypatch
):
    entry, _, cache = server
    missing = (tmp_path / "no_such_server").as_uri() + "/"
    monkeypatch.setenv(kw.URL_ENV, missing)
    with pytest.raises(kw.WeightsFetchError) as info:
        kw.resolve("sw_test", TEST_MODEL)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, OSError)
    assert f"could not fetch weights {TEST_TAG!r} from {missing}{entry.file_name}" in message
    assert f"python weights/convert_timm.py {TEST_TAG} --output-dir weights" in message
    assert f"weights='weights/{entry.file_name}'" in message
    assert not _cached(cache, entry).exists()


# -- resolve(): everything that is not a download ----------------------------


def test_an_existing_file_is_returned_as_is(tmp_path):
    path = _save_tiny_weights(tmp_path / "mine.weights.h5")
    assert kw.resolve(path, "coatnet-0") == str(path)
    assert kw.resolve(str(path), "coatnet_0_rw_224") == str(path)


def test_a_missing_file_path_raises(tmp_path):
    with pytest.raises(ValueError, match="weights file not found"):
        kw.resolve(str(tmp_path / "missing.weights.h5"), "coatnet_0_rw_224")


def test_unpublished_weights_raise_with_the_convert_command():
    with pytest.raises(ValueError) as info:
        kw.resolve("imagenet", "coatnet_0_rw_224")
    assert str(info.value) == (
        "weights 'coatnet_0_rw_224.sw_in1k' are not published yet (no SHA-256 recorded in "
        "keras_coatnet/weights.py); convert timm's weights locally (needs the timm extra: "
        "pip install 'keras_coatnet[timm]'), from the repository root: "
        "`python weights/convert_timm.py coatnet_0_rw_224.sw_in1k --output-dir weights`, "
        "then pass weights='weights/coatnet_0_rw_224.sw_in1k.weights.h5'"
    )


@pytest.mark.parametrize("model", ["coatnet-0", "coatnet-7", "coatnet_0_224"])
def test_a_model_without_weights_raises_naming_the_models_with_weights(model):
    with pytest.raises(ValueError, match=f"no pretrained weights exist for model '{model}'") as e:
        kw.resolve("imagenet", model)
    assert str(kw.models_with_weights()) in str(e.value)
    assert "python weights/convert_timm.py TAG --output-dir weights" in str(e.value)


def test_a_tag_of_another_model_raises_naming_both():
    with pytest.raises(ValueError) as info:
        kw.resolve("coatnet_1_rw_224.sw_in1k", "coatnet_0_rw_224")
    message = str(info.value)
    assert "'coatnet_1_rw_224'" in message and "'coatnet_0_rw_224'" in message
    assert str(["coatnet_0_rw_224.sw_in1k"]) in message


def test_an_unknown_string_raises_listing_the_model_tags():
    with pytest.raises(ValueError) as info:
        kw.resolve("sw_in22k", "coatnet_2_rw_224")
    assert str(info.value) == (
        "weights='sw_in22k' is not a file, 'imagenet', or a tag of coatnet_2_rw_224: "
        "['coatnet_2_rw_224.sw_in12k_ft_in1k', 'coatnet_2_rw_224.sw_in12k']"
    )


def test_imagenet_for_a_model_with_only_an_in12k_head_raises():
    with pytest.raises(ValueError, match="no ImageNet-1k weights.*coatnet_3_rw_224.sw_in12k"):
        kw.resolve("imagenet", "coatnet_3_rw_224")


def test_a_non_string_raises():
    with pytest.raises(ValueError, match="weights must be None, a file path"):
        kw.resolve(3, "coatnet_0_rw_224")


def test_model_names_ignore_case_and_dashes():
    assert kw.list_weights("CoAtNet-0-rw-224") == ["coatnet_0_rw_224.sw_in1k"]
    with pytest.raises(ValueError, match="not published yet"):
        kw.resolve("sw_in1k", "coatnet-0-rw-224")


# -- the registry --------------------------------------------------------------


def test_registry_entries_are_consistent():
    assert len(kw.REGISTRY) == 15
    for tag, entry in kw.REGISTRY.items():
        assert entry.tag == tag and tag.startswith(entry.model + ".")
        assert entry.file_name == f"{tag}.weights.h5"
        assert len(entry.mean) == 3 and len(entry.std) == 3
        assert entry.image_size in (224, 384)
        assert entry.crop_mode in kw.CROP_MODES
        assert entry.licence == "Apache-2.0"
        assert entry.sha256 is None  # nothing is published yet
        assert entry.num_classes in (1000, 11821)
        if entry.num_classes == 11821:
            assert entry.top1 is None
        else:
            assert 80 < entry.top1 < 88


def test_default_tags():
    assert kw.default_tag("coatnet_0_rw_224") == "coatnet_0_rw_224.sw_in1k"
    assert kw.default_tag("coatnet_2_rw_224") == "coatnet_2_rw_224.sw_in12k_ft_in1k"
    assert kw.default_tag("coatnet_rmlp_2_rw_224") == "coatnet_rmlp_2_rw_224.sw_in12k_ft_in1k"
    assert kw.default_tag("coatnet_3_rw_224") is None
    assert kw.default_tag("coatnet-0") is None
    assert kw.list_weights("coatnet-0") == []
    assert kw.list_weights() == list(kw.REGISTRY)


def test_eval_config():
    assert kw.eval_config("coatnet_rmlp_2_rw_384.sw_in12k_ft_in1k") == {
        "image_size": 384,
        "crop_pct": 1.0,
        "crop_mode": "squash",
        "interpolation": "bicubic",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "num_classes": 1000,
    }
    with pytest.raises(ValueError, match="Unknown weights tag 'nope'"):
        kw.eval_config("nope")


def test_base_url_is_read_at_call_time(monkeypatch):
    monkeypatch.delenv(kw.URL_ENV, raising=False)
    entry = kw.REGISTRY["coatnet_0_rw_224.sw_in1k"]
    assert entry.url == kw.BASE_URL + "coatnet_0_rw_224.sw_in1k.weights.h5"
    monkeypatch.setenv(kw.URL_ENV, "https://example.org/w")
    assert entry.url == "https://example.org/w/coatnet_0_rw_224.sw_in1k.weights.h5"


def test_register_and_unregister():
    entry = kw.WeightsEntry.from_tag(TEST_TAG)
    assert kw.register(entry) is entry
    try:
        assert kw.list_weights(TEST_MODEL) == [TEST_TAG]
        with pytest.raises(ValueError, match="registered already"):
            kw.register(entry)
    finally:
        assert kw.unregister(TEST_TAG) is entry
    assert TEST_TAG not in kw.REGISTRY
    with pytest.raises(ValueError, match="Unknown weights tag"):
        kw.unregister(TEST_TAG)


def test_registered_restores_a_replaced_entry():
    tag = "coatnet_0_rw_224.sw_in1k"
    original = kw.REGISTRY[tag]
    with kw.registered(original.replace(sha256="a" * 64)) as entry:
        assert kw.REGISTRY[tag] is entry
    assert kw.REGISTRY[tag] is original


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"crop_mode": "crop"}, "crop_mode must be one of"),
        ({"crop_pct": 1.5}, "crop_pct must be in"),
        ({"mean": (0.5, 0.5)}, "mean and std need 3 values"),
        ({"model": "coatnet_1_rw_224"}, "tag must be 'MODEL.PRETRAINED_TAG'"),
        ({"file_name": "dir/x.weights.h5"}, "file_name must be a bare"),
        ({"sha256": "ABC"}, "sha256 must be None or 64 lowercase hex"),
    ],
)
def test_entries_are_validated(changes, match):
    with pytest.raises(ValueError, match=match):
        kw.REGISTRY["coatnet_0_rw_224.sw_in1k"].replace(**changes)


def test_registry_matches_timm():
    from keras_coatnet._timm import import_timm

    try:
        _, timm = import_timm()
    except ImportError as error:
        pytest.skip(str(error))
    from timm.models import get_pretrained_cfg

    assert sorted(kw.REGISTRY) == sorted(timm.list_pretrained("coatnet_*"))
    for tag, entry in kw.REGISTRY.items():
        cfg = get_pretrained_cfg(tag)
        assert cfg.input_size == (3, entry.image_size, entry.image_size), tag
        assert (cfg.crop_pct, cfg.crop_mode, cfg.interpolation) == (
            entry.crop_pct,
            entry.crop_mode,
            entry.interpolation,
        ), tag
        assert (tuple(cfg.mean), tuple(cfg.std)) == (entry.mean, entry.std), tag
        assert cfg.num_classes == entry.num_classes, tag
        assert cfg.license == entry.licence.lower(), tag
    for model in kw.models_with_weights():
        timm_default = f"{model}.{get_pretrained_cfg(model).tag}"
        if kw.REGISTRY[timm_default].num_classes == 1000:
            assert kw.default_tag(model) == timm_default


# -- the builders' weights= argument ------------------------------------------


def test_create_model_fetches_a_published_tag_and_loads_it(tmp_path, monkeypatch):
    import numpy as np

    import keras_coatnet as kc

    name, tag = "coatnet_pico_rw_224", "coatnet_pico_rw_224.sw_local"
    source_model = kc.create_model(name, input_shape=(64, 64, 3))
    serve_dir = tmp_path / "server"
    serve_dir.mkdir()
    source = serve_dir / f"{tag}.weights.h5"
    source_model.save_weights(str(source))
    monkeypatch.setenv(kw.URL_ENV, serve_dir.as_uri() + "/")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    entry = kw.WeightsEntry.from_tag(tag, sha256=kw.sha256_of(source))
    with kw.registered(entry):
        # "imagenet" is a 1000-class tag of timm's, not this one: ask by tag.
        model = kc.create_model(name, input_shape=(64, 64, 3), weights="sw_local")
        # The 224-size default also loads it: the relative tables are resized.
        big = kc.create_model(name, weights=tag)
    for ours, theirs in zip(model.get_weights(), source_model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    x = np.random.RandomState(0).uniform(0, 255, (1, 224, 224, 3)).astype("float32")
    assert np.isfinite(np.asarray(big(x))).all()
    assert (tmp_path / "home" / kw.CACHE_SUBDIR / entry.file_name).is_file()


def test_create_model_with_imagenet_names_the_convert_command():
    import keras_coatnet as kc

    with pytest.raises(ValueError, match=r"convert_timm\.py coatnet_0_rw_224\.sw_in1k"):
        kc.create_model("coatnet_0_rw_224", weights="imagenet")
    with pytest.raises(ValueError, match="no pretrained weights exist for model 'coatnet-1'"):
        kc.CoAtNet1(weights="imagenet")
