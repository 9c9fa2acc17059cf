"""Annotate an existing ONNX model with ``cnnpipe`` metadata (``export --from-onnx``).

No torch: tensor names and the fixed patch come from the graph, the rest from the
request; the model is checked, run on random (and real) patches for finite outputs of the
right shape, optionally converted to fp16/int8 and validated, then written.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cnnpipe.errors import ConfigError, ExportError, ModelError
from cnnpipe.export.package import (
    ExportReport,
    check_writable,
    finish_package,
    initializers_sha256,
    provenance,
    save_package,
)
from cnnpipe.export.precision import Precision
from cnnpipe.export.request import ExportRequest, build_meta
from cnnpipe.export.validate import (
    check_onnx,
    ensure_finite,
    meta_problems_error,
    ort_session,
    random_patches,
    read_fits_patches,
    run_session,
)
from cnnpipe.inspection import read_signature
from cnnpipe.modelmeta import ModelMeta, OutputKind, Task, load_onnx
from cnnpipe.normalise import normalise

__all__ = ["annotate_onnx", "graph_defaults"]

_log = logging.getLogger(__name__)


def _detect_precision(model: Any) -> str:
    import onnx

    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return Precision.INT8.value
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return Precision.FP16.value
    return Precision.FP32.value


def graph_defaults(model: Any, request: ExportRequest) -> dict[str, Any]:
    """Default metadata from the graph: first input/output names and any static patch."""
    inputs, outputs = read_signature(model)
    if not inputs or not outputs:
        msg = "Expected an ONNX graph with at least one input and one output. Got none."
        raise ExportError(msg)
    shape = inputs[0].shape
    patch = None
    if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
        patch = [shape[2], shape[3]]
    task = request.task
    if task is None:
        msg = "Expected --task (classify, craters or segment) with --from-onnx."
        raise ConfigError(msg)
    stem = Path(str(request.from_onnx)).stem.replace(" ", "_")
    return {
        "name": stem,
        "task": task,
        "bands": list(request.bands),
        "input": {"name": inputs[0].name, "patch": patch, "multiple": 1, "halo": 0},
        "output": {
            "name": outputs[0].name,
            "classes": [],
            "kind": OutputKind.HEATMAP.value if task == Task.CRATERS.value
            else OutputKind.PROBABILITIES.value,
        },
    }


def _probe_shape(meta: ModelMeta) -> tuple[int, int]:
    if meta.input.patch is not None:
        return meta.input.patch
    m = meta.input.multiple
    side = m * max(2, math.ceil(64 / m))
    return side, side


def annotate_onnx(
    request: ExportRequest, *, log: Callable[[str], None] | None = None
) -> ExportReport:
    """Write ``request.from_onnx`` with metadata to ``request.out`` (may be the same file).

    Raises
    ------
    ExportError
        Unreadable model, checker failure, non-finite or mis-shaped outputs.
    ModelError
        Metadata invalid or contradicting the graph; external data that leaves the
        model's folder.
    """
    import onnx

    emit = log or _log.info
    src = Path(str(request.from_onnx))
    check_writable(request.out)
    try:  # external data only from inside the model's folder, checked before any is opened
        model = load_onnx(src)
    except ModelError as exc:
        raise ExportError(str(exc)) from None
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(src.parent))
    except Exception as exc:
        msg = f"{src}: cannot read its external data ({type(exc).__name__}: {exc})."
        raise ExportError(msg) from None
    meta = build_meta(request, graph_defaults(model, request))
    check_onnx(model, what=str(src))
    meta_problems_error(src, meta, model)

    sess = ort_session(model)
    h, w = _probe_shape(meta)
    inputs: list[tuple[str, npt.NDArray[np.float32]]] = [
        ("random patches", random_patches(4, meta.n_bands, h, w, seed=request.seed,
                                          norm=meta.normalisation)),
    ]
    cal = None
    if request.real_patch_files:
        real = read_fits_patches(
            request.real_patch_files, bands=meta.bands, patch=(h, w), n=request.n_real,
            seed=request.seed,
        )
        inputs.append(("real patches", normalise(real, meta.normalisation)))
    if request.precision is Precision.INT8:
        cal = normalise(
            read_fits_patches(request.calibrate, bands=meta.bands, patch=(h, w),
                              n=request.n_real, seed=request.seed + 1),
            meta.normalisation,
        )
    for label, x in inputs:
        out = run_session(sess, x)
        ensure_finite(out, what=f"The model on {label}")
        dense = meta.task is not Task.CLASSIFY
        if out.ndim != (4 if dense else 2) or (dense and out.shape[2:] != x.shape[2:]):
            msg = (
                f"Expected a {meta.task.value} model to output "
                f"{'(n, c, y, x) with the input size' if dense else '(n, classes)'}. Got "
                f"{list(out.shape)} for input {list(x.shape)}."
            )
            raise ExportError(msg)
        emit(f"onnxruntime on {label}: output {list(out.shape)}, finite")

    if meta.input.halo == 0 and meta.input.patch is None and meta.task is not Task.CLASSIFY:
        _log.warning(
            "halo 0 declared for a fully convolutional model; pass --halo N (its "
            "receptive-field radius) for seam-free tiling"
        )
    current = _detect_precision(model)
    prov = provenance(
        exporter="cnnpipe export --from-onnx",
        source=src.name,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        opset=next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
    )
    if current != Precision.FP32.value:
        prov["precision"] = current
        if request.precision is not Precision.FP32:
            msg = f"{src}: already {current}; convert an fp32 model instead."
            raise ConfigError(msg)
    prov.update(meta.provenance)
    meta = meta.replace(
        provenance=prov,
        weights_sha256=meta.weights_sha256 or initializers_sha256(model),
    )
    if current != Precision.FP32.value:
        size = save_package(model, meta, request.out)
        return ExportReport(path=Path(request.out), meta=meta, size_bytes=size)
    meta, size, checks = finish_package(
        model, meta, request.out, inputs=inputs, precision=request.precision,
        calibration=cal, limits=request.limits, log=emit,
    )
    return ExportReport(path=Path(request.out), meta=meta, size_bytes=size, checks=tuple(checks))
