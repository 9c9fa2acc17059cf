"""Exact rewrites of an exported graph that onnxruntime runs faster (pure ONNX, no torch).

:func:`decompose_channel_softmax`
    onnxruntime's CPU ``Softmax`` is fast along the last axis only.  A segmentation
    head's softmax over the classes of an ``(n, c, y, x)`` map (axis 1) ran at 63 ms for
    a ``(4, 5, 512, 512)`` tensor on one thread of the development machine, 29 % of the
    demo U-Net's whole forward pass; the same function written as
    ``exp(x - max_c x) / sum_c exp(x - max_c x)`` with ``ReduceMax``, ``Sub``, ``Exp``,
    ``ReduceSum``, ``Div`` took 9.5 ms (max abs difference 1.8e-7).  The rewrite is the
    definition of softmax (ONNX opset >= 13), so outputs agree to float32 rounding.

:func:`split_concat_convs`
    A U-Net's decoder concatenates a skip connection with an upsampled tensor along the
    channels and convolves the result.  onnxruntime's CPU ``Concat`` has no NCHWc
    (blocked layout) kernel, so both inputs are converted out of the blocked layout and
    the result back into it.  ``Conv(Concat(a, b), W) = Conv(a, W_a) + Conv(b, W_b)``
    with ``W`` split along its input channels; onnxruntime fuses the ``Add`` into the
    second convolution (its ``Sum`` input), but only when it can prove the two
    summands' shapes equal, i.e. when the session fixes the spatial input dimensions.
    So this rewrite is not stored in model packages (with free dimensions it is slower:
    327 against 296 ms a 1120² patch of the demo U-Net); ``cnnpipe run`` applies it
    to its CPU sessions, which fix the patch (:mod:`cnnpipe.pipeline.worker`): 278
    against 296-300 ms, one thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["decompose_channel_softmax", "optimise_graph", "split_concat_convs"]


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _shapes(model: Any) -> dict[str, tuple[int | None, ...]]:
    """Shape of every tensor whose rank ONNX shape inference knows (None: not static)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out: dict[str, tuple[int | None, ...]] = {}
    for vi in (*g.input, *g.value_info, *g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                 for d in t.shape.dim)
    return out


def _ranks(model: Any) -> dict[str, int]:
    """Rank of every tensor whose rank ONNX shape inference knows."""
    return {name: len(shape) for name, shape in _shapes(model).items()}


class _Names:
    """Fresh tensor and node names that collide with nothing in the graph."""

    def __init__(self, graph: Any) -> None:
        self.used: set[str] = {i.name for i in graph.initializer}
        self.used |= {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
        for n in graph.node:
            self.used |= {*n.input, *n.output, n.name}

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def _softmax_nodes(node: Any, axis: int, opset: int, names: _Names) -> Iterable[Any]:
    from onnx import TensorProto, helper

    x, y = node.input[0], node.output[0]
    base = node.name or y
    axes = names(f"{base}/axes")
    mx, d, e, s = (names(f"{base}/{k}") for k in ("max", "shifted", "exp", "sum"))
    yield helper.make_node("Constant", [], [axes], name=names(f"{base}/axes_const"),
                           value=helper.make_tensor(axes, TensorProto.INT64, [1], [axis]))
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18, ReduceSum from 13
        yield helper.make_node("ReduceMax", [x, axes], [mx], name=names(f"{base}/ReduceMax"),
                               keepdims=1)
    else:
        yield helper.make_node("ReduceMax", [x], [mx], name=names(f"{base}/ReduceMax"),
                               axes=[axis], keepdims=1)
    yield helper.make_node("Sub", [x, mx], [d], name=names(f"{base}/Sub"))
    yield helper.make_node("Exp", [d], [e], name=names(f"{base}/Exp"))
    yield helper.make_node("ReduceSum", [e, axes], [s], name=names(f"{base}/ReduceSum"),
                           keepdims=1)
    yield helper.make_node("Div", [e, s], [y], name=names(f"{base}/Div"))


def decompose_channel_softmax(model: Any) -> tuple[Any, int]:
    """Write every ``Softmax`` over a non-last axis as ReduceMax/Sub/Exp/ReduceSum/Div.

    Only nodes of the main graph, at opset >= 13 (where ``Softmax`` normalises along one
    axis; before, it flattened from ``axis`` on), whose input rank shape inference knows.

    Parameters
    ----------
    model : onnx.ModelProto
        Not modified.

    Returns
    -------
    (onnx.ModelProto, int)
        The rewritten copy and how many nodes were rewritten (0: an unchanged copy).
    """
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = _opset(out)
    if opset < 13 or not any(n.op_type == "Softmax" and n.domain in ("", "ai.onnx")
                             for n in out.graph.node):
        return out, 0
    ranks = _ranks(out)
    names = _Names(out.graph)
    nodes: list[Any] = []
    done = 0
    for node in out.graph.node:
        rank = ranks.get(node.input[0]) if node.input else None
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx") or not rank:
            nodes.append(node)
            continue
        axis = next((helper.get_attribute_value(a) for a in node.attribute
                     if a.name == "axis"), -1)
        axis = axis + rank if axis < 0 else axis
        if axis == rank - 1:  # onnxruntime's own kernel is the fast one there
            nodes.append(node)
            continue
        nodes.extend(_softmax_nodes(node, axis, opset, names))
        done += 1
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, done


def _attribute(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name),
                default)


