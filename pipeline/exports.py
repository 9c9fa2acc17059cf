"""Exports of a run store: catalogs to Parquet / FITS / VOTable / ECSV / CSV, masks to FITS.

* :func:`catalog_table` reads ``catalogs/<model>/`` into an :class:`astropy.table.Table`
  whose columns carry their unit and description; :func:`write_table` writes it:

  - ``parquet``: pyarrow, each field's metadata holds ``unit`` and ``description``, the
    schema metadata ``cnnpipe`` (JSON: model, task, world columns, flag bits) and
    astropy's ``table_meta_yaml`` header, so ``Table.read`` restores units and
    descriptions too;
  - ``fits``: a binary table (``TUNITn``; descriptions in ``TCOMMn`` cards);
  - ``votable``: units and descriptions in the FIELD elements;
  - ``ecsv``: astropy's ECSV, comma-separated (a ``#`` YAML header with units,
    descriptions and the table's metadata, then the rows); ``Table.read(f.ecsv)``
    restores everything;
  - ``csv``: plain CSV, one header line of column names, then the rows: what pandas,
    spreadsheets, ``Table.read(f.csv)`` and any CSV reader take, without units or
    descriptions (choose ECSV, Parquet, FITS or VOTable to keep them).

* :func:`write_mask_fits` streams one image's uint8 class mask into a FITS primary
  HDU (``BITPIX = 8``, ``BLANK = 255`` marks pixels without data, ``CLASSn`` cards name
  the classes) with the image's header cards from the store (WCS included), one strip
  of rows at a time, so a mask larger than memory can be exported.

A store whose run is not complete is refused unless ``allow_incomplete``: the catalog
of such a store is then built in memory from the fragments of the units done so far.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from cnnpipe.errors import ConfigError, StoreError
from cnnpipe.modelmeta import ModelMeta
from cnnpipe.pipeline.catalogs import build_catalog, read_catalog_columns
from cnnpipe.pipeline.columns import FLAGS_DESCRIPTION, Column
from cnnpipe.pipeline.store import RunStore, store_header

__all__ = [
    "FORMATS",
    "MASK_DROP",
    "catalog_table",
    "format_for",
    "write_mask_fits",
    "write_table",
]

#: catalog export formats and their usual file suffixes
FORMATS = {"parquet": (".parquet", ".pq"), "fits": (".fits", ".fit"),
           "votable": (".vot", ".votable", ".xml"), "ecsv": (".ecsv",), "csv": (".csv",)}
#: header cards of the image that are wrong for its mask
MASK_DROP = frozenset({"BUNIT", "DATAMIN", "DATAMAX", "BLANK", "SATURATE", "GAIN",
                       "RDNOISE", "CHECKSUM", "DATASUM"})


def format_for(path: str, fmt: str | None) -> str:
    """The export format: ``fmt``, or the one the file name's suffix says.

    Raises
    ------
    ConfigError
        No format given and the suffix says none.
    """
    if fmt:
        if fmt not in FORMATS:
            msg = f"Expected --format one of {', '.join(FORMATS)}. Got {fmt!r}."
            raise ConfigError(msg)
        return fmt
    lower = path.lower()
    for name, suffixes in FORMATS.items():
        if lower.endswith(suffixes):
            return name
    msg = (
        f"-o {path}: cannot tell the format from the file name. Give --format "
        f"{'|'.join(FORMATS)}."
    )
    raise ConfigError(msg)


def _run_attrs(store: str, *, allow_incomplete: bool) -> dict[str, Any]:
    if not (Path(store) / "zarr.json").is_file():
        msg = f"{store}: no Zarr store here. Expected the --out store of `cnnpipe run`."
        raise StoreError(msg)
    attrs = RunStore(store).run_attrs()
    status = attrs.get("status")
    if status != "complete" and not allow_incomplete:
        msg = (
            f"{store}: the run is not complete (status {status}). Finish it (rerun "
            "`cnnpipe run` with the same arguments to resume) or pass --allow-incomplete "
            "to export what is done so far."
        )
        raise StoreError(msg)
    return attrs


def _model_meta(store: str, attrs: dict[str, Any], model: str | None) -> ModelMeta:
    models = attrs.get("models", {})
    if model is None:
        if len(models) != 1:
            msg = f"{store} holds models {', '.join(models)}; choose one with --model NAME."
            raise ConfigError(msg)
        model = next(iter(models))
    if model not in models:
        msg = (
            f"{store} has no model {model!r}. Models in it: {', '.join(models) or 'none'}."
        )
        raise StoreError(msg)
    return ModelMeta.from_dict(models[model]["metadata"])


def catalog_table(
    store: str | os.PathLike[str], model: str | None = None, *, allow_incomplete: bool = False
) -> Any:
    """The catalog of ``model`` as an :class:`astropy.table.Table` (units, descriptions).

    Raises
    ------
    StoreError
        Not a run store, a run not complete (unless ``allow_incomplete``), or no such
        model.
    """
    from astropy.table import Table

    path = os.fspath(store)
    attrs = _run_attrs(path, allow_incomplete=allow_incomplete)
    meta = _model_meta(path, attrs, model)
    meta_out: dict[str, Any] = {"model": meta.name, "task": meta.task.value,
                                "flags": FLAGS_DESCRIPTION, "run_id": attrs.get("run_id"),
                                "status": attrs.get("status")}
    if attrs.get("status") == "complete":
        schema, columns, cattrs = read_catalog_columns(path, meta.name)
        meta_out["world"] = cattrs.get("world", [])
    else:
        schema, columns = build_catalog(path, meta, list(attrs.get("inputs", {})))
    table = Table(meta=meta_out)
    for c in schema:
        values = columns[c.name]
        if c.dtype == "str":
            values = np.asarray(values, dtype=str) if values.size else np.zeros(0, "U1")
        table[c.name] = values
        table[c.name].unit = c.unit or None
        table[c.name].description = c.description
    return table


def _schema_of(table: Any) -> list[Column]:
    return [Column(n, "str" if table[n].dtype.kind in "USO" else table[n].dtype.str[1:],
                   str(table[n].unit) if table[n].unit is not None else "",
                   table[n].description or "") for n in table.colnames]


def _write_parquet(table: Any, path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.table.meta import get_yaml_from_table

    fields, arrays = [], []
    # astropy's own Parquet reader (Table.read) takes units, descriptions and the table
    # meta from its YAML header, and string widths from table::len:: keys
    meta = {"cnnpipe": json.dumps(dict(table.meta), default=str),
            "table_meta_yaml": "\n".join(get_yaml_from_table(table))}
    for c in _schema_of(table):
        values = np.asarray(table[c.name])
        if c.dtype == "str":
            arr = pa.array(values.tolist(), type=pa.string())
            meta[f"table::len::{c.name}"] = str(max([len(v) for v in values.tolist()] or [1]))
        else:
            arr = pa.array(values)
        fields.append(pa.field(c.name, arr.type, metadata={
            "unit": c.unit, "description": c.description}))
        arrays.append(arr)
    schema = pa.schema(fields, metadata=meta)
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)


def _write_fits(table: Any, path: str) -> None:
    from astropy.io import fits

    bare = table.copy(copy_data=False)
    bare.meta.clear()  # lists and long strings make fitsverify warn; short cards below
    hdu = fits.table_to_hdu(bare)
    meta = table.meta
    hdu.header["MODEL"] = (str(meta.get("model", "")), "cnnpipe model name")
    hdu.header["TASK"] = (str(meta.get("task", "")), "model task")
    hdu.header["RUNID"] = (str(meta.get("run_id", "")), "cnnpipe run id")
    hdu.header["WORLD"] = (",".join(meta.get("world", [])), "world coordinate columns")
    hdu.header["FLAGBIT1"] = ("touches pixels without data", "flags & 1")
    hdu.header["FLAGBIT2"] = ("touches the image edge", "flags & 2")
    for i, name in enumerate(table.colnames, start=1):
        desc = table[name].description or ""
        if desc:
            # TCOMMn: the column comment convention of HEASARC / fv
            hdu.header[f"TCOMM{i}"] = desc[:68]
    hdu.header["EXTNAME"] = "CATALOG"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)


@contextlib.contextmanager
def _atomic(path: str, what: str) -> Iterator[str]:
    """Yield ``PATH.partial`` to write; renamed to ``path`` on success, removed otherwise.

    Raises
    ------
    StoreError
        The file system refused (full disk, permissions); the message names ``path``.
    """
    tmp = f"{path}.partial"
    try:
        if os.path.exists(tmp):
            os.unlink(tmp)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        msg = f"{path}: cannot write {what} ({exc.strerror or exc})."
        raise StoreError(msg) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_table(table: Any, path: str | os.PathLike[str], fmt: str, *,
                overwrite: bool = False) -> str:
    """Write a catalog table as ``fmt`` (one of :data:`FORMATS`; module docstring).

    The file is written next to ``path`` and renamed into place.

    Raises
    ------
    StoreError
        ``path`` exists and ``overwrite`` is false, or it cannot be written.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        msg = f"{path} exists. Use --overwrite to replace it, or choose another -o."
        raise StoreError(msg)
    with _atomic(path, "the catalog") as tmp:
        if fmt == "parquet":
            _write_parquet(table, tmp)
        elif fmt == "fits":
            _write_fits(table, tmp)
        elif fmt == "votable":
            table.write(tmp, format="votable", overwrite=True)
        elif fmt == "ecsv":
            table.write(tmp, format="ascii.ecsv", delimiter=",", overwrite=True)
        else:  # plain CSV: no '#' lines, which pandas and astropy's csv reader refuse
            plain = table.copy(copy_data=False)
            plain.meta.clear()
            plain.write(tmp, format="ascii.csv", overwrite=True)
    return path


