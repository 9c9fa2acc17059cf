"""Reduced-precision variants of an exported fp32 model: fp16 and static int8 (QDQ).

Both keep float32 inputs and outputs, so the pipeline feeds every variant the same way.
Torch-free (onnx, onnxconverter-common, onnxruntime.quantization).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cnnpipe.errors import ConfigError, ExportError

__all__ = ["Precision", "make_variant", "to_fp16", "to_int8"]

log = logging.getLogger(__name__)


class Precision(StrEnum):
    """Numerical precision of the written model."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


def to_fp16(model: Any) -> Any:
    """Convert weights and activations to float16, keeping float32 I/O.

    Uses ``onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)``.
    """
    from onnxconverter_common import float16

    try:
        with warnings.catch_warnings():
            # tiny weights flushed to the fp16 range are expected; agreement is checked
            warnings.filterwarnings("ignore", ".*will be truncated to", UserWarning)
            return float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:
        msg = f"fp16 conversion failed: {type(exc).__name__}: {exc}"
        raise ExportError(msg) from None


class _Reader:
    """onnxruntime CalibrationDataReader over a batch of normalised patches."""

    def __init__(self, name: str, data: npt.NDArray[np.float32], batch: int = 4) -> None:
        self._items = iter(
            [{name: data[i : i + batch]} for i in range(0, len(data), batch)]
        )

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        return next(self._items, None)

    def rewind(self) -> None:  # pragma: no cover - called by some calibrators only
        pass


def to_int8(model: Any, calibration: npt.NDArray[np.float32], *, input_name: str) -> Any:
    """Quantise statically to int8 in QDQ format, calibrated on ``calibration`` patches.

    Activations are uint8 (asymmetric), weights int8 per channel, with MinMax calibration
    (``onnxruntime.quantization.quantize_static``).  The model is first pre-processed with
    ``quant_pre_process`` (ONNX shape inference and graph optimisation; the symbolic shape
    pass is skipped because exported dims like ``8*height`` defeat it).

    Parameters
    ----------
    model : onnx.ModelProto
        The fp32 model.
    calibration : (n, c, y, x) float32
        Normalised model inputs representative of real data.
    input_name : str
        The graph input the patches feed.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is None or len(calibration) == 0:
        msg = "int8 quantisation needs calibration patches: pass --calibrate FITS..."
        raise ConfigError(msg)
    with tempfile.TemporaryDirectory(prefix="cnnpipe-int8-") as tmp:
        src = Path(tmp) / "fp32.onnx"
        pre = Path(tmp) / "pre.onnx"
        dst = Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception as exc:  # pre-processing is an optimisation; quantise without it
            log.warning("int8 pre-processing skipped (%s: %s)", type(exc).__name__, exc)
            pre = src
        try:
            quantize_static(
                str(pre),
                str(dst),
                _Reader(input_name, np.ascontiguousarray(calibration, dtype=np.float32)),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
        except Exception as exc:
            msg = f"int8 quantisation failed: {type(exc).__name__}: {exc}"
            raise ExportError(msg) from None
        quantised = onnx.load(str(dst))
    # quantize_static rewrites metadata_props; the caller sets cnnpipe's afterwards.
    del quantised.metadata_props[:]
    return quantised


def make_variant(
    model: Any,
    precision: Precision | str,
    *,
    calibration: npt.NDArray[np.float32] | None = None,
    input_name: str = "input",
) -> Any:
    """Return ``model`` at ``precision`` (fp32 returns it unchanged)."""
    precision = Precision(precision)
    if precision is Precision.FP16:
        return to_fp16(model)
    if precision is Precision.INT8:
        if calibration is None:
            msg = "int8 quantisation needs calibration patches: pass --calibrate FITS..."
            raise ConfigError(msg)
        return to_int8(model, calibration, input_name=input_name)
    return model
