"""Every Python example in the README runs.

The pretrained example runs against a local server with the Hub's layout
(`hub_server.py`) serving a BatchNorm-randomised timm checkpoint: the real
download, check, conversion and prediction, with no network.
"""

import os
import re

import numpy as np
import pytest
from helpers import import_timm_or_skip
from hub_server import HubServer, write_repo

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _python_blocks():
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """`timm/<tag>` of every tag a block names, served on 127.0.0.1."""
    torch, _ = import_timm_or_skip()
    from safetensors.numpy import save_file
    from test_timm import _timm_model

    model = _timm_model(torch, "coatnet_0_rw_224")
    path = tmp_path / "model.safetensors"
    save_file({k: v.numpy() for k, v in model.state_dict().items()}, str(path))
    write_repo(tmp_path / "hub", "timm/coatnet_0_rw_224.sw_in1k", {path.name: path.read_bytes()})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with HubServer(tmp_path / "hub") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_example_runs(index, capsys, request):
    block = _python_blocks()[index]
    if 'weights="imagenet"' in block:
        server = request.getfixturevalue("local_hub")
    exec(compile(block, f"README block {index}", "exec"), {})
    printed = capsys.readouterr().out
    # Printed results quoted in the README are what the code prints.
    for claim in re.findall(r"print\(.*?\)\s+# (.+)", block):
        assert claim.strip() in printed
    if 'weights="imagenet"' in block:
        assert ("GET", "/timm/coatnet_0_rw_224.sw_in1k/resolve/main/model.safetensors") in (
            server.requests
        )
        lines = printed.strip().splitlines()
        probabilities = [float(line.split()[0]) for line in lines]
        assert len(lines) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert np.all(np.array(probabilities) > 0)


def test_readme_has_python_examples():
    assert len(_python_blocks()) >= 3
