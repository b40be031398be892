"""How the package imports: no cycle among its modules, the same `import keras_coatnet` everywhere.

The import graph is read from the source (every `import` statement, at any
depth, except under `if TYPE_CHECKING:`): an edge per statement, to the
module it names. `from keras_coatnet.x import y` goes to `keras_coatnet.x.y`
when that is a module, else to `keras_coatnet.x`, so a submodule that takes a
constant from its own package's `__init__` is a cycle whenever that `__init__`
imports the submodule, even lazily inside a function. A module is not
counted as importing its parent packages (their `__init__` runs first, but
that alone would make every lazily imported submodule a cycle).
"""

from __future__ import annotations

import ast
import itertools
import os
import re
import subprocess
import sys

import numpy as np
from helpers import tiny_model

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
PACKAGE = "keras_coatnet"
LAUNCHER = "keras_coatnet_cli.py"
FRAMEWORKS = ("tensorflow", "keras", "jax", "torch")


# ----------------------------------------------------------------------------- the scanner


def _modules(root: str, package: str = PACKAGE) -> dict[str, str]:
    """Dotted module name -> file, for every .py under `root/package` and the launcher."""
    found = {}
    for folder, _, files in os.walk(os.path.join(root, package)):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    launcher = os.path.join(root, LAUNCHER)
    if os.path.isfile(launcher):
        found[LAUNCHER[: -len(".py")]] = launcher
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST):
    """Every import statement of a file, at any depth, less those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _known(name: str, modules) -> str | None:
    """The longest prefix of dotted `name` that is one of the package's modules."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def _targets(node, module: str, is_package: bool, modules):
    """The package's modules that one import statement names."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield _known(alias.name, modules)
        return
    base = node.module or ""
    if node.level:  # relative: from the module's own package, one level up per extra dot
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        yield submodule if submodule in modules else _known(base, modules)


def import_graph(root: str, package: str = PACKAGE) -> dict[str, dict[str, str]]:
    """module -> {imported module: "file:line" of the first statement importing it}."""
    modules = _modules(root, package)
    graph = {}
    for module, path in sorted(modules.items()):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        is_package = os.path.basename(path) == "__init__.py"
        edges = graph.setdefault(module, {})
        for node in _statements(tree):
            for target in _targets(node, module, is_package, modules):
                if target is not None and target != module and target not in edges:
                    edges[target] = f"{os.path.relpath(path, root)}:{node.lineno}"
    return graph


def _components(graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _shortest_cycle(graph, start: str, within: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside one component (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ == start:
                    return paths[node] + [start]
                if succ in within and succ not in paths:
                    paths[succ] = paths[node] + [succ]
                    following.append(succ)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")


def import_cycles(root: str, package: str = PACKAGE) -> list[str]:
    """Each cycle as `a -> b -> ... -> a` with the statements that make it, one per module.

    For every module on a cycle, the shortest cycle through it; a cycle found
    from several of its modules is given once.
    """
    graph = import_graph(root, package)
    cycles, seen = [], set()
    for component in _components(graph):
        for start in component:
            cycle = _shortest_cycle(graph, start, set(component))
            key = frozenset(itertools.pairwise(cycle))
            if key in seen:
                continue
            seen.add(key)
            where = ", ".join(graph[a][b] for a, b in itertools.pairwise(cycle))
            cycles.append(f"{' -> '.join(cycle)}  ({where})")
    return cycles


def test_no_import_cycle():
    cycles = import_cycles(ROOT)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_scanner_finds_a_cycle_through_a_lazy_import(tmp_path):
    """The check can fail: the shape of the old serving package, and what it must skip."""
    files = {
        "keras_coatnet/__init__.py": "",
        "keras_coatnet/serving/__init__.py": (
            "FORMATS = ()\n"
            "def __getattr__(name):\n"
            "    from keras_coatnet.serving.exporter import export\n"
            "    return export\n"
        ),
        "keras_coatnet/serving/exporter.py": "from keras_coatnet.serving import FORMATS\n",
        # A submodule taken from its package is an edge to the submodule only.
        "keras_coatnet/serving/files.py": "from keras_coatnet.serving import exporter\n",
        # Relative imports resolve; TYPE_CHECKING imports do not count.
        "keras_coatnet/a.py": "from .b import x\n",
        "keras_coatnet/b.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from keras_coatnet import a\n"
            "else:\n"
            "    import os\n"
        ),
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert import_graph(str(tmp_path))["keras_coatnet.serving.files"] == {
        "keras_coatnet.serving.exporter": "keras_coatnet/serving/files.py:1"
    }
    assert import_cycles(str(tmp_path)) == [
        "keras_coatnet.serving -> keras_coatnet.serving.exporter -> keras_coatnet.serving  "
        "(keras_coatnet/serving/__init__.py:3, keras_coatnet/serving/exporter.py:1)"
    ]


def test_serving_constants_stay_importable_without_a_framework():
    """The command line reads the formats from `keras_coatnet.serving` before Keras starts."""
    code = (
        "import sys, keras_coatnet_cli\n"
        "keras_coatnet_cli.start_lazily()\n"
        "from keras_coatnet.serving import FORMATS, OUTPUTS\n"
        "from keras_coatnet.serving import formats\n"
        "assert FORMATS is formats.FORMATS and OUTPUTS is formats.OUTPUTS\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
    )
    result = _python("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- import keras_coatnet


def _python(*args, cwd=ROOT, timeout=300):
    """A fresh interpreter with this checkout first on the path."""
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def _imported(stderr: str) -> set[str]:
    """Top-level modules that `python -X importtime` saw imported."""
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", stderr, re.M)
    return {name.split(".")[0] for name in names}


LAYERS = ("Preprocessing", "Stem", "MBConvBlock", "TransformerBlock", "RelativeAttention")

USER_SCRIPT = """
import sys

