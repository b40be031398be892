"""What every command shares: the error type, the parser class, progress, tables.

Nothing here imports TensorFlow or JAX: `coatnet --help`, `coatnet models`
and every bad invocation finish without them. A command that needs the
framework says so (`framework=True` in its parser defaults) and `main`
imports it once, quietly, before running it (`import_framework`).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import sys
import tempfile
import time

from keras_coatnet.config import check_image_size

PROG = "coatnet"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
MAC_UNITS = ("", "K", "M", "G", "T")


class CLIError(Exception):
    """A failure reported as one line on stderr with exit status `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = self.exit_status = code


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_command(subparsers, name: str, help: str, parents, framework: bool = True, **kwargs):
    """A subcommand parser; `framework`: whether running it needs Keras (and so TF or JAX)."""
    parser = subparsers.add_parser(name, help=help, description=help, parents=parents, **kwargs)
    parser.set_defaults(framework=framework)
    return parser


# ----------------------------------------------------------------------------- framework


def import_framework(verbose: bool) -> None:
    """Import Keras (and with it TensorFlow or JAX) with its start-up logging turned down.

    TensorFlow's C++ start-up lines (oneDNN, CUDA, CPU features) are written
    to the stderr file descriptor before its log level applies, so they are
    caught in a temporary file: shown if the import fails, dropped otherwise.
    `--verbose` leaves everything as it is.
    """
    if verbose or "keras" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _captured_stderr() as captured:
        try:
            import keras  # noqa: F401
        except BaseException:
            captured.replay = True
            raise
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # JAX without absl
        pass


@contextlib.contextmanager
def _captured_stderr():
    class Captured:
        replay = False

    captured = Captured()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (pytest capture)
        yield captured
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            if captured.replay:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))
                sys.stderr.flush()


# ----------------------------------------------------------------------------- models


def closest(name: str, choices, n: int = 3) -> list[str]:
    """The `n` names of `choices` most like `name` (always some, however far)."""
    from keras_coatnet.naming import model_key

    key = model_key(name)
    scored = sorted(
        choices, key=lambda c: -difflib.SequenceMatcher(None, key, model_key(c)).ratio()
    )
    return scored[:n]


def config(name: str):
    """The config of `name`, or a CLIError naming the closest valid names."""
    from keras_coatnet.variants import CONFIGS, get_config

    try:
        return get_config(name)
    except ValueError as error:
        *first, last = closest(name, sorted(CONFIGS))
        raise CLIError(
            f"unknown model {name!r}; did you mean {', '.join(first)} or {last}? "
            f"(`{PROG} models` lists all {len(CONFIGS)})"
        ) from error


def image_size(size, config) -> int:
    if size is None:
        from keras_coatnet.weights.registry import eval_defaults

        return eval_defaults(config.name)[1]
    return check_image_size(size)


# ----------------------------------------------------------------------------- output


def interactive(quiet: bool) -> bool:
    """Progress only for a person watching: not with --quiet, not in a pipeline."""
    return not quiet and sys.stdout.isatty() and sys.stderr.isatty()


class Progress:
    """A one-line progress bar on stderr; does nothing when not `enabled`."""

    def __init__(self, total: int, label: str, enabled: bool, stream=None):
        self.total, self.label, self.enabled = max(total, 1), label, enabled
        self.stream = stream or sys.stderr
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0
        self.drawn = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def advance(self, n: int = 1, note: str = ""):
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.1 or self.done >= self.total):
            self.last = now
            filled = int(30 * min(self.done / self.total, 1.0))
            bar = "#" * filled + "-" * (30 - filled)
            self.stream.write(
                f"\r{self.label} [{bar}] {self.done}/{self.total} "
                f"{now - self.start:.0f}s {note}\033[K"
            )
            self.stream.flush()
            self.drawn = True

    def close(self):
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False


def human(count: float, units=("", "K", "M", "B")) -> str:
    for unit in units[:-1]:
        if abs(count) < 1000:
            return f"{count:.2f}{unit}" if unit else f"{count:.0f}"
        count /= 1000
    return f"{count:.3f}{units[-1]}"


def table(header, rows, right=()) -> str:
    """Left-aligned text columns; the column indices in `right` are right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row):
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])