def split_concat_convs(model: Any) -> tuple[Any, int]:
    """Write ``Conv(Concat(x_1..x_k, axis=1), W, B)`` as ``sum_i Conv(x_i, W_i)`` (+ ``B``).

    Only where the ``Concat`` (main graph, channel axis) feeds nothing but one ordinary
    ``Conv`` (``group`` 1) whose float32 weights are an initializer, and shape inference
    knows every input's channels.  ``W_i`` are the slices of ``W`` along its input
    channels; the bias goes to the first part.  See the module docstring for when it
    pays.

    Parameters
    ----------
    model : onnx.ModelProto
        Not modified.

    Returns
    -------
    (onnx.ModelProto, int)
        The rewritten copy and how many ``Concat``/``Conv`` pairs were split.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    if not any(n.op_type == "Concat" for n in g.node):
        return out, 0
    shapes = _shapes(out)
    inits = {i.name: i for i in g.initializer}
    users: dict[str, list[Any]] = {}
    for n in g.node:
        for name in n.input:
            users.setdefault(name, []).append(n)
    outputs = {o.name for o in g.output}
    split: dict[int, tuple[Any, list[int]]] = {}  # id(conv) -> its concat, channels
    for n in g.node:
        if n.op_type != "Concat" or n.domain not in ("", "ai.onnx"):
            continue
        rank = len(shapes.get(n.output[0], ()))
        axis = _attribute(n, "axis", 0)
        conv = users.get(n.output[0], [None])
        if (rank < 3 or axis % rank != 1 or len(conv) != 1 or n.output[0] in outputs
                or conv[0] is None or conv[0].op_type != "Conv"
                or conv[0].domain not in ("", "ai.onnx") or conv[0].input[0] != n.output[0]
                or _attribute(conv[0], "group", 1) != 1):
            continue
        w = inits.get(conv[0].input[1])
        channels = [c for x in n.input if (c := shapes.get(x, (None, None))[1]) is not None]
        if (w is None or w.data_type != TensorProto.FLOAT or len(channels) != len(n.input)
                or w.dims[1] != sum(channels)):
            continue
        split[id(conv[0])] = (n, channels)
    if not split:
        return out, 0
    names = _Names(g)
    drop = {id(cat) for cat, _ in split.values()}
    nodes: list[Any] = []
    for n in g.node:
        if id(n) in drop:
            continue
        if id(n) not in split:
            nodes.append(n)
            continue
        cat, channels = split[id(n)]
        weights = numpy_helper.to_array(inits[n.input[1]])
        parts, start = [], 0
        for k, (x, c) in enumerate(zip(cat.input, channels)):
            wk = names(f"{n.input[1]}_split{k}")
            g.initializer.append(numpy_helper.from_array(weights[:, start:start + c], wk))
            start += c
            bias = [n.input[2]] if k == 0 and len(n.input) > 2 and n.input[2] else []
            part = names(f"{n.output[0]}_split{k}")
            conv = helper.make_node("Conv", [x, wk, *bias], [part],
                                    name=names(f"{n.name or 'conv'}_split{k}"))
            conv.attribute.extend(n.attribute)
            nodes.append(conv)
            parts.append(part)
        total = parts[0]
        for k, part in enumerate(parts[1:], start=1):
            sum_out = n.output[0] if k == len(parts) - 1 else names(f"{n.output[0]}_sum{k}")
            nodes.append(helper.make_node("Add", [total, part], [sum_out],
                                          name=names(f"{n.name or 'conv'}_sum{k}")))
            total = sum_out
    del g.node[:]
    g.node.extend(nodes)
    used = {name for node in g.node for name in node.input}
    keep = [i for i in g.initializer if i.name in used or i.name not in inits]
    del g.initializer[:]
    g.initializer.extend(keep)
    return out, len(split)


def optimise_graph(model: Any) -> tuple[Any, dict[str, int]]:
    """Apply every rewrite of this module; returns the model and counts by rewrite."""
    model, n = decompose_channel_softmax(model)
    return model, ({"channel_softmax": n} if n else {})
