"""Export a PyTorch module to a validated cnnpipe model package (the torch side).

:func:`export_model` is the Python API (the demo-training script calls it with a trained
module); :func:`export_request` serves ``cnnpipe export ARCH|module:factory``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cnnpipe.errors import ConfigError, ExportError
from cnnpipe.export.build import build_module, state_dict_sha256
from cnnpipe.export.package import (
    ExportReport,
    VariantLimits,
    agreement_fail,
    check_writable,
    finish_package,
    provenance,
)
from cnnpipe.export.precision import Precision
from cnnpipe.export.receptive import receptive_field
from cnnpipe.export.request import ExportRequest, build_meta
from cnnpipe.export.validate import (
    Agreement,
    check_onnx,
    compare,
    ensure_finite,
    meta_problems_error,
    ort_session,
    random_patches,
    read_fits_patches,
    run_session,
)
from cnnpipe.modelmeta import InputSpec, ModelMeta, Task
from cnnpipe.normalise import normalise

__all__ = ["export_model", "export_request"]

_log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's optional-dependency chatter (torchvision ops it skips)."""
    loggers = {
        name: logging.getLogger(name)
        for name in ("torch.onnx._internal.exporter._registration", "onnx_ir", "onnxscript")
    }
    levels = {name: lg.level for name, lg in loggers.items()}
    for lg in loggers.values():
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for name, lg in loggers.items():
            lg.setLevel(levels[name])


