"""Rewrite our ONNX export so that ONNX Runtime fuses what it fuses in timm's export.

Keras's ONNX export (tf2onnx) writes our exact GELU, `0.5 x (1 + erf(x / sqrt 2))`,
as `Mul(x, 1/sqrt 2) -> Erf -> Add(1) -> Mul(0.5 x, .)`, a form ONNX
Runtime's `GeluFusion` does not match (it wants the division by sqrt 2), so
every GELU ran as five passes over its map where timm's export runs one
fused `Gelu`. `fuse_gelu` rewrites the multiplication as the division (the
same value: the constant is the nearest float32 to sqrt 2 either way; the
logits move by under 1e-6), and ONNX Runtime fuses the rest at load.
`fuse_layer_norm` writes each LayerNorm over the channel axis, twelve nodes
as tf2onnx writes it, as one `LayerNormalization` (timm's export has them).

`optimize(path)` applies both to an `.onnx` file in place and returns how
many each rewrote. Needs the `onnx` package only.
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


def _one(nodes, op_type):
    """The node of `op_type` that is every one of `nodes` (one node, maybe twice), else None."""
    distinct = {id(node): node for node in nodes}
    if len(distinct) != 1:
        return None
    (node,) = distinct.values()
    return node if node.op_type == op_type else None


def _last_axis(node, rank) -> bool:
    from onnx import helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axes = list(attributes.get("axes", []))
    return attributes.get("keepdims", 1) == 1 and axes in ([-1], [rank - 1])


def fuse_layer_norm(model) -> int:
    """Rewrite tf2onnx's 12-node LayerNorm over the last axis as one `LayerNormalization`.

    tf2onnx writes Keras's `x * g/sqrt(var + eps) + (b - mean * g/sqrt(var + eps))`
    as ReduceMean, Neg, Sub, Mul, ReduceMean, Add, Sqrt, Reciprocal, three
    Mul and two Add (one with a zero `b` folded away), which ONNX Runtime runs node by node over the
    whole map. `LayerNormalization` (opset 17; the model's opset is raised
    to 17 when one is written) is one kernel. Normalizations over another
    axis (where tf2onnx moved the layout) are left alone.
    """
    from onnx import helper, numpy_helper

    g = _Graph(model.graph)
    ranks = {}
    for value in list(model.graph.value_info) + list(model.graph.input):
        ranks[value.name] = len(value.type.tensor_type.shape.dim)
    count = 0
    for mean in list(model.graph.node):
        if mean.op_type != "ReduceMean" or len(mean.input) != 1:
            continue
        x = mean.input[0]
        users = g.consumers[mean.output[0]]
        neg = _one([u for u in users if u.op_type == "Neg"], "Neg")
        sub = _one([u for u in users if u.op_type == "Sub"], "Sub")
        if len(users) != 2 or neg is None or sub is None or list(sub.input) != [x, mean.output[0]]:
            continue
        square = _one(g.consumers[sub.output[0]], "Mul")
        if square is None or list(square.input) != [sub.output[0]] * 2:
            continue
        variance = _one(g.consumers[square.output[0]], "ReduceMean")
        add = variance and _one(g.consumers[variance.output[0]], "Add")
        sqrt = add and _one(g.consumers[add.output[0]], "Sqrt")
        reciprocal = sqrt and _one(g.consumers[sqrt.output[0]], "Reciprocal")
        scale = reciprocal and _one(g.consumers[reciprocal.output[0]], "Mul")
        if scale is None:
            continue
        eps = g.value(g.other(add, variance.output[0]))
        gamma = g.value(g.other(scale, reciprocal.output[0]))
        channels = gamma.shape[-1] if gamma is not None and gamma.ndim else 0
        if eps is None or eps.size != 1 or gamma is None or gamma.size != channels:
            continue
        muls = g.consumers[scale.output[0]]
        if len(muls) != 2 or any(m.op_type != "Mul" for m in muls) or muls[0] is muls[1]:
            continue
        if [len(g.consumers[m.output[0]]) for m in muls] != [1, 1]:
            continue
        if g.consumers[neg.output[0]] != [muls[0]] and g.consumers[neg.output[0]] != [muls[1]]:
            continue
        by_input = {g.other(m, scale.output[0]): m for m in muls}
        if set(by_input) != {x, neg.output[0]}:
            continue
        total = _one(g.consumers[by_input[x].output[0]], "Add")
        shifted = by_input[neg.output[0]]  # -mean * scale, then + beta when there is one
        beta, with_beta = np.zeros(channels, np.float32), []
        offset = _one(g.consumers[shifted.output[0]], "Add")
        if offset is not None and offset is not total:
            value = g.value(g.other(offset, shifted.output[0]))
            if value is None or value.size != channels:
                continue
            beta, with_beta, shifted = value.reshape(-1).astype(np.float32), [offset], offset
        if total is None or set(total.input) != {by_input[x].output[0], shifted.output[0]}:
            continue
        rank = ranks.get(x) or len(gamma.shape)
        if not (_last_axis(mean, rank) and _last_axis(variance, rank)):
            continue
        prefix = mean.name.rsplit("/moments", 1)[0] + "/layer_norm"
        weights = {
            prefix + "/scale": gamma.reshape(-1).astype(np.float32),
            prefix + "/bias": beta,
        }
        for key, value in weights.items():
            model.graph.initializer.append(numpy_helper.from_array(value, key))
        fused = helper.make_node(
            "LayerNormalization",
            [x, *weights],
            list(total.output),
            name=prefix,
            axis=-1,
            epsilon=float(eps.reshape(())),
        )
        old = [
            mean,
            neg,
            sub,
            square,
            variance,
            add,
            sqrt,
            reciprocal,
            scale,
            *muls,
            *with_beta,
            total,
        ]
        index = list(model.graph.node).index(total)
        model.graph.node.insert(index, fused)
        for node in old:
            model.graph.node.remove(node)
        count += 1
    if count:
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx") and opset.version < 17:
                opset.version = 17
    return count


def optimize(path: str, output: str | None = None) -> dict:
    """Apply the rewrites to the ONNX file `path` (in place, or into `output`); their counts."""
    import onnx

    model = onnx.load(path)
    counts = {"gelu": fuse_gelu(model), "layer_norm": fuse_layer_norm(model)}
    onnx.save(model, output or path)
    return counts
