"""Run ONNX model packages over FITS images on a Dask cluster into a Zarr store.

Never imports torch.  Names are loaded on first use so that importing a pure module
(:mod:`cnnpipe.pipeline.plan`, :mod:`cnnpipe.pipeline.heads`) does not pull in dask,
zarr or astropy.

Python API
----------
- :class:`RunConfig` - what to run (inputs, models, store, cluster, tiling).
- :func:`run` / :func:`dry_run` / :func:`prepare` - run, describe or validate a run.
- :func:`open_sources` / :class:`Source` - lazy FITS window reads.
- :func:`make_plan` - the pure tiling plan.
- :class:`RunStore` / :func:`store_wcs` - the output store and its WCS.
- :func:`read_catalog_columns` / :func:`catalog_table` - a model's merged catalog.
- :func:`write_table` / :func:`write_mask_fits` - catalog and mask exports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnpipe.pipeline.catalogs import read_catalog_columns
    from cnnpipe.pipeline.config import Device, RunConfig, StoreMode
    from cnnpipe.pipeline.exports import catalog_table, write_mask_fits, write_table
    from cnnpipe.pipeline.plan import Plan, make_plan
    from cnnpipe.pipeline.runner import RunSummary, dry_run, prepare, run
    from cnnpipe.pipeline.sources import Source, open_sources
    from cnnpipe.pipeline.store import RunStore, store_wcs

__all__ = [
    "Device",
    "Plan",
    "RunConfig",
    "RunStore",
    "RunSummary",
    "Source",
    "StoreMode",
    "catalog_table",
    "dry_run",
    "make_plan",
    "open_sources",
    "prepare",
    "read_catalog_columns",
    "run",
    "store_wcs",
    "write_mask_fits",
    "write_table",
]

_WHERE = {
    **dict.fromkeys(("Device", "RunConfig", "StoreMode"), "config"),
    **dict.fromkeys(("Plan", "make_plan"), "plan"),
    **dict.fromkeys(("RunSummary", "dry_run", "prepare", "run"), "runner"),
    **dict.fromkeys(("Source", "open_sources"), "sources"),
    **dict.fromkeys(("RunStore", "store_wcs"), "store"),
    "read_catalog_columns": "catalogs",
    **dict.fromkeys(("catalog_table", "write_mask_fits", "write_table"), "exports"),
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"cnnpipe.pipeline.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    msg = f"module 'cnnpipe.pipeline' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(__all__)
