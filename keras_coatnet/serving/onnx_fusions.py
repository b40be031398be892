"""Rewrite our ONNX export so that ONNX Runtime fuses what it fuses in timm's export.

Keras's ONNX export (tf2onnx) writes our exact GELU, `0.5 x (1 + erf(x / sqrt 2))`,
as `Mul(x, 1/sqrt 2) -> Erf -> Add(1) -> Mul(0.5 x, .)`, a form ONNX
Runtime's `GeluFusion` does not match (it wants the division by sqrt 2), so
every GELU ran as five passes over its map where timm's export runs one
fused `Gelu`. `fuse_gelu` rewrites the multiplication as the division (the
same value: the constant is the nearest float32 to sqrt 2 either way; the
logits move by under 1e-6), and ONNX Runtime fuses the rest at load.

`optimize(path)` applies it to an `.onnx` file in place and returns how
many it rewrote. Needs the `onnx` package only.
"""

from __future__ import annotations

import collections
import math

import numpy as np

SQRT2 = math.sqrt(2.0)


def _constant(graph_inits, name):
    """The value of initializer `name` as an array, or None."""
    from onnx import numpy_helper

    init = graph_inits.get(name)
    return None if init is None else numpy_helper.to_array(init)


def _is_scalar(value, target, tol=1e-6):
    return value is not None and value.size == 1 and abs(float(value.reshape(())) - target) < tol


class _Graph:
    def __init__(self, graph):
        self.graph = graph
        self.inits = {i.name: i for i in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers = collections.defaultdict(list)
        for n in graph.node:
            for i in n.input:
                self.consumers[i].append(n)

    def value(self, name):
        return _constant(self.inits, name)

    def other(self, node, name):
        """The input of a two-input `node` that is not `name`."""
        a, b = node.input
        return b if a == name else a if b == name else None

    def scalar_operand(self, node, target):
        """The non-constant input of binary `node` whose other input is the scalar `target`."""
        for i, j in ((0, 1), (1, 0)):
            if _is_scalar(self.value(node.input[j]), target):
                return node.input[i]
        return None


def fuse_gelu(model) -> int:
    """Rewrite `Mul(x, 1/sqrt 2) -> Erf` as `Div(x, sqrt 2) -> Erf`; returns how many."""
    from onnx import helper, numpy_helper

    g = _Graph(model.graph)
    name = "keras_coatnet/gelu_sqrt2"
    count = 0
    for node in list(model.graph.node):
        if node.op_type != "Erf":
            continue
        mul = g.producer.get(node.input[0])
        if mul is None or mul.op_type != "Mul":
            continue
        x = g.scalar_operand(mul, 1.0 / SQRT2)
        if x is None or len(g.consumers[mul.output[0]]) != 1:
            continue
        div = helper.make_node("Div", [x, name], list(mul.output), name=mul.name + "/div")
        index = list(model.graph.node).index(mul)
        model.graph.node.remove(mul)
        model.graph.node.insert(index, div)
        count += 1
        # ORT's pattern wants a scalar 1 in the Add after Erf.
        for add in g.consumers[node.output[0]]:
            if add.op_type == "Add":
                for k, operand in enumerate(add.input):
                    value = g.value(operand)
                    if value is not None and value.size == 1 and value.ndim > 0:
                        scalar = operand + "/scalar"
                        if scalar not in g.inits:
                            init = numpy_helper.from_array(value.reshape(()), scalar)
                            model.graph.initializer.append(init)
                            g.inits[scalar] = init
                        add.input[k] = scalar
    if count:
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(SQRT2, np.float32), name))
    return count


def optimize(path: str, output: str | None = None) -> dict:
    """Apply the rewrites to the ONNX file `path` (in place, or into `output`); their counts."""
    import onnx

    model = onnx.load(path)
    counts = {"gelu": fuse_gelu(model)}
    onnx.save(model, output or path)
    return counts
