"""torch and timm are optional: the core never imports them, CI never skips them."""

import os
import subprocess
import sys
import textwrap

TESTS = os.path.dirname(os.path.abspath(__file__))


def _run(code):
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_core_works_where_torch_and_timm_cannot_be_imported():
    out = _run(
        """
        import sys

        class Block:  # as if torch and timm were not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "timm", "torchvision"):
                    raise ModuleNotFoundError(f"No module named {name!r}")

        sys.meta_path.insert(0, Block())
        import numpy as np
        import keras_coatnet as kc

        model = kc.create_model("coatnet_rmlp_nano_rw_224", input_shape=(64, 64, 3), classes=3)
        probs = np.asarray(model(np.zeros((1, 64, 64, 3), "float32")))
        assert abs(probs.sum() - 1) < 1e-5
        try:
            kc.convert.from_timm("coatnet_0_224")
        except ImportError as error:
            print("import error:", error)
        """
    )
    assert "import error:" in out and "pip install 'keras_coatnet[timm]'" in out


def test_importing_the_package_does_not_load_torch():
    out = _run(
        """
        import sys
        import keras_coatnet
        print(sorted(m for m in ("torch", "timm", "triton") if m in sys.modules))
        """
    )
    assert out.strip().splitlines()[-1] == "[]"


# A test module guarded both ways `helpers` offers, and a plugin that makes
# `import timm` fail as if timm were not installed (torch stays importable).
GUARDED = """
from helpers import import_timm_or_skip, requires_timm, timm_extra  # noqa: F401


@requires_timm
def test_marked():
    pass


def test_called():
    import_timm_or_skip()
"""
BLOCK_TIMM = """
import sys


class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "timm":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, Block())
"""


def test_a_missing_timm_extra_fails_under_ci_and_skips_elsewhere(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the project's settings
    (tmp_path / "test_guarded.py").write_text(GUARDED)
    (tmp_path / "block_timm.py").write_text(BLOCK_TIMM)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path), TESTS] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"

    def pytest_run(**extra):
        command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
        command += ["-p", "block_timm", str(tmp_path / "test_guarded.py")]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**env, **extra}
        )
        return result.returncode, result.stdout + result.stderr

    code, out = pytest_run(CI="true")
    assert code == 1, out[-3000:]
    assert "CI is set and the timm extra is missing: timm (" in out, out[-3000:]
    assert "missing: torch" not in out and "skipped" not in out
    assert "1 failed, 1 error" in out, out[-3000:]  # the call fails; the fixture errors

    code, out = pytest_run()  # no CI: the same tests skip, naming the package
    assert code == 0, out[-3000:]
    assert "2 skipped" in out and "the timm extra is missing: timm (" in out, out[-3000:]
    assert "CI is set" not in out
