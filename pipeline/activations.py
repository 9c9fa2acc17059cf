"""Peak memory of a network's intermediate tensors for one inference call.

Used by ``--dry-run`` to say how much memory a worker needs: the batch of patches going
in and the class maps coming out are small next to what a U-Net holds in between.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["peak_activation_bytes"]


def _bytes(value_info: Any) -> int | None:
    import onnx

    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    n = 1
    for d in t.shape.dim:
        if not d.HasField("dim_value"):
            return None
        n *= d.dim_value
    return n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize


def peak_activation_bytes(model: Any, input_shape: Sequence[int]) -> int:
    """Largest total size of the tensors alive at once during one run.

    The graph's (first non-initializer) input is fixed to ``input_shape``, ONNX shape
    inference gives every intermediate tensor's size, and the nodes are walked in their
    (topological) order: a node's outputs are allocated before it runs and a tensor is
    freed after its last consumer, as onnxruntime's memory planner does.  Weights and
    tensors whose shape inference cannot resolve are not counted, so this is a lower
    bound of what the session allocates (its arena also rounds allocations up).

    Parameters
    ----------
    model : onnx.ModelProto
        The model (not modified).
    input_shape : sequence of int
        Concrete ``(n, c, y, x)`` of the input.

    Returns
    -------
    int
        Bytes.
    """
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    graph_in = next(i for i in m.graph.input if i.name not in inits)
    dims = graph_in.type.tensor_type.shape.dim
    for d, n in zip(dims, input_shape):
        d.Clear()
        d.dim_value = int(n)
    # an estimate: where inference fails, count the shapes the file already has
    with contextlib.suppress(Exception):
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    size: dict[str, int] = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        b = _bytes(vi)
        if b is not None and vi.name not in inits:
            size[vi.name] = b
    nodes = list(m.graph.node)
    last_use: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            last_use[name] = i
    keep = {o.name for o in m.graph.output}
    live = size.get(graph_in.name, 0)
    peak = live
    for i, node in enumerate(nodes):
        live += sum(size.get(o, 0) for o in node.output)
        peak = max(peak, live)
        for name in set(node.input) | set(node.output):
            if last_use.get(name, -1) <= i and name not in keep and name in size:
                live -= size[name]
                size.pop(name)
    return peak
