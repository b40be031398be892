"""The `coatnet` console script: starts `keras_coatnet` lazily, then runs the command.

`import keras_coatnet` imports Keras and registers every layer, in every
process, so that a saved `.keras` file loads right after it. The package's
own programs must start faster than that (`coatnet --help`, `models` and
usage errors never wait for TensorFlow), so this module, which lives outside
the package, sets the one switch that makes the package bind its names on
first use instead (`keras_coatnet.__init__` reads `LAZY` here), before the
package is imported. Only the package's own programs set it: this launcher,
and the repository's CPU-serving benchmark (`benchmarks/cpu_serving.py`),
whose timm workers must run without TensorFlow.

    coatnet ...                      # the console script: main()
    python -m keras_coatnet_cli ...  # the same
    python -c "import keras_coatnet_cli as c; c.run_module('keras_coatnet.bench.workers')" ...
"""

from __future__ import annotations

import runpy
import sys

LAZY = False


def start_lazily() -> None:
    """Make the next `import keras_coatnet` bind its public names on first use."""
    global LAZY
    if "keras_coatnet" in sys.modules and not LAZY:
        return  # already imported eagerly: nothing left to speed up
    LAZY = True


def main() -> int:
    """The `coatnet` command."""
    start_lazily()
    from keras_coatnet.cli import main as run

    return run()


def run_module(name: str) -> None:
    """Run module `name` as `__main__` (`python -m name`) with the lazy start."""
    start_lazily()
    runpy.run_module(name, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    # `python -m keras_coatnet_cli` runs this file as `__main__`; the package reads
    # the switch from the module named `keras_coatnet_cli`, so set it there.
    import keras_coatnet_cli

    sys.exit(keras_coatnet_cli.main())
