"""Pretrained weights end to end: a local Hub on 127.0.0.1, timm's logits, bad input.

The real loading code runs unchanged: `huggingface_hub` fetches from a local
server (`tests/hub_server.py`) that serves the Hub's `resolve` layout, with
files written here from BatchNorm-randomised timm models. Nothing reaches
the network.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import import_timm_or_skip
from hub_server import HubServer, etag_of, write_repo
from test_timm import LOGITS_BOUND, _assert_matches

import keras_coatnet as kc
from keras_coatnet.weights import hub, registry

PICO = "coatnet_pico_rw_224"
PICO_TAG = f"{PICO}.sw_test"
SIZE = 64


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Empty caches, a registry entry for a small architecture, and a served repo root."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(registry.REGISTRY, PICO_TAG, registry.WeightsEntry(PICO_TAG))
    return tmp_path


@pytest.fixture
def served(env, monkeypatch):
    with HubServer(env / "hub") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


def _blob_is_whole(path):
    """Whether a cached blob's content has the hash it is named by (the ETag served)."""
    with open(path, "rb") as f:
        data = f.read()
    name = os.path.basename(path)
    return name == etag_of("x.safetensors" if len(name) == 64 else "x.json", data)


def _cache_state(root):
    """`(whole, partial)` after a load: what the one cache, the Hub's, holds.

    `whole`: names of the snapshot entries a later load could take, each
    pointing to a blob whose content has the hash it is named by. `partial`:
    anything else there (a partial download, a blob of other bytes, an entry
    without its blob), and any file under KERAS_HOME, where nothing is written.
    """
    whole, partial = [], []
    for folder, _, files in os.walk(root / "hf"):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root / "hf")
            if name == "CACHEDIR.TAG" or rel.startswith(".locks") or "/refs/" in rel:
                continue  # the cache's own bookkeeping
            if "/.no_exist/" in rel and os.path.getsize(path) == 0:
                continue  # the client's empty record of a 404
            blob = os.path.realpath(path)
            if os.path.isfile(blob) and "/blobs/" in blob and _blob_is_whole(blob):
                if "/snapshots/" in rel:
                    whole.append(name)
                continue
            partial.append(rel)
    for folder, _, files in os.walk(root / "keras"):
        partial.extend(os.path.join(folder, name) for name in files)
    return sorted(whole), partial


NOTHING_CACHED = ([], [])


def _load(weights, model=PICO):
    return kc.create_model(model, weights=weights, input_shape=(SIZE, SIZE, 3))


# -- bad input: one line, nothing half-loaded, nothing cached ------------------------


def test_an_unknown_tag_lists_close_matches(env):
    with pytest.raises(ValueError) as info:
        _load("sw_tset")
    message = str(info.value)
    assert "unknown weights 'sw_tset'" in message and "did you mean sw_test" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="did you mean coatnet_0_rw_224.sw_in1k"):
        kc.create_model("coatnet_0_rw_224", weights="coatnet_0_rw_224.sw_in1kk")
    assert _cache_state(env) == NOTHING_CACHED


def test_a_tag_of_another_architecture_names_both(env):
    with pytest.raises(ValueError) as info:
        _load("coatnet_0_rw_224.sw_in1k")
    assert str(info.value) == (
        f"weights 'coatnet_0_rw_224.sw_in1k' are for 'coatnet_0_rw_224', not for "
        f"'{PICO}'; the tags of '{PICO}': {PICO_TAG}"
    )
    assert _cache_state(env) == NOTHING_CACHED


@pytest.mark.parametrize(
    "factory, closest",
    [
        (kc.CoAtNet0, ["coatnet_0_rw_224.sw_in1k", "coatnet_bn_0_rw_224.sw_in1k"]),
        (kc.CoAtNet2, ["coatnet_2_rw_224.sw_in12k_ft_in1k", "coatnet_rmlp_2_rw_384."]),
        (kc.CoAtNet5, ["coatnet_3_rw_224.sw_in12k"]),
    ],
)
def test_paper_models_say_they_have_no_weights_and_name_the_closest(env, factory, closest):
    with pytest.raises(ValueError) as info:
        factory(weights="imagenet")
    message = str(info.value)
    assert message.startswith("no pretrained weights exist for 'coatnet-")
    assert all(tag in message for tag in closest), message
    assert _cache_state(env) == NOTHING_CACHED


