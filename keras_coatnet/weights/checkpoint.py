"""timm checkpoints (safetensors) read as NumPy: their head, their tensors, pickles refused.

No torch: `safetensors.numpy` reads the file; `weights.timm_mapping` maps
timm's names onto the model being built. Nothing is converted ahead or
cached beside the Hub's own cache: mapping the safetensors again is faster
than loading a converted `.weights.h5` was (docs/WEIGHTS.md has the figures).
"""

from __future__ import annotations

import numpy as np

from keras_coatnet._errors import first_line

# The version of the timm name mapping. It keyed the converted-weights cache
# that earlier releases kept under `$KERAS_HOME/keras_coatnet/converted`; that
# cache is no longer read or written (its entries are ignored).
CONVERTER_VERSION = 2
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl")
HEAD_KEY = "head.fc.weight"
_SAFE_SAVE = (
    'python -c "import torch; from safetensors.torch import save_file; '
    "save_file(torch.load('FILE', map_location='cpu', weights_only=True), 'model.safetensors')\""
)


def pickle_refusal(name: str) -> str:
    """The message for a PyTorch pickle checkpoint: why not, and how to convert it."""
    return (
        f"{name} is a PyTorch pickle, which can run code when loaded; keras_coatnet reads "
        f"only safetensors. Convert it once where torch is installed: {_SAFE_SAVE} (a "
        "state dict saved by timm), then pass the model.safetensors file"
    )


def _is_pickle(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # torch zip / raw pickle


def read_state(path: str, name: str | None = None) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file as NumPy arrays.

    Raises:
        ValueError: For a pickle, or a file that is not safetensors (named).
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    name = name or repr(path)
    if _is_pickle(path):
        raise ValueError(pickle_refusal(name))
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        raise ValueError(
            f"{name} is not a readable safetensors file: {first_line(error)}"
        ) from None


def head_classes_of_file(path: str, name: str | None = None) -> int:
    """Classes of a timm safetensors checkpoint's head, read from its header alone.

    Raises:
        ValueError: For a pickle, a file that is not safetensors, or one
            without a classifier head (named).
    """
    from safetensors import SafetensorError, safe_open

    name = name or repr(path)
    if _is_pickle(path):
        raise ValueError(pickle_refusal(name))
    try:
        with safe_open(path, framework="numpy") as f:
            shape = f.get_slice(HEAD_KEY).get_shape() if HEAD_KEY in f.keys() else None
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        raise ValueError(
            f"{name} is not a readable safetensors file: {first_line(error)}"
        ) from None
    if shape is None or len(shape) != 2:
        raise ValueError(
            f"{name} has no {HEAD_KEY!r} tensor: not a timm CoAtNet checkpoint with a "
            "classifier head"
        )
    return int(shape[0])