def _dynamo_export(
    module: nn.Module, example: torch.Tensor, meta: ModelMeta
) -> Any:
    """Run ``torch.onnx.export(dynamo=True)``: dynamic batch, dynamic size if no patch."""
    import onnx
    from torch.export import Dim

    dims: dict[int, Any] = {0: Dim("batch", min=1, max=1 << 20)}
    if meta.input.patch is None:
        m = meta.input.multiple
        if m > 1:
            dims[2] = m * Dim("height", min=1, max=(1 << 16) // m)
            dims[3] = m * Dim("width", min=1, max=(1 << 16) // m)
        else:
            dims[2] = Dim("height", min=1, max=1 << 16)
            dims[3] = Dim("width", min=1, max=1 << 16)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                external_data=False,
                dynamic_shapes=(dims,),
                input_names=[meta.input.name],
                output_names=[meta.output.name],
                verbose=False,
            )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        msg = f"torch.onnx.export (dynamo) failed: {type(exc).__name__}: {first}"
        raise ExportError(msg) from None
    if program is None:
        msg = "torch.onnx.export (dynamo) returned no program."
        raise ExportError(msg)
    with tempfile.TemporaryDirectory(prefix="cnnpipe-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        program.save(str(path), external_data=False)
        return onnx.load(str(path))


def _torch_run(module: nn.Module, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    with torch.no_grad():
        out = module(torch.from_numpy(np.ascontiguousarray(x)))
    if not isinstance(out, torch.Tensor):
        msg = f"Expected the model to return one tensor. Got {type(out).__name__}."
        raise ExportError(msg)
    return out.detach().cpu().numpy().astype(np.float32)


def _check_output_shape(
    out: npt.NDArray[np.float32], x_shape: tuple[int, ...], meta: ModelMeta
) -> None:
    n_cls = len(meta.output.classes)
    dense = meta.task is not Task.CLASSIFY
    want = "(n, c, y, x) with the input's y, x" if dense else "(n, classes)"
    ok = out.ndim == (4 if dense else 2) and out.shape[0] == x_shape[0]
    if ok and dense:
        ok = tuple(out.shape[2:]) == tuple(x_shape[2:])
    if not ok:
        msg = (
            f"Expected a {meta.task.value} model to output {want}. Got shape "
            f"{list(out.shape)} for input {list(x_shape)}."
        )
        raise ExportError(msg)
    if n_cls and out.shape[1] != n_cls:
        msg = (
            f"The model outputs {out.shape[1]} channels but the metadata lists {n_cls} "
            f"classes {list(meta.output.classes)}; pass matching --classes."
        )
        raise ExportError(msg)


def export_model(
    module: nn.Module,
    *,
    meta: ModelMeta,
    out: str | Path,
    example_shape: tuple[int, int, int, int] | None = None,
    halo: int | Literal["auto"] = "auto",
    tolerance: float = 1e-4,
    real_patches: npt.NDArray[np.floating] | None = None,
    calibration: npt.NDArray[np.floating] | None = None,
    precision: Precision | str = Precision.FP32,
    limits: VariantLimits | None = None,
    weights_sha256: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
    n_random: int = 8,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export ``module`` to a single-file ONNX package with validated ``cnnpipe`` metadata.

    Parameters
    ----------
    module : torch.nn.Module
        Maps ``(n, bands, y, x)`` float32 normalised pixels to probabilities
        ``(n, classes)`` / ``(n, classes, y, x)`` or a heat map ``(n, 1, y, x)``.
    meta : ModelMeta
        Metadata to write.  ``input.halo``, ``weights_sha256`` and the toolchain part of
        ``provenance`` are filled in here; ``input.patch`` None exports dynamic height and
        width (multiples of ``input.multiple``).
    out : path
        The ``.onnx`` file to write (atomically).
    example_shape : (n, c, y, x), optional
        Tracing / random-parity shape; default ``(2, bands, patch, patch)`` or, for a fully
        convolutional model, a multiple-aligned side of at least 64 pixels.
    halo : int or 'auto'
        'auto': the receptive-field radius rounded up to ``input.multiple`` for models
        with spatial output (:func:`cnnpipe.export.receptive.receptive_field`), 0 for
        classifiers.  An int is declared as is.
    tolerance : float
        Largest accepted max abs difference between onnxruntime and PyTorch outputs.
    real_patches : (n, c, y, x) array, optional
        Raw pixels (counts) of real images; normalised with ``meta.normalisation`` and
        used for parity (and as int8 calibration unless ``calibration`` is given).
    calibration : (n, c, y, x) array, optional
        Raw pixels for int8 calibration.
    precision : {'fp32', 'fp16', 'int8'}
        Precision of the written file, validated against fp32 (``limits``).
    limits : VariantLimits, optional
        Acceptance limits of the fp16/int8 variant against fp32.
    weights_sha256 : str, optional
        Default: :func:`~cnnpipe.export.build.state_dict_sha256` of ``module``.
    extra_provenance : dict, optional
        Merged into ``meta.provenance`` (e.g. training data and epochs).
    n_random : int
        Number of random patches for the parity check.
    seed : int
        Seed of the random patches and of the receptive-field measurement.
    log : callable, optional
        Receives progress and agreement lines (default: this module's logger, INFO).

    Returns
    -------
    ExportReport

    Raises
    ------
    ExportError
        Export, ONNX check or non-finite output failures.
    ParityError
        onnxruntime disagrees with PyTorch, or a variant with fp32, beyond the limits.
    """
    emit = log or _log.info
    out = check_writable(out)
    # a private CPU copy: the caller's module keeps its device and train/eval mode
    module = copy.deepcopy(module).cpu().eval()
    nb = meta.n_bands
    if example_shape is None:
        if meta.input.patch is not None:
            side_y, side_x = meta.input.patch
        else:
            m = meta.input.multiple
            side_y = side_x = m * max(2, math.ceil(64 / m))
        example_shape = (2, nb, side_y, side_x)
    if example_shape[1] != nb:
        msg = (
            f"Expected example_shape with {nb} channels (bands {list(meta.bands)}). "
            f"Got {example_shape}."
        )
        raise ConfigError(msg)
    x = random_patches(
        n_random, nb, example_shape[2], example_shape[3], seed=seed, norm=meta.normalisation
    )
    ref = _torch_run(module, x)
    ensure_finite(ref, what="The PyTorch model")
    _check_output_shape(ref, x.shape, meta)

    radius: int | None = None
    if halo == "auto":
        if ref.ndim == 4:
            rf = receptive_field(module, in_channels=nb, multiple=meta.input.multiple, seed=seed)
            radius, halo = rf.radius, rf.halo
            emit(f"receptive field radius {radius} px -> halo {halo} "
                 f"(multiple {meta.input.multiple})")
        else:
            halo = 0
    elif halo < 0:
        msg = f"Expected halo >= 0. Got {halo}."
        raise ConfigError(msg)
    elif ref.ndim == 4:
        try:
            radius = receptive_field(
                module, in_channels=nb, multiple=meta.input.multiple, seed=seed
            ).radius
        except ExportError:
            radius = None  # not measurable (fixed-size model): the declared halo stands
        if radius is not None and radius > halo:
            _log.warning(
                "declared halo %d is smaller than the receptive-field radius %d: tiled "
                "output will differ from whole-image output near patch edges", halo, radius
            )
    if meta.input.patch is not None and halo and min(meta.input.patch) <= 2 * halo:
        msg = (
            f"Expected a patch larger than twice the halo ({halo}). Got patch "
            f"{list(meta.input.patch)}; use a larger patch or declare a smaller halo."
        )
        raise ConfigError(msg)

    import onnxscript

    # the caller's entries (training data, epochs, ...) first; the toolchain's win
    prov = {**meta.provenance, **(extra_provenance or {})}
    prov.update(provenance(
        framework=f"torch {torch.__version__}",
        torch=torch.__version__,
        onnxscript=onnxscript.__version__,
        exporter="torch.onnx dynamo",
    ))
    meta = meta.replace(
        input=InputSpec(
            name=meta.input.name,
            patch=meta.input.patch,
            multiple=meta.input.multiple,
            halo=int(halo),
        ),
        weights_sha256=weights_sha256 or state_dict_sha256(module),
        provenance=prov,
    )

    emit("exporting with torch.onnx (dynamo) ...")
    model = _dynamo_export(module, torch.from_numpy(x[:2].copy()), meta)
    check_onnx(model, what=str(out))
    meta_problems_error(out, meta, model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)

    sess = ort_session(model)
    inputs: list[tuple[str, npt.NDArray[np.float32]]] = [("random patches", x)]
    if meta.input.patch is None:
        m = meta.input.multiple
        h2, w2 = example_shape[2] + m, example_shape[3] + 2 * m
        inputs.append((
            f"random patches {h2}x{w2} (dynamic size)",
            random_patches(3, nb, h2, w2, seed=seed + 1, norm=meta.normalisation),
        ))
    if real_patches is not None and len(real_patches):
        inputs.append(("real patches", normalise(np.asarray(real_patches), meta.normalisation)))
    checks: list[Agreement] = []
    for label, xin in inputs:
        want = ref if xin is x else _torch_run(module, xin)
        ensure_finite(want, what=f"The PyTorch model on {label}")
        got = run_session(sess, xin)
        ensure_finite(got, what=f"onnxruntime on {label}")
        a = compare(
            want, got, kind=meta.output.kind, tolerance=tolerance,
            label=f"onnxruntime vs torch, {label}",
        )
        emit(a.describe())
        checks.append(a)
        agreement_fail(a, what="onnxruntime and PyTorch")

    prov = dict(meta.provenance)
    prov["opset"] = opset
    prov["onnx_ir_version"] = int(model.ir_version)
    prov["parity"] = {c.label: c.to_dict() for c in checks}
    meta = meta.replace(provenance=prov)
    cal = None
    if Precision(precision) is Precision.INT8:
        raw = calibration if calibration is not None else real_patches
        if raw is None or not len(raw):
            msg = "int8 quantisation needs calibration patches: pass --calibrate FITS..."
            raise ConfigError(msg)
        cal = normalise(np.asarray(raw), meta.normalisation)
    meta, size, variant_checks = finish_package(
        model, meta, out, inputs=inputs, precision=precision, calibration=cal,
        limits=limits, log=emit,
    )
    return ExportReport(
        path=out,
        meta=meta,
        size_bytes=size,
        checks=(*checks, *variant_checks),
        receptive_radius=radius,
    )


def export_request(
    request: ExportRequest, *, log: Callable[[str], None] | None = None
) -> ExportReport:
    """Serve ``cnnpipe export ARCH|module:factory``: build, load weights, export, validate."""
    module, defaults, arch = build_module(request)
    meta = build_meta(request, defaults)
    check_writable(request.out)
    patch = meta.input.patch
    if patch is None:
        m = meta.input.multiple
        side = m * max(2, math.ceil(64 / m))
        patch = (side, side)
    real = cal = None
    if request.real_patch_files:
        real = read_fits_patches(
            request.real_patch_files, bands=meta.bands, patch=patch, n=request.n_real,
            seed=request.seed,
        )
    if request.precision is Precision.INT8:
        cal = read_fits_patches(
            request.calibrate, bands=meta.bands, patch=patch, n=request.n_real,
            seed=request.seed + 1,
        )
    extra = dict(arch)
    if request.weights is not None:
        extra["checkpoint"] = Path(request.weights).name
    return export_model(
        module,
        meta=meta,
        out=request.out,
        halo="auto" if request.halo is None else request.halo,
        tolerance=request.tolerance,
        real_patches=real,
        calibration=cal,
        precision=request.precision,
        limits=request.limits,
        extra_provenance=extra,
        seed=request.seed,
        log=log,
    )

