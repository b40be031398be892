"""torch and timm are optional: the core never imports them."""

import subprocess
import sys
import textwrap


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
