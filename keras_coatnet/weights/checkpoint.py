"""timm checkpoints (safetensors) read as NumPy and converted to a cached `.weights.h5`.

No torch: `safetensors.numpy` reads the file, `keras_coatnet.convert`'s
`load_timm_state_dict` maps timm's names onto a Keras model at the
checkpoint's own image size, and the model's weights are saved once. The
cache entry is keyed on the source file's SHA-256, the Hub revision where
known and `CONVERTER_VERSION`, so an upstream re-upload or a converter fix
never serves stale weights. Entries are written to temporary names and
renamed into place, the weights file last: a failed or interrupted
conversion leaves no entry.
"""

from __future__ import annotations

import json
import os
import uuid

import numpy as np

from keras_coatnet._errors import first_line

# Bump whenever keras_coatnet.convert maps a tensor differently: old cache
# entries are then ignored.
CONVERTER_VERSION = 1
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


def head_classes(state: dict, name: str) -> int:
    """Classes of a timm CoAtNet checkpoint's head."""
    if HEAD_KEY not in state or np.ndim(state[HEAD_KEY]) != 2:
        raise ValueError(
            f"{name} has no {HEAD_KEY!r} tensor: not a timm CoAtNet checkpoint with a "
            "classifier head"
        )
    return int(state[HEAD_KEY].shape[0])


def cache_root() -> str:
    """`$KERAS_HOME/keras_coatnet/converted` (read now), else `~/.keras/...`."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(os.path.expanduser(home), "keras_coatnet", "converted")


def entry_name(label: str, sha256: str, revision: str | None) -> str:
    """The cache entry's base name: source label, content hash, revision, converter."""
    label = "".join(c if c.isalnum() or c in "._-" else "-" for c in label)
    return f"{label}-{sha256[:16]}-{(revision or 'local')[:12]}-c{CONVERTER_VERSION}"


def cached(name: str) -> tuple[str, dict] | None:
    """`(weights path, metadata)` of a complete cache entry, or `None`."""
    base = os.path.join(cache_root(), name)
    path = base + ".weights.h5"
    if not os.path.isfile(path):
        return None
    try:
        with open(base + ".json", encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return path, meta


def convert(state: dict, config, image_size: int, name: str, meta: dict, source: str) -> str:
    """Convert `state` for `config` at `image_size`, store it as cache entry `name`.

    Returns:
        The path of the converted `.weights.h5` file.

    Raises:
        ValueError: If the checkpoint does not fit the architecture (the
            first missing, left-over or mis-shaped tensor is named); nothing
            is written then.
    """
    from keras_coatnet.convert import load_timm_state_dict
    from keras_coatnet.model import CoAtNet

    classes = head_classes(state, source)
    model = CoAtNet(
        config,
        input_shape=(image_size, image_size, 3),
        classes=classes,
        classifier_activation=None,
    )
    try:
        load_timm_state_dict(model, state)
    except ValueError as error:
        raise ValueError(f"{source} does not fit {config.name}: {error}") from None
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    base = os.path.join(root, name)
    tmp = os.path.join(root, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        model.save_weights(tmp + ".weights.h5")
        with open(tmp + ".json", "w", encoding="utf-8") as f:
            json.dump({**meta, "classes": classes, "converter": CONVERTER_VERSION}, f, indent=1)
        os.replace(tmp + ".json", base + ".json")
        os.replace(tmp + ".weights.h5", base + ".weights.h5")  # last: marks the entry complete
    finally:
        for suffix in (".weights.h5", ".json"):
            if os.path.exists(tmp + suffix):
                os.remove(tmp + suffix)
    return base + ".weights.h5"
