"""What a training run is asked to do: `RunConfig`, and the recipe presets it starts from.

Pure Python, no Keras: the `coatnet train` flags are built from these
definitions and checked by `RunConfig` before any framework is imported.
"""

from __future__ import annotations

import dataclasses
import numbers

from keras_coatnet._errors import at_least
from keras_coatnet.config import check_image_size
from keras_coatnet.variants import CONFIGS, get_config

# --mixed-precision -> the Keras dtype policy.
PRECISIONS = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16", "off": "float32"}
JIT = ("auto", "on", "off")
DISTRIBUTIONS = ("none", "data-parallel", "model-parallel")

# Read by keras.distribution.initialize when its arguments are None; the
# --coordinator-address, --num-processes and --process-id flags fall back to them.
ENV_COORDINATOR = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters; defaults are the paper's ImageNet-1K recipe.

    Paper defaults: arXiv 2106.04803, Table 7, ImageNet-1K at 224.
    """

    epochs: int = 300
    batch_size: int = 4096
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 10_000
    label_smoothing: float = 0.1
    randaugment_ops: int = 2
    randaugment_magnitude: int = 15  # of 30, Keras's factor = magnitude / 30
    mixup_alpha: float = 0.8
    cutmix: bool = False
    drop_path_rate: float = 0.2  # CoAtNet-0; 0.3 / 0.5 / 0.7 for CoAtNet-1 / 2 / 3
    ema_momentum: float | None = None
    grad_clip: float | None = 1.0

    def replace(self, **changes) -> Recipe:
        return dataclasses.replace(self, **changes)


PAPER = Recipe()
# The small-data preset of the README command (the digits).
DIGITS = Recipe(
    epochs=30,
    batch_size=64,
    learning_rate=2e-3,
    weight_decay=0.05,
    warmup_steps=50,
    label_smoothing=0.1,
    randaugment_ops=0,
    mixup_alpha=0.0,
    drop_path_rate=0.1,
)

# RunConfig field -> the Recipe field it overrides when not None.
RECIPE_OVERRIDES = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "weight_decay": "weight_decay",
    "warmup_steps": "warmup_steps",
    "label_smoothing": "label_smoothing",
    "randaugment_ops": "randaugment_ops",
    "randaugment_magnitude": "randaugment_magnitude",
    "mixup": "mixup_alpha",
    "cutmix": "cutmix",
    "drop_path": "drop_path_rate",
    "ema": "ema_momentum",
}

# Integer fields: (lowest, highest or None).
_INTS = {
    "image_size": (32, None),
    "epochs": (1, None),
    "batch_size": (1, None),
    "warmup_steps": (0, None),
    "randaugment_ops": (0, None),
    "randaugment_magnitude": (0, 30),
    "num_processes": (1, None),
    "process_id": (0, None),
    "model_axis": (1, None),
    "seed": (0, 2**32 - 1),  # NumPy's seed range
    "steps_per_epoch": (1, None),
}
# Number fields: (lowest, highest, the interval's brackets); no highest: at least the lowest.
_NUMBERS = {
    "lr": (0, None, ""),
    "weight_decay": (0, None, ""),
    "label_smoothing": (0, 1, "[]"),
    "mixup": (0, None, ""),
    "drop_path": (0, 1, "[)"),  # a rate of 1 would drop every residual branch
    "ema": (0, 1, "()"),
}
_CHOICES = {"mixed_precision": tuple(PRECISIONS), "jit": JIT, "distribution": DISTRIBUTIONS}


def flag(field: str) -> str:
    """The train command's flag of a RunConfig field: `batch_size` -> `--batch-size`."""
    return "--" + field.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run: data, model, recipe overrides, placement, output.

    Every field is a flag of `coatnet train` with the same name
    (`batch_size` is `--batch-size`) and the same default; see
    `coatnet train --help` for each one's meaning. Errors name the flag.

    The recipe fields (`epochs` .. `ema`) default to `None`: the paper's
    ImageNet-1K value when a `dataset` is named, the digits preset when not
    (`recipe` gives the values the run uses). With no `dataset` the run
    trains `coatnet-digits` on scikit-learn's digits.

    Raises:
        ValueError: One line naming the bad value and what is allowed.
    """

    # data and model
    dataset: str | None = None
    data_dir: str | None = None
    manual_dir: str | None = None
    model: str | None = None
    image_size: int | None = None
    weights: str | None = None
    # recipe overrides
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    label_smoothing: float | None = None
    randaugment_ops: int | None = None
    randaugment_magnitude: int | None = None
    mixup: float | None = None
    cutmix: bool | None = None
    drop_path: float | None = None
    ema: float | None = None
    # compute and placement
    mixed_precision: str = "off"
    jit: str = "auto"
    remat: bool = False
    tpu: str | None = None
    distribution: str = "none"
    model_axis: int | None = None
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    # run
    output_dir: str = "runs/train"
    seed: int = 0
    steps_per_epoch: int | None = None
    quiet: bool = False

    def __post_init__(self):
        for name, (low, high) in _INTS.items():
            _check_int(name, getattr(self, name), low, high)
        for name, (low, high, brackets) in _NUMBERS.items():
            _check_number(name, getattr(self, name), low, high, brackets)
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(
                    f"{flag(name)} must be one of {', '.join(choices)}, received: {value!r}"
                )
        for name in ("cutmix", "remat", "quiet"):
            value = getattr(self, name)
            if not (isinstance(value, bool) or (value is None and name == "cutmix")):
                raise ValueError(f"{flag(name)} must be True or False, received: {value!r}")
        if self.image_size is not None:
            check_image_size(self.image_size)
        if self.model_axis is not None and self.distribution != "model-parallel":
            raise ValueError(
                f"--model-axis {self.model_axis} needs --distribution model-parallel, "
                f"received: --distribution {self.distribution}"
            )
        if self.dataset is None and (self.data_dir or self.manual_dir):
            raise ValueError("--data-dir and --manual-dir need --dataset")
        if not self.output_dir:
            raise ValueError(f"--output-dir must name a directory, received: {self.output_dir!r}")
        try:
            get_config(self.model_name)
        except ValueError:
            known = ", ".join(sorted(CONFIGS))
            raise ValueError(f"--model must be one of {known}, received: {self.model!r}") from None

    @property
    def model_name(self) -> str:
        """The variant trained: `model`, else coatnet-digits (no dataset) or coatnet-0."""
        return self.model or ("coatnet-digits" if self.dataset is None else "coatnet-0")

    @property
    def recipe(self) -> Recipe:
        """The preset (digits without a dataset, else the paper's) with this run's overrides."""
        base = DIGITS if self.dataset is None else PAPER
        changes = {to: getattr(self, name) for name, to in RECIPE_OVERRIDES.items()}
        return base.replace(**{k: v for k, v in changes.items() if v is not None})

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)


def _check_int(name, value, low, high):
    if value is None and name != "seed":
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ValueError(f"{flag(name)} must be an integer, received: {value!r}")
    at_least(flag(name), value, low)
    if high is not None and value > high:
        raise ValueError(f"{flag(name)} must be at most {high}, received: {value}")


def _check_number(name, value, low, high, brackets):
    if value is None:
        return
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"{flag(name)} must be a number, received: {value!r}")
    if high is None:
        ok, allowed = value >= low, f"at least {low}"
    else:
        above = value >= low if brackets[0] == "[" else value > low
        below = value <= high if brackets[1] == "]" else value < high
        ok, allowed = above and below, f"in {brackets[0]}{low}, {high}{brackets[1]}"
    if not ok:  # NaN too
        raise ValueError(f"{flag(name)} must be {allowed}, received: {value}")