def test_a_missing_repo_names_the_url_and_the_options(served, env):
    with pytest.raises(kc.weights.WeightsFetchError) as info:
        _load("sw_test")
    message = str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, OSError)
    assert f"no repository 'timm/{PICO_TAG}' at {served.endpoint}" in message
    assert f"{served.endpoint}/timm/{PICO_TAG}/resolve/main/model.safetensors" in message
    assert _cache_state(env) == NOTHING_CACHED


def test_a_repo_without_the_file_names_it(served, env):
    write_repo(env / "hub", f"timm/{PICO_TAG}", {"README.md": b"no weights here"})
    with pytest.raises(kc.weights.WeightsFetchError, match="has no file 'model.safetensors'"):
        _load("sw_test")
    assert _cache_state(env) == NOTHING_CACHED


def test_a_refused_connection_names_the_url_endpoint_and_offline_options(env, monkeypatch):
    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)  # the client's backoff
    with HubServer(env / "hub") as server:
        endpoint = server.endpoint  # a port that is closed once the server stops
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(kc.weights.WeightsFetchError) as info:
        _load("sw_test")
    message = str(info.value)
    assert f"could not fetch {endpoint}/timm/{PICO_TAG}/resolve/main/model.safetensors" in message
    assert "ConnectError" in message
    assert "HF_ENDPOINT" in message and "HF_HUB_OFFLINE=1" in message
    assert _cache_state(env) == NOTHING_CACHED


