"""The benchmark's settings: defaults, the `--quick` and `--smoke` presets, checks.

Standard library only: the command line imports this to build its flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import os

from keras_coatnet._errors import at_least

DEFAULT_MODELS = ("coatnet_0_224:224", "coatnet_1_224:224", "coatnet_1_224:384")
QUICK_MODELS = ("coatnet_0_224:224",)
TRAIN_MODEL = "coatnet_0_224:224"
VARIANTS = ("timm", "predict", "graph", "xla", "savedmodel")
TRAIN_VARIANTS = ("timm", "train_on_batch", "train_on_batch_xla")
# `--smoke`: the smallest timm CoAtNet at 64x64, one round, every part of the
# benchmark once (both child processes) but the XLA variants, whose compiles
# would take most of the time; it checks an installation, its numbers mean little.
SMOKE_MODEL = "coatnet_pico_rw_224:64"
SMOKE_VARIANTS = ("predict", "graph", "savedmodel")
SMOKE_TRAIN_VARIANTS = ("train_on_batch",)
SPEC = "timm_name[:size[:b1,b2]]"


@dataclasses.dataclass(frozen=True)
class Case:
    """One timm architecture at one input size, timed at each batch size."""

    name: str
    size: int
    batches: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything a run needs, checked (`resolve` builds it from the flags)."""

    cases: tuple[Case, ...]  # inference; empty with --no-inference
    train: Case | None  # the training step (one batch); None with --no-train
    repeats: int = 10
    warmup: int = 2
    train_repeats: int = 8
    budget: float = 120.0
    wait_idle: float = 0.0
    retries: int = 0
    busy: float = 0.1
    threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    inter_threads: int = 0
    variants: tuple[str, ...] = VARIANTS[1:]
    train_variants: tuple[str, ...] = TRAIN_VARIANTS[1:]
    timm_own_process: bool = True
    json: str | None = None
    sgemm_repeats: int = 10  # timed matmuls per library for the sgemm peak


def parse_spec(spec: str, default_batches, flag: str = "--models", names=None) -> Case:
    """`timm_name[:size[:b1,b2]]` -> Case; the size defaults to the name's suffix (or 224)."""
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0]:
        raise ValueError(f"{flag}: {spec!r} is not {SPEC}")
    name = parts[0]
    if names is not None and name not in names:
        closest = difflib.get_close_matches(name, names, n=3, cutoff=0.0)
        raise ValueError(
            f"{flag}: unknown timm model {name!r}; closest: {', '.join(closest)} "
            f"(the timm CoAtNets keras_coatnet converts)"
        )
    if len(parts) > 1 and parts[1]:
        size = _int(parts[1], f"{flag} size in {spec!r}")
    else:
        suffix = name.rsplit("_", 1)[-1]
        size = int(suffix) if suffix.isdigit() else 224
    if size < 32 or size % 32:
        raise ValueError(f"{flag}: the size must be a positive multiple of 32, received: {spec!r}")
    batches = _batches(parts[2], f"{flag} batches in {spec!r}") if len(parts) > 2 else None
    return Case(name, size, batches or tuple(default_batches))


def resolve(args, names=None) -> Options:
    """Options from the parsed flags (an `argparse.Namespace`); ValueError names a bad one.

    `names`: the timm architectures a model spec may name (None: any).
    """
    preset = "smoke" if args.smoke else "quick" if args.quick else None
    smoke = preset == "smoke"
    for flag, value, low in (
        ("--repeats", args.repeats, 1),
        ("--warmup", args.warmup, 1),
        ("--train-batch", args.train_batch, 1),
        ("--train-repeats", args.train_repeats, 1),
        ("--threads", args.threads, 1),
        ("--inter-threads", args.inter_threads, 0),
        ("--retries", args.retries, 0),
    ):
        if value is not None:
            at_least(flag, value, low)
    for flag, value in (
        ("--budget", args.budget),
        ("--wait-idle", args.wait_idle),
        ("--busy", args.busy),
    ):
        at_least(flag, value, 0)
    if args.no_train and args.no_inference:
        raise ValueError("--no-train and --no-inference leave nothing to measure")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise ValueError(f"--json: the folder of {args.json!r} does not exist")

    batches = _batches(args.batches, "--batches") if args.batches else None
    batches = batches or ((1,) if preset else (1, 8))
    small = {"smoke": 1, "quick": 2}.get(preset)
    if smoke:
        models, train_model = (SMOKE_MODEL,), SMOKE_MODEL
    else:
        models = QUICK_MODELS if preset == "quick" else DEFAULT_MODELS
        train_model = TRAIN_MODEL
    cases = tuple(parse_spec(s, batches, "--models", names) for s in (args.models or models))
    train = parse_spec(args.train_model or train_model, batches, "--train-model", names)
    train_batch = args.train_batch or small or 8
    return Options(
        cases=() if args.no_inference else cases,
        train=None if args.no_train else Case(train.name, train.size, (train_batch,)),
        repeats=args.repeats or small or 10,
        warmup=args.warmup or (1 if preset else 2),
        train_repeats=args.train_repeats or small or 8,
        budget=args.budget,
        wait_idle=args.wait_idle,
        retries=args.retries,
        busy=args.busy,
        threads=args.threads,
        inter_threads=args.inter_threads,
        variants=_choices(args.variants, VARIANTS[1:], "--variants", smoke, SMOKE_VARIANTS),
        train_variants=_choices(
            args.train_variants, TRAIN_VARIANTS[1:], "--train-variants", smoke, SMOKE_TRAIN_VARIANTS
        ),
        timm_own_process=args.timm_own_process,
        json=args.json,
        sgemm_repeats=2 if smoke else 10,
    )


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what}: not a whole number: {text!r}") from None


def _batches(text: str, what: str) -> tuple[int, ...]:
    batches = tuple(_int(b.strip(), what) for b in text.split(",") if b.strip())
    if not batches or min(batches) < 1:
        raise ValueError(f"{what}: batch sizes must be at least 1, received: {text!r}")
    return batches


def _choices(text, allowed, flag: str, smoke: bool, smoke_default) -> tuple[str, ...]:
    """The comma list `text` (None: all of `allowed`, or `smoke_default` with --smoke)."""
    if text is None:
        return tuple(smoke_default if smoke else allowed)
    chosen = tuple(v.strip() for v in text.split(",") if v.strip())
    for value in chosen:
        if value not in allowed:
            raise ValueError(f"{flag}: unknown {value!r}; choose from {', '.join(allowed)}")
    return chosen