def _mask_header(store: str, key: str, shape: tuple[int, int],
                 classes: Sequence[str]) -> Any:
    from astropy.io import fits

    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = 8
    header["NAXIS"] = 2
    header["NAXIS1"] = shape[1]
    header["NAXIS2"] = shape[0]
    for card in store_header(store, key).cards:
        if card.keyword in MASK_DROP or card.keyword in header:
            continue
        header.append(card, end=True)
    header["BLANK"] = (255, "mask value of pixels without data")
    for k, name in enumerate(classes):
        header[f"CLASS{k}"] = (str(name), f"mask value {k}")
    header["ORIGIN"] = ("cnnpipe", "class mask exported by cnnpipe mask")
    return header


def write_mask_fits(
    store: str | os.PathLike[str],
    model: str | None,
    path: str | os.PathLike[str],
    *,
    image: str | None = None,
    overwrite: bool = False,
    allow_incomplete: bool = False,
    strip_bytes: int = 1 << 26,
) -> str:
    """Write one image's class mask of ``model`` as a FITS image (streamed by strips).

    Parameters
    ----------
    store : str
        The run store.
    model : str, optional
        Model name (may be left out when the store holds one model).
    path : str
        Output FITS file.
    image : str, optional
        Image key (may be left out when the store holds one image).
    overwrite, allow_incomplete : bool
        Replace ``path``; export a store whose run is not complete.
    strip_bytes : int
        Bytes of mask held at a time (rows per strip = ``strip_bytes // width``).

    Raises
    ------
    StoreError, ConfigError
        As :func:`catalog_table`; an unknown or ambiguous image.
    """
    from astropy.io import fits

    spath, path = os.fspath(store), os.fspath(path)
    attrs = _run_attrs(spath, allow_incomplete=allow_incomplete)
    meta = _model_meta(spath, attrs, model)
    keys = list(attrs.get("inputs", {}))
    if image is None:
        if len(keys) != 1:
            msg = f"{spath} holds images {', '.join(keys)}; choose one with --image KEY."
            raise ConfigError(msg)
        image = keys[0]
    if image not in keys:
        msg = f"{spath} has no image {image!r}. Images in it: {', '.join(keys)}."
        raise StoreError(msg)
    if os.path.exists(path) and not overwrite:
        msg = f"{path} exists. Use --overwrite to replace it, or choose another --fits."
        raise StoreError(msg)
    arr = zarr.open_array(spath, path=f"images/{image}/{meta.name}/mask", mode="r")
    ny, nx = (int(n) for n in arr.shape)
    header = _mask_header(spath, image, (ny, nx), meta.output.classes)
    rows = max(1, strip_bytes // max(nx, 1))
    with _atomic(path, "the mask") as tmp:
        out = fits.StreamingHDU(tmp, header)
        try:
            for y0 in range(0, ny, rows):
                strip: npt.NDArray[np.uint8] = np.asarray(arr[y0:min(y0 + rows, ny), :],
                                                          dtype=np.uint8)
                out.write(strip)
        finally:
            out.close()
    return path
