"""float32 -> float16 conversion at memory speed (onnxruntime's vectorised Cast kernel)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["to_float16"]

_CAST: Any = None
_CAST_LOCK = threading.Lock()


def _cast_session() -> Any:
    """The one-node ``Cast(float -> float16)`` onnxruntime session of this process."""
    global _CAST
    if _CAST is None:
        with _CAST_LOCK:
            if _CAST is None:
                import onnxruntime as ort
                from onnx import TensorProto, helper

                node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16)
                graph = helper.make_graph(
                    [node], "to_float16",
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
                )
                model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                model.ir_version = 8
                so = ort.SessionOptions()
                so.intra_op_num_threads = 1  # called from a worker thread; no pool of its own
                so.inter_op_num_threads = 1
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                _CAST = ort.InferenceSession(model.SerializeToString(), sess_options=so,
                                             providers=["CPUExecutionProvider"])
    return _CAST


def to_float16(x: npt.ArrayLike) -> npt.NDArray[np.float16]:
    """``np.asarray(x, float32).astype(np.float16)``, bit for bit, ~20x faster.

    numpy casts float32 to float16 one element at a time, and each value whose result
    is subnormal (``|x| < 2**-14``; 35-44 % of the softmax probabilities of the demo
    U-Net) takes a slower branch still: a 5 x 2048² unit of probabilities took 0.5 s,
    more than its Zarr write.  onnxruntime's ``Cast`` kernel converts with the CPU's
    vector instructions (F16C / AVX-512) and the same IEEE 754 rounding (round half to
    even, subnormals, overflow to infinity): ~10 ms for the same unit.  NaN stays NaN.

    Parameters
    ----------
    x : array_like
        Values (converted to C-contiguous float32 first).

    Returns
    -------
    ndarray of float16
        Same shape.
    """
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.size == 0:
        return np.zeros(a.shape, np.float16)
    out = _cast_session().run(None, {"x": a.reshape(-1)})[0]
    return np.asarray(out, dtype=np.float16).reshape(a.shape)
