"""Lazy, guarded imports of the optional PyTorch reference (torch + timm).

Nothing in the core imports this module at import time; the converter and
the parity tests call `import_timm()` when they need the reference.
"""

from __future__ import annotations

import sys

INSTALL_HINT = (
    "the timm reference is an optional extra: pip install 'keras_coatnet[timm]' "
    "(torch==2.14.1, torchvision==0.29.1, timm==1.0.31; see the README's developer section)"
)


def import_timm():
    """Import and return `(torch, timm)`, or raise ImportError with the install hint.

    PyPI's torch pulls in triton, whose bundled LLVM segfaults the process when
    it loads after TensorFlow's. torch imports triton only to probe for GPU
    kernels (`torch.utils._triton.has_triton_package`), which CPU conversion
    never uses, so once TensorFlow is loaded the probe is made to find no
    triton. A process that imported triton before TensorFlow is left alone.
    """
    if "tensorflow" in sys.modules and "triton" not in sys.modules:
        sys.modules["triton"] = None  # `import triton` now raises ImportError
    try:
        import timm
        import torch
    except ImportError as error:
        raise ImportError(f"{error}; {INSTALL_HINT}") from error
    return torch, timm
