"""Export PyTorch models to self-describing ONNX packages (``cnnpipe[export]``).

The only part of cnnpipe that imports torch, and only where it must: the names below are
loaded on first use, so :mod:`cnnpipe.export.annotate` (``export --from-onnx``),
:mod:`~cnnpipe.export.package` and :mod:`~cnnpipe.export.validate` work without torch.

Python API
----------
- :func:`export_model` - export a (trained) ``nn.Module`` with its :class:`ModelMeta`.
- :data:`ARCH_SPECS` / :func:`get_arch` - the reference architectures
  (``galaxy_cnn``, ``lens_resnet``, ``crater_unet``, ``segment_unet``).
- :func:`receptive_field` / :func:`halo_for` - the halo that makes tiling exact.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnpipe.export.annotate import annotate_onnx
    from cnnpipe.export.architectures import (
        ARCH_SPECS,
        ArchSpec,
        GalaxyCNN,
        LensResNet,
        UNet,
        crater_unet,
        galaxy_cnn,
        get_arch,
        lens_resnet,
        segment_unet,
    )
    from cnnpipe.export.build import build_module, load_checkpoint, state_dict_sha256
    from cnnpipe.export.exporter import export_model, export_request
    from cnnpipe.export.package import ExportReport, VariantLimits, parse_normalisation
    from cnnpipe.export.precision import Precision
    from cnnpipe.export.receptive import ReceptiveField, halo_for, receptive_field
    from cnnpipe.export.request import ExportRequest

__all__ = [
    "ARCH_SPECS",
    "ArchSpec",
    "ExportReport",
    "ExportRequest",
    "GalaxyCNN",
    "LensResNet",
    "Precision",
    "ReceptiveField",
    "UNet",
    "VariantLimits",
    "annotate_onnx",
    "build_module",
    "crater_unet",
    "export_model",
    "export_request",
    "galaxy_cnn",
    "get_arch",
    "halo_for",
    "lens_resnet",
    "load_checkpoint",
    "parse_normalisation",
    "receptive_field",
    "segment_unet",
    "state_dict_sha256",
]

_WHERE = {
    "annotate_onnx": "annotate",
    "ExportReport": "package",
    "VariantLimits": "package",
    "parse_normalisation": "package",
    "Precision": "precision",
    "ExportRequest": "request",
    "ReceptiveField": "receptive",
    "halo_for": "receptive",
    "receptive_field": "receptive",
    "export_model": "exporter",
    "export_request": "exporter",
    **dict.fromkeys(("build_module", "load_checkpoint", "state_dict_sha256"), "build"),
    **dict.fromkeys(
        ("ARCH_SPECS", "ArchSpec", "GalaxyCNN", "LensResNet", "UNet", "crater_unet",
         "galaxy_cnn", "get_arch", "lens_resnet", "segment_unet"),
        "architectures",
    ),
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"cnnpipe.export.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    msg = f"module 'cnnpipe.export' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(__all__)