import keras_coatnet  # registers the layers: nothing else of the package is touched

import keras
import numpy as np

model = keras.saving.load_model(sys.argv[1])
x, expected = np.load(sys.argv[2]), np.load(sys.argv[3])
print("max diff", float(np.abs(np.asarray(model(x, training=False)) - expected).max()))
"""


def test_a_user_script_named_coatnet_loads_a_saved_model(tmp_path):
    """A script named as the console script: the package's start used to read `argv[0]`.

    On main b08ed0c this failed: "Could not locate class 'Preprocessing'".
    """
    model = tiny_model(input_shape=(32, 32, 3))
    x = np.random.RandomState(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", np.asarray(model(x, training=False)))
    model.save(tmp_path / "tiny.keras")
    (tmp_path / "coatnet.py").write_text(USER_SCRIPT)
    result = _python("coatnet.py", "tiny.keras", "x.npy", "expected.npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [diff] = re.findall(r"^max diff (\S+)$", result.stdout, re.M)
    assert float(diff) <= 1e-6, diff


def test_import_keras_coatnet_registers_every_layer():
    code = (
        "import keras_coatnet, keras\n"
        f"print([n for n in {LAYERS!r}\n"
        "       if keras.saving.get_registered_object('keras_coatnet>' + n) is None])\n"
    )
    result = _python("-X", "importtime", "-c", code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
    # The check below can fail: the package's own import does start TensorFlow.
    assert "tensorflow" in _imported(result.stderr)


def test_the_launcher_starts_the_command_without_a_framework():
    """`coatnet` and `python -m keras_coatnet_cli`: the package's own switch, nothing else."""
    starts = [["-m", "keras_coatnet_cli"]]
    script = os.path.join(os.path.dirname(sys.executable), "coatnet")
    if os.path.exists(script):  # installed with its console script (pip install -e .)
        starts.append([script])
    for start in starts:
        for args in (["--help"], ["models"], ["summary", "no-such-net"]):
            result = _python("-X", "importtime", *start, *args)
            code = 2 if "no-such-net" in args else 0
            assert result.returncode == code, (start, args, result.stderr[-2000:])
            frameworks = _imported(result.stderr) & set(FRAMEWORKS)
            assert not frameworks, (start, args, frameworks)
