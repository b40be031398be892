"""timm checkpoints (safetensors) read as NumPy: their head, their tensors, pickles refused.

No torch: `safetensors` checks the file and reads its head's shape when it is
resolved; `TensorFile` reads its tensors one at a time; `weights.timm_mapping`
maps timm's names onto the model being built. Nothing is converted ahead or
cached beside the Hub's own cache: mapping the safetensors again is faster
than loading a converted `.weights.h5` was (docs/WEIGHTS.md has the figures).
"""

from __future__ import annotations

import json
import os
import struct

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


# safetensors dtype names -> NumPy (the float and integer types a timm checkpoint holds).
_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


class TensorFile:
    """A safetensors file's tensors, each read on demand with plain reads.

    `safetensors.numpy` maps the file into memory, so every tensor read
    leaves its pages in the process's resident set until the map is closed:
    a load's peak would hold the whole checkpoint. Here each tensor is read
    into its own array (`os.pread`) and nothing else stays. The format is
    the documented one: an 8-byte little-endian header length, a JSON header
    `{name: {dtype, shape, data_offsets}}`, then the data. Use as a context
    manager; the file was checked with `safetensors` itself when it was
    resolved (`head_classes_of_file`), and offsets are checked again here.
    """

    def __init__(self, path: str, name: str | None = None):
        self.path, self.name = path, name or repr(path)
        self._fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(self._fd).st_size
            (length,) = struct.unpack("<Q", os.pread(self._fd, 8, 0))
            header = json.loads(os.pread(self._fd, length, 8))
            header.pop("__metadata__", None)
            self._start = 8 + length
            for key, info in header.items():
                begin, end = info["data_offsets"]
                count = int(np.prod(info["shape"], dtype=np.int64))
                dtype = _DTYPES.get(info["dtype"])
                if dtype is None:
                    raise ValueError(f"tensor {key!r} has dtype {info['dtype']}, not readable")
                if not 0 <= begin <= end <= size - self._start or end - begin != count * (
                    np.dtype(dtype).itemsize
                ):
                    raise ValueError(f"tensor {key!r} has data offsets outside the file")
        except (struct.error, ValueError, KeyError, TypeError, OSError) as error:
            os.close(self._fd)
            raise ValueError(
                f"{self.name} is not a readable safetensors file: {first_line(error)}"
            ) from None
        self._header = header

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self._fd)

    def keys(self):
        return self._header.keys()

    def shape(self, key: str) -> tuple:
        return tuple(self._header[key]["shape"])

    def read(self, key: str) -> np.ndarray:
        info = self._header[key]
        begin, end = info["data_offsets"]
        data = os.pread(self._fd, end - begin, self._start + begin)
        return np.frombuffer(data, dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
