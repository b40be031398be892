"""Loading a resolved `weights=` file into the one model being built.

`resolve()` turned the argument into data (`ResolvedWeights`); this module
puts that data into a built model, whatever its head, as timm's
`load_pretrained` does: a file whose head fits loads whole; otherwise the
classifier keeps its fresh initialisation (another class count) or the head
is left aside (`include_top=False`). Either way every other variable is
checked before the first one is assigned.
"""

from __future__ import annotations

from keras_coatnet.weights import keras_file
from keras_coatnet.weights.resolver import ResolvedWeights
from keras_coatnet.weights.timm_mapping import load_timm_file


def head_fits(resolved: ResolvedWeights, include_top: bool, classes: int | None) -> bool:
    """Whether the file's head loads as it is (same classes), else it is skipped.

    Raises:
        ValueError: When the model wants a classifier and the file has no head.
    """
    if include_top and resolved.classes is None:
        raise ValueError(
            f"weights {resolved.source} have no classifier head; use include_top=False"
        )
    return resolved.classes == classes if include_top else resolved.classes is None


def load(model, resolved: ResolvedWeights, include_top: bool, classes, architecture: str) -> None:
    """Load `resolved` into `model`, built with `include_top` and `classes`.

    Args:
        model: The model `keras_coatnet.CoAtNet` built.
        resolved: The `weights=` argument, resolved.
        include_top: Whether the model has the classification head.
        classes: The classes of its classifier (ignored without a head).
        architecture: The config's name, for messages.

    Raises:
        ValueError: Naming the first variable or tensor that does not fit;
            nothing is assigned then.
    """
    skip_head = not head_fits(resolved, include_top, classes)
    if resolved.format == "keras":
        keras_file.load_weights(model, resolved.path, resolved.structure, skip_head=skip_head)
        return
    try:
        load_timm_file(model, resolved.path, skip_head=skip_head)
    except ValueError as error:
        raise ValueError(f"{resolved.source} does not fit {architecture}: {error}") from None