def test_offline_with_nothing_cached_says_so(served, env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(kc.weights.WeightsFetchError) as info:
        _load("sw_test")
    assert "HF_HUB_OFFLINE is set and the file is not in the cache" in str(info.value)
    assert served.requests == []
    assert _cache_state(env) == NOTHING_CACHED


@pytest.mark.parametrize(
    "fault, match",
    [("cut", "Consistency check failed"), ("corrupt", "failed its integrity check")],
)
def test_a_download_cut_short_or_corrupt_leaves_nothing_cached(served, env, fault, match):
    data = os.urandom(4096)
    write_repo(env / "hub", f"timm/{PICO_TAG}", {"model.safetensors": data})
    served.faults[(f"timm/{PICO_TAG}", "model.safetensors")] = fault
    with pytest.raises(kc.weights.WeightsFetchError, match=match) as info:
        _load("sw_test")
    assert "model.safetensors" in str(info.value)
    assert _cache_state(env) == NOTHING_CACHED


def test_a_corrupt_small_file_fails_its_git_blob_sha1_and_leaves_nothing_cached(served, env):
    # config.json is not an LFS file: the Hub's ETag is its git blob SHA-1.
    config = _config_json(PICO, 10)
    write_repo(env / "hub", "someone/ft", {"config.json": config, "model.safetensors": b"x" * 99})
    served.faults[("someone/ft", "config.json")] = "corrupt"
    with pytest.raises(kc.weights.WeightsFetchError) as info:
        _load("hf://someone/ft")
    sent = bytes(b ^ 0xFF for b in config[:64]) + config[64:]  # what the fault serves
    assert str(info.value) == (
        f"{served.endpoint}/someone/ft/resolve/main/config.json failed its integrity check: "
        f"the Hub's git blob SHA-1 is {etag_of('config.json', config)}, the downloaded "
        f"file's is {etag_of('config.json', sent)}; the file was removed from the cache, "
        "try again"
    )
    assert _cache_state(env) == NOTHING_CACHED
    # Checked before anything else was fetched.
    assert not any(path.endswith("model.safetensors") for _, path in served.requests)


def test_a_file_that_is_not_safetensors_is_named_and_not_converted(served, env):
    write_repo(env / "hub", f"timm/{PICO_TAG}", {"model.safetensors": b"<html>oops</html>" * 9})
    with pytest.raises(ValueError, match="is not a readable safetensors file") as info:
        _load("sw_test")
    assert f"timm/{PICO_TAG}/resolve/main/model.safetensors" in str(info.value)
    # The Hub's file stays cached whole (it is what the Hub serves; a later load
    # fails the same way); nothing partial, nothing converted.
    assert _cache_state(env) == (["model.safetensors"], [])


def test_safetensors_of_another_model_name_the_first_missing_tensor(served, env):
    from safetensors.numpy import save_file

    save_file({"head.fc.weight": np.zeros((10, 8), "float32")}, str(env / "other.safetensors"))
    data = (env / "other.safetensors").read_bytes()
    write_repo(env / "hub", f"timm/{PICO_TAG}", {"model.safetensors": data})
    with pytest.raises(ValueError) as info:
        _load("sw_test")
    assert f"does not fit {PICO}: the timm state dict has no 'stem.conv1.weight'" in str(info.value)
    assert _cache_state(env) == (["model.safetensors"], [])


def test_a_pickle_is_refused_with_how_to_convert(served, env, tmp_path):
    pickle = b"\x80\x02}q\x00." + b"\x00" * 64
    write_repo(env / "hub", "someone/ft", {"config.json": _config_json(PICO, 10)})
    write_repo(env / "hub", "someone/ft", {"pytorch_model.bin": pickle})
    for weights in ("hf://someone/ft", str(tmp_path / "x.bin")):
        (tmp_path / "x.bin").write_bytes(pickle)
        with pytest.raises(ValueError, match="is a PyTorch pickle, which can run code") as info:
            _load(weights)
        assert "save_file(torch.load(" in str(info.value)
    # A pickle renamed to .safetensors is recognised as well.
    (tmp_path / "model.safetensors").write_bytes(pickle)
    with pytest.raises(ValueError, match="PyTorch pickle"):
        _load(str(tmp_path / "model.safetensors"))
    assert _cache_state(env) == (["config.json"], [])


def test_hf_repos_of_another_architecture_or_malformed_are_refused(served, env):
    write_repo(env / "hub", "someone/big", {"config.json": _config_json("coatnet_0_rw_224", 7)})
    write_repo(env / "hub", "someone/vit", {"config.json": _config_json("vit_base_patch16", 7)})
    with pytest.raises(ValueError, match="holds a coatnet_0_rw_224, not a coatnet_pico_rw_224"):
        _load("hf://someone/big")
    with pytest.raises(ValueError, match="architecture 'vit_base_patch16', not a CoAtNet"):
        _load("hf://someone/vit")
    with pytest.raises(ValueError, match="must be 'hf://owner/repo'"):
        _load("hf://just-a-name")
    with pytest.raises(kc.weights.WeightsFetchError, match="revision 'nope' of 'someone/big'"):
        _load("hf://someone/big@nope")
    assert _cache_state(env) == (["config.json", "config.json"], [])


def test_a_corrupt_weights_h5_file_is_named(env):
    path = env / "broken.weights.h5"
    path.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(ValueError) as info:
        _load(str(path))
    assert str(info.value).startswith(f"weights file {str(path)!r} is not a readable .weights.h5")
    assert _cache_state(env) == NOTHING_CACHED


def _config_json(architecture, classes, **pretrained_cfg):
    cfg = {"input_size": [3, 224, 224], "crop_pct": 0.95, "interpolation": "bicubic"}
    cfg.update(pretrained_cfg)
    return json.dumps(
        {"architecture": architecture, "num_classes": classes, "pretrained_cfg": cfg}
    ).encode()


# -- the real thing: timm's logits through the Hub path, torch unimportable ---------------

_CHILD = textwrap.dedent(
    """
    import json, os, sys

    class Block:  # torch and timm cannot be imported in this process
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "timm", "torchvision"):
                raise ModuleNotFoundError(f"No module named {name!r}")

    sys.meta_path.insert(0, Block())
    sys.path.insert(0, sys.argv[2])
    import keras
    import numpy as np
    import keras_coatnet as kc
    from keras_coatnet.preprocessing import eval_settings
    from hub_server import HubServer

    work = sys.argv[1]
    cases = json.load(open(os.path.join(work, "cases.json")))
    x = np.load(os.path.join(work, "x.npy"))

    built = []  # every functional model Keras constructs
    new = keras.Model.__new__
    def counting(cls, *args, **kwargs):
        if args or "inputs" in kwargs:
            built.append(cls)
        return new(cls, *args, **kwargs)
    keras.Model.__new__ = counting

    def build(case, **kwargs):
        built.clear()
        model = kc.create_model(case["model"], weights=case["weights"],
                                input_shape=x.shape[1:], classifier_activation=None, **kwargs)
        assert len(built) == 1, (case, kwargs, len(built))
        return model

    def run(case):
        model = build(case)
        settings = eval_settings(model)
        return np.asarray(model(x)), None if settings is None else settings.to_dict()

    out = {}
    with HubServer(os.path.join(work, "hub")) as server:
        os.environ["HF_ENDPOINT"] = server.endpoint
        for name, case in cases.items():
            out[name], settings = run(case)  # first load: download, check, map
            out[name + ".settings"] = json.dumps(settings)
            np.testing.assert_array_equal(run(case)[0], out[name])  # from the Hub's cache
        served = len(server.requests)
        # The one model of another head: the backbone loaded, the head fresh or absent.
        full = build(cases["rw"])
        backbone = build(cases["rw"], include_top=False)
        np.testing.assert_array_equal(backbone(x), kc.stage_features(full)(x)["S4"])
        tuned = build(cases["rw"], classes=3)
        assert tuned.output.shape[-1] == 3
        for layer in full.layers:
            if layer.weights and layer.name != "predictions":
                for a, b in zip(layer.get_weights(), tuned.get_layer(layer.name).get_weights()):
                    np.testing.assert_array_equal(a, b)

    os.environ["HF_HUB_OFFLINE"] = "1"  # server gone: the Hub's cache alone
    for name, case in cases.items():
        np.testing.assert_array_equal(run(case)[0], out[name])
    np.savez(os.path.join(work, "out.npz"), **out)
    print("requests", served, "torch" in sys.modules)
    """
)


@pytest.fixture(scope="module")
def timm_cases(tmp_path_factory):
    """Hub repos written from BatchNorm-randomised timm models, and timm's logits."""
    from safetensors.numpy import save_file

    # Not pytest.importorskip: torch must be imported through import_timm.
    torch, timm = import_timm_or_skip()
    from test_timm import _timm_model

    torch.set_num_threads(2)
    from timm.models.maxxvit import checkpoint_filter_fn

    work = tmp_path_factory.mktemp("pretrained")
    x = np.random.RandomState(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    np.save(work / "x.npy", x)

    def serve(repo_id, model, files=None):
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        path = work / "tmp.safetensors"
        save_file(state, str(path))
        write_repo(work / "hub", repo_id, {"model.safetensors": path.read_bytes(), **(files or {})})
        return path

    def logits(model, mean, std):
        small = timm.create_model(
            model.pretrained_cfg["architecture"], img_size=SIZE, num_classes=model.num_classes
        ).eval()
        small.load_state_dict(checkpoint_filter_fn(model.state_dict(), small))
        inputs = (x / 255.0 - np.array(mean, "float32")) / np.array(std, "float32")
        with torch.no_grad():
            return small(torch.from_numpy(inputs.transpose(0, 3, 1, 2))).numpy()

    cases, want = {}, {}
    half = (0.5, 0.5, 0.5)
    # A table-bias rw model at 224 (tables resized to 64 on load), its default tag.
    nano = _timm_model(torch, "coatnet_nano_rw_224")
    serve("timm/coatnet_nano_rw_224.sw_in1k", nano)
    cases["rw"] = {"model": "coatnet_nano_rw_224", "weights": "imagenet"}
    want["rw"] = logits(nano, half, half)
    # An rmlp model by its short tag.
    rmlp = _timm_model(torch, "coatnet_rmlp_nano_rw_224")
    local = serve("timm/coatnet_rmlp_nano_rw_224.sw_in1k", rmlp)
    cases["rmlp"] = {"model": "coatnet_rmlp_nano_rw_224", "weights": "sw_in1k"}
    want["rmlp"] = logits(rmlp, half, half)
    # The same checkpoint as a local file (no config.json beside it: the default tag's settings).
    os.replace(local, work / "model.safetensors")
    cases["local"] = {
        "model": "coatnet_rmlp_nano_rw_224",
        "weights": str(work / "model.safetensors"),
    }
    want["local"] = want["rmlp"]
    # An ImageNet-12k tag, 11821 classes with its head.
    in12k = _timm_model(torch, "coatnet_rmlp_1_rw2_224", num_classes=11821)
    serve("timm/coatnet_rmlp_1_rw2_224.sw_in12k", in12k)
    cases["in12k"] = {
        "model": "coatnet_rmlp_1_rw2_224",
        "weights": "coatnet_rmlp_1_rw2_224.sw_in12k",
    }
    want["in12k"] = logits(in12k, half, half)
    # A user's fine-tune on the Hub: its own classes and ImageNet statistics from config.json.
    tuned = _timm_model(torch, "coatnet_rmlp_nano_rw_224", num_classes=5)
    stats = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_pct": 0.875}
    config = _config_json("coatnet_rmlp_nano_rw_224", 5, **stats)
    serve("someone/coatnet-flowers", tuned, {"config.json": config})
    cases["hf"] = {"model": "coatnet_rmlp_nano_rw_224", "weights": "hf://someone/coatnet-flowers"}
    want["hf"] = logits(tuned, stats["mean"], stats["std"])
    (work / "cases.json").write_text(json.dumps(cases))
    return work, want


# Named as main b08ed0c named its converted entries (label, SHA-256, revision,
# converter 1), holding another checkpoint's weights.
OLD_ENTRY = "timm--coatnet_nano_rw_224.sw_in1k-0123456789abcdef-local-c1"
OLD_CACHE = (OLD_ENTRY + ".weights.h5", OLD_ENTRY + ".json")


def test_hub_weights_give_timms_logits_without_torch_then_load_from_cache(timm_cases, tmp_path):
    """One model per load (first, cached, offline, no head, another head), timm's logits."""
    work, want = timm_cases
    converted = work / "keras" / "keras_coatnet" / "converted"
    converted.mkdir(parents=True, exist_ok=True)
    from helpers import tiny_model

    tiny_model().save_weights(str(converted / OLD_CACHE[0]))
    (converted / OLD_CACHE[1]).write_text(json.dumps({"classes": 10, "converter": 1}))
    env = dict(os.environ, HF_HUB_CACHE=str(work / "hf"), KERAS_HOME=str(work / "keras"))
    env.pop("HF_HUB_OFFLINE", None)
    tests = os.path.dirname(__file__)
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(work), tests],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split()[-1] == "False"  # torch never loaded
    got = np.load(work / "out.npz")
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        # The parity bound (tests/test_timm.py): these loads go through the
        # Hub, the cache and the table resize, and must add nothing to it.
        _assert_matches(got[name], expected, LOGITS_BOUND, name)
    settings = {name: json.loads(str(got[name + ".settings"])) for name in want}
    assert settings["rw"]["crop_pct"] == 0.9 and settings["rw"]["mean"] == [0.5] * 3
    assert settings["hf"]["crop_pct"] == 0.875 and settings["hf"]["std"][0] == 0.229
    assert settings["local"] == settings["rmlp"]
    # An entry of the converted-weights cache that earlier code kept is never read
    # (the loads above matched timm with a wrong one in place) and nothing is written.
    assert sorted(os.listdir(work / "keras" / "keras_coatnet" / "converted")) == sorted(OLD_CACHE)


def test_hub_settings_are_read_when_called(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert hub.endpoint() == "http://127.0.0.1:9" and hub.offline()
    assert hub.cache_dir() == str(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub.offline()
