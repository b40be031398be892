"""One-line error reports and exit statuses, shared by every command-line entry point.

Exit statuses: 0 ok, 2 bad invocation or input the library rejected
(`ValueError`), 1 a failure while working (I/O, an image that does not
decode, memory, anything unexpected), 130 interrupted. An exception may carry
its own status as `exit_status`. `--verbose` adds the traceback.
"""

from __future__ import annotations

import re
import sys
import traceback

USAGE, FAILURE, INTERRUPTED = 2, 1, 130


def first_line(error) -> str:
    """The first line of an error's message, without TensorFlow's op decorations."""
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"^\{\{[^}]*\}\}\s*", "", text.strip())  # {{function_node ...}}
    text = re.sub(r"\s*\[Op:\w+\]( name: ?\S*)?$", "", text)
    return text.splitlines()[0] if text else type(error).__name__


def at_least(flag: str, value, low=1):
    """`value`, or a ValueError naming the flag: `FLAG must be at least LOW, received: VALUE`."""
    if value < low:
        raise ValueError(f"{flag} must be at least {low}, received: {value}")
    return value


def exit_status(error: BaseException) -> int:
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED
    explicit = getattr(error, "exit_status", None)
    if isinstance(explicit, int):
        return explicit
    return USAGE if isinstance(error, ValueError) else FAILURE


def report(prog: str, error: BaseException, verbose: bool = False) -> int:
    """Print `error` as one line on stderr (the traceback first with `verbose`);
    returns the exit status."""
    code = exit_status(error)
    if verbose:
        traceback.print_exception(error)
    if code == INTERRUPTED:
        print(f"{prog}: interrupted", file=sys.stderr)
        return code
    message = first_line(error)
    known = isinstance(error, (OSError, ImportError, ValueError)) or hasattr(error, "exit_status")
    if code == FAILURE and not known:
        message = f"{type(error).__name__}: {message}"  # MemoryError, TF's errors, the unexpected
    hint = " (--verbose shows the traceback)" if code == FAILURE and not verbose else ""
    print(f"{prog}: error: {' '.join(message.split())}{hint}", file=sys.stderr)
    return code
