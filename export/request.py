"""The ``cnnpipe export`` request (a frozen config) and how metadata is assembled from it.

Precedence: explicit command-line values > ``--metadata FILE`` > architecture / graph
defaults.  Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnpipe.errors import ConfigError
from cnnpipe.export.package import VariantLimits, load_meta_file, merge_meta
from cnnpipe.export.precision import Precision
from cnnpipe.modelmeta import ModelMeta, Normalisation

__all__ = ["DEMO_DESCRIPTION", "ExportRequest", "build_meta"]

DEMO_DESCRIPTION = "Demo model trained on simulated data; not for science use."


@dataclass(frozen=True, kw_only=True)
class ExportRequest:
    """Everything ``cnnpipe export`` was asked to do (None = not given, use the default).

    Attributes
    ----------
    source : str or None
        Built-in architecture name or ``module:factory``; None with ``from_onnx``.
    from_onnx : Path or None
        Annotate this existing ONNX model instead of exporting from PyTorch.
    out : Path
        The package to write.
    bands : tuple of str
        Input channel order.
    weights : Path or None
        Checkpoint (state_dict, or a dict with ``state_dict``); None = random init.
    options : dict of str to int
        Architecture constructor options (``--arch-opt KEY=VALUE``).
    calibrate, parity_fits : tuple of Path
        FITS images for int8 calibration and real-patch parity (both are used for parity).
    n_real : int
        Number of real patches to cut from those files.
    """

    out: Path
    bands: tuple[str, ...]
    source: str | None = None
    from_onnx: Path | None = None
    task: str | None = None
    name: str | None = None
    version: str | None = None
    classes: tuple[str, ...] | None = None
    patch: int | None = None
    halo: int | None = None
    multiple: int | None = None
    normalisation: Normalisation | None = None
    output_kind: str | None = None
    pixel_scale: float | None = None
    postprocess: dict[str, Any] | None = None
    description: str | None = None
    licence: str | None = None
    demo: bool = False
    metadata_file: Path | None = None
    weights: Path | None = None
    options: dict[str, int] = field(default_factory=dict)
    precision: Precision = Precision.FP32
    tolerance: float = 1e-4
    limits: VariantLimits = field(default_factory=VariantLimits)
    calibrate: tuple[Path, ...] = ()
    parity_fits: tuple[Path, ...] = ()
    n_real: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.source is None) == (self.from_onnx is None):
            msg = (
                "Expected either an architecture (ARCH or module:factory) or --from-onnx "
                "MODEL.onnx. Got "
                + ("both." if self.source is not None else "neither.")
            )
            raise ConfigError(msg)
        if self.patch is not None and self.patch < 1:
            msg = f"Expected --patch >= 1. Got {self.patch}."
            raise ConfigError(msg)
        if self.halo is not None and self.halo < 0:
            msg = f"Expected --halo >= 0. Got {self.halo}."
            raise ConfigError(msg)
        if self.multiple is not None and self.multiple < 1:
            msg = f"Expected --multiple >= 1. Got {self.multiple}."
            raise ConfigError(msg)
        if not self.tolerance > 0:
            msg = f"Expected --tolerance > 0. Got {self.tolerance}."
            raise ConfigError(msg)
        if self.precision is Precision.INT8 and not self.calibrate:
            msg = "Expected --calibrate FITS... with --quantize int8 (calibration patches)."
            raise ConfigError(msg)

    @property
    def real_patch_files(self) -> tuple[Path, ...]:
        """FITS files real patches come from (calibration files first, no repeats)."""
        return tuple(dict.fromkeys((*self.calibrate, *self.parity_fits)))


def build_meta(request: ExportRequest, defaults: dict[str, Any]) -> ModelMeta:
    """Assemble and validate the metadata: defaults < ``--metadata`` file < explicit options.

    Parameters
    ----------
    request : ExportRequest
        The explicit values.
    defaults : dict
        A (partial) ``cnnpipe.model/1`` document from the architecture or the graph.

    Raises
    ------
    ModelError
        The assembled document is invalid (unknown key, wrong task, bad JSON file, ...).
    """
    doc = dict(defaults)
    if request.metadata_file is not None:
        doc = merge_meta(doc, load_meta_file(request.metadata_file))
    explicit: dict[str, Any] = {"bands": list(request.bands)}
    for key in ("name", "task", "version", "pixel_scale", "description", "licence"):
        value = getattr(request, key)
        if value is not None:
            explicit[key] = value
    if request.demo:
        explicit["demo"] = True
        if request.description is None and not doc.get("description"):
            explicit["description"] = DEMO_DESCRIPTION
    if request.postprocess is not None:
        explicit["postprocess"] = {**doc.get("postprocess", {}), **request.postprocess}
    inp: dict[str, Any] = {}
    if request.patch is not None:
        inp["patch"] = [request.patch, request.patch]
    if request.halo is not None:
        inp["halo"] = request.halo
    if request.multiple is not None:
        inp["multiple"] = request.multiple
    if inp:
        explicit["input"] = inp
    out: dict[str, Any] = {}
    if request.classes is not None:
        out["classes"] = list(request.classes)
    if request.output_kind is not None:
        out["kind"] = request.output_kind
    if out:
        explicit["output"] = out
    if request.normalisation is not None:
        explicit["normalisation"] = {
            "method": request.normalisation.method.value,
            "params": dict(request.normalisation.params),
        }
    doc = merge_meta(doc, explicit)
    meta = ModelMeta.from_dict(doc)
    patch = meta.input.patch
    if patch is not None and meta.input.halo and min(patch) <= 2 * meta.input.halo:
        msg = (
            f"Expected a patch larger than twice the halo ({meta.input.halo}). Got patch "
            f"{list(patch)}; use a larger --patch or a smaller --halo."
        )
        raise ConfigError(msg)
    if patch is not None and any(p % meta.input.multiple for p in patch):
        msg = (
            f"Expected a patch that is a multiple of {meta.input.multiple}. Got "
            f"{list(patch)}."
        )
        raise ConfigError(msg)
    return meta
