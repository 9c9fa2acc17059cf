"""Catalog fragments and the merge step: per-unit fragments -> ``catalogs/<model>/``.

Store layout (DESIGN §6)::

    images/<key>/<model>/fragments/<uy>_<ux>    one byte array per done unit: the .npz
                                                 of the head's fragment, attrs n_rows
    catalogs/<model>/                           one 1-D array per column, dimension
                                                 "row"; column attrs unit, description,
                                                 dtype; group attrs schema, model, task,
                                                 n_rows, world, flags

A worker writes its unit's fragment (:func:`write_fragment`, replacing any fragment a
failed earlier attempt left: a retried unit never adds rows twice) *before* it marks the
unit done in the ledger, so every done unit has a complete fragment.  Once every unit of
every image is done or blank, the client runs :func:`merge_catalogs`: it reads the
fragments of the done units, lets the model's head merge them per image (segments joined
across unit borders, craters de-duplicated), adds the image key, the model name and
world coordinates (``astropy.wcs.WCS.all_pix2world(x, y, 0)`` of the header stored with
the image, SIP included) and physical sizes, and rewrites ``catalogs/<model>/`` as a
whole: the merge is idempotent, a rerun or resume writes the same catalog.

Physical scales (:func:`local_scale`):

* pixel solid angle: ``|det J|`` of the Jacobian of ``all_pix2world`` at the row's
  position (central differences of ±0.5 px; longitude differences times ``cos(lat)``),
  in arcsec²; for body-fixed maps the same in planetocentric degrees² (×3600²);
* km per pixel (body-fixed images only: a body-fixed CTYPE such as ``SELN``/``MALN``,
  or ``BODYRAD`` / ``A_RADIUS`` cards): the ``PIXSCALE`` card (km/px) when present,
  else the mean of ``proj_plane_pixel_scales`` (deg/px, no ``cos(lat)`` stretch: the
  map scale) times ``A_RADIUS`` (m) in km; NaN otherwise.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync

from cnnpipe.errors import StoreError
from cnnpipe.modelmeta import ModelMeta
from cnnpipe.pipeline.columns import FLAGS_DESCRIPTION, Column, world_columns
from cnnpipe.pipeline.heads import Fragment, Scale, head_for
from cnnpipe.pipeline.store import UnitState, store_header, store_wcs, writing

__all__ = [
    "SKY_LONGITUDES",
    "build_catalog",
    "local_scale",
    "merge_catalogs",
    "read_catalog_columns",
    "read_fragment",
    "store_world",
    "wcs_kind",
    "write_catalog",
    "write_fragment",
]

log = logging.getLogger(__name__)

#: longitude CTYPE prefixes of sky (not body-fixed) frames
SKY_LONGITUDES = ("RA", "GLON", "ELON", "SLON", "HPLN", "HGLN", "CRLN")
_BODY_LNG = re.compile(r"^[A-Z]{2}LN$")
_ROW_CHUNK = 1 << 18
_SCALE_ROWS = 1 << 18
#: every chunk of a column is written: zarr's check that a chunk is all fill value first
#: (to skip it) took a quarter of writing a small catalog (0.5 ms a column)
_WRITE_ALL = {"write_empty_chunks": True}


def fragment_path(key: str, model: str, uy: int, ux: int) -> str:
    """Store path of one unit's fragment group."""
    return f"images/{key}/{model}/fragments/{uy}_{ux}"


async def _write_column(group: Any, name: str, values: npt.NDArray[Any],
                        attributes: Mapping[str, Any]) -> None:
    """Create and write one 1-D column: numeric as is, strings as variable-length UTF-8."""
    values = np.asarray(values)
    n = int(values.size)
    chunks = (max(1, min(n, _ROW_CHUNK)),)
    if values.dtype.kind in "OUST":
        arr = await group.create_array(name, shape=(n,), dtype=str, chunks=chunks,
                                       dimension_names=("row",), attributes=dict(attributes),
                                       config=_WRITE_ALL)
        # a chunk at a time: encoding turns every value into a Python string (~200 bytes
        # a row while a column is written; a whole 1M-row column took 192 MiB at once)
        for a in range(0, n, chunks[0]):
            await arr.setitem(slice(a, a + chunks[0]),
                              np.asarray(values[a:a + chunks[0]], dtype=str))
        return
    arr = await group.create_array(name, shape=(n,), dtype=values.dtype, chunks=chunks,
                                   dimension_names=("row",), attributes=dict(attributes),
                                   fill_value=0, config=_WRITE_ALL)
    if n:
        await arr.setitem(slice(None), values)


async def _write_columns(group: Any, columns: Sequence[tuple[str, npt.NDArray[Any],
                                                           Mapping[str, Any]]]) -> None:
    """Every column at once, the string ones one after another.

    Concurrently, the files of ~20 small columns are created and written in 25-35 ms
    instead of ~70 ms (most of a 4096² run's catalog merge).  String columns, whose
    encoding holds a Python string per row of the chunk being written, go one at a
    time, so the merge's peak memory stays that of one string chunk.
    """
    text = [np.asarray(c[1]).dtype.kind in "OUST" for c in columns]

    async def one_by_one() -> None:
        for c, t in zip(columns, text):
            if t:
                await _write_column(group, *c)

    await asyncio.gather(one_by_one(), *(_write_column(group, *c)
                                         for c, t in zip(columns, text) if not t))


def _read_array(arr: Any) -> npt.NDArray[Any]:
    v = np.asarray(arr[...])
    if v.dtype.kind not in "biufc":  # zarr's StringDType: plain Python strings
        return v.astype(object)
    return v


def _pack(frag: Fragment) -> bytes:
    """A fragment as the bytes of an ``.npz`` (strings as fixed-width unicode, no pickle)."""
    buf = io.BytesIO()
    cols = {}
    for name, values in frag.items():
        v = np.asarray(values)
        cols[name] = v.astype(str) if v.dtype.kind in "OUS" else v
    np.savez(buf, allow_pickle=False, **cols)
    return buf.getvalue()


def _unpack(blob: bytes) -> Fragment:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {name: (z[name].astype(object) if z[name].dtype.kind == "U" else z[name])
                for name in z.files}


def write_fragment(store: str, key: str, model: str, uy: int, ux: int, frag: Fragment) -> None:
    """Write (replace) one unit's catalog fragment (worker side, before the ledger).

    The fragment is one Zarr array of bytes (one chunk, zstd): the ``.npz`` of its
    columns (numpy's documented format; no pickle), ``attrs``: format ``npz``, the column
    names and ``n_rows``.  One node per unit instead of one array per column: two files
    instead of ~40 (what a parallel file system notices over thousands of units), and
    the write takes ~1 ms instead of ~30 ms.
    """
    from zarr.codecs import ZstdCodec

    path = fragment_path(key, model, uy, ux)
    blob = np.frombuffer(_pack(frag), np.uint8)
    sizes = [int(np.asarray(v).size) for n, v in frag.items() if not n.startswith("edge_")]
    with writing(store, f"the catalog fragment {path}"):
        arr = zarr.create_array(
            store, name=path, shape=blob.shape, dtype="uint8", chunks=blob.shape,
            compressors=[ZstdCodec(level=1)], dimension_names=("byte",), overwrite=True,
            attributes={"format": "npz", "columns": list(frag), "n_rows": max(sizes, default=0)},
        )
        arr[:] = blob


def read_fragment(store: str, key: str, model: str, uy: int, ux: int) -> Fragment:
    """Read one unit's catalog fragment (also the group-of-columns layout of cnnpipe 0.1).

    Raises
    ------
    StoreError
        The unit is done in the ledger but its fragment is missing.
    """
    path = fragment_path(key, model, uy, ux)
    try:
        node = zarr.open(store, path=path, mode="r")
    except FileNotFoundError:
        msg = (
            f"{store}: unit ({uy}, {ux}) of image {key}, model {model} is done but has no "
            f"catalog fragment ({path}). Rerun with --overwrite."
        )
        raise StoreError(msg) from None
    if isinstance(node, zarr.Group):
        return {name: _read_array(arr) for name, arr in node.arrays()}
    return _unpack(np.asarray(node[...]).tobytes())


# -- world coordinates and scales ------------------------------------------------------


def wcs_kind(wcs: Any) -> str | None:
    """``"equatorial"`` (RA/Dec), ``"other"`` (any other celestial frame) or None."""
    if wcs is None:
        return None
    return "equatorial" if str(wcs.wcs.lngtyp).strip() == "RA" else "other"


def _is_body(wcs: Any, header: Any) -> bool:
    lng = str(wcs.wcs.lngtyp).strip() if wcs is not None else ""
    if lng in SKY_LONGITUDES:
        return False
    return bool(_BODY_LNG.match(lng)) or any(k in header for k in ("BODYRAD", "A_RADIUS"))


def _pixel_area(wcs: Any, x: npt.NDArray[np.float64],
                y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """|det J| of ``all_pix2world`` at ``(x, y)`` in arcsec² (central differences)."""
    n, h = x.size, 0.5
    px = np.concatenate([x + h, x - h, x, x])
    py = np.concatenate([y, y, y + h, y - h])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        lon, lat = wcs.all_pix2world(px, py, 0)
    lon, lat = lon.reshape(4, n), lat.reshape(4, n)
    coslat = np.cos(np.deg2rad(lat.mean(axis=0)))
    dlon_x = ((lon[0] - lon[1] + 180.0) % 360.0 - 180.0) * coslat
    dlon_y = ((lon[2] - lon[3] + 180.0) % 360.0 - 180.0) * coslat
    det = dlon_x * (lat[2] - lat[3]) - dlon_y * (lat[0] - lat[1])
    return np.asarray(np.abs(det) * 3600.0**2, np.float64)


def local_scale(wcs: Any, header: Any, x: npt.NDArray[np.float64],
                y: npt.NDArray[np.float64]) -> Scale:
    """Pixel solid angle and km per pixel at positions ``(x, y)`` (module docstring)."""
    n = x.size
    area = np.full(n, np.nan)
    km = np.full(n, np.nan)
    body = _is_body(wcs, header)
    if wcs is not None:
        for a in range(0, n, _SCALE_ROWS):  # 16 float64s a row while at it: in slices
            b = min(a + _SCALE_ROWS, n)
            area[a:b] = _pixel_area(wcs, x[a:b], y[a:b])
    if body:
        if "PIXSCALE" in header:
            km[:] = float(header["PIXSCALE"])
        elif "A_RADIUS" in header and wcs is not None:
            from astropy.wcs.utils import proj_plane_pixel_scales

            deg = float(np.mean(proj_plane_pixel_scales(wcs.celestial)))
            km[:] = np.deg2rad(deg) * float(header["A_RADIUS"]) / 1000.0
    sky = np.full(n, wcs is not None and not body)
    return Scale(pixel_area_arcsec2=area, km_per_px=km, sky=sky)


# -- the merge ----------------------------------------------------------------------------


def _image_rows(store: str, key: str, meta: ModelMeta, pool: ThreadPoolExecutor,
                world: Sequence[Column]) -> Fragment:
    head = head_for(meta)
    attrs: Any = zarr.open_group(store, path=f"images/{key}", mode="r").attrs.asdict()
    shape = (int(attrs["shape"][0]), int(attrs["shape"][1]))
    ledger = np.asarray(zarr.open_array(store, path=f"images/{key}/{meta.name}/tiles",
                                        mode="r")[...])
    done = [(int(a), int(b)) for a, b in zip(*np.nonzero(ledger == UnitState.DONE))]
    frags = dict(zip(done, pool.map(
        lambda u: read_fragment(store, key, meta.name, u[0], u[1]), done)))
    rows = head.merge(frags, image_shape=shape)
    del frags  # the merged rows are what is kept
    n = int(np.asarray(rows["x"]).size)
    x, y = np.asarray(rows["x"], np.float64), np.asarray(rows["y"], np.float64)
    wcs = store_wcs(store, key) if attrs.get("has_wcs") else None
    kind = wcs_kind(wcs)
    for col in world:
        rows[col.name] = np.full(n, np.nan)
    if wcs is not None and n:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lon, lat = wcs.all_pix2world(x, y, 0)
        names = ("ra", "dec") if kind == "equatorial" else ("lon", "lat")
        rows[names[0]], rows[names[1]] = np.asarray(lon), np.asarray(lat)
    head.physical(rows, local_scale(wcs, store_header(store, key), x, y))
    rows["image"] = _constant(n, key)
    rows["model"] = _constant(n, meta.name)
    return rows


def _constant(n: int, value: str) -> npt.NDArray[np.object_]:
    """``n`` references to one string.

    ``np.full(n, value, dtype=object)`` makes ``n`` copies of it: ~55 bytes a row, per
    column, for the life of the merge.
    """
    out = np.empty(n, dtype=object)
    out.fill(value)
    return out


def _as_dtype(values: npt.NDArray[Any], dtype: str) -> npt.NDArray[Any]:
    if dtype == "str":
        return np.asarray([str(v) for v in values], dtype=object)
    return np.asarray(values).astype(dtype)


def store_world(store: str, keys: Sequence[str]) -> list[Column]:
    """The world-coordinate columns of a store's catalogs (from its images' WCSs)."""
    kinds = []
    for key in keys:
        attrs: Any = zarr.open_group(store, path=f"images/{key}", mode="r").attrs.asdict()
        if attrs.get("has_wcs"):
            kinds.append(wcs_kind(store_wcs(store, key)))
    return world_columns([k for k in kinds if k])


def build_catalog(
    store: str, meta: ModelMeta, keys: Sequence[str], *, world: Sequence[Column] | None = None
) -> tuple[list[Column], dict[str, npt.NDArray[Any]]]:
    """Schema and columns of one model's catalog from the fragments of the done units.

    Reads only; :func:`merge_catalogs` writes the result into the store.
    """
    world = store_world(store, keys) if world is None else world
    with ThreadPoolExecutor(max_workers=8) as pool:
        per_image = [_image_rows(store, key, meta, pool, world) for key in keys]
    str_ids = any(np.asarray(r["id"]).dtype.kind in "OUS" for r in per_image if "id" in r)
    schema = head_for(meta).columns(world, id_dtype="str" if str_ids else "i8")
    # column by column, each image's part dropped once joined: one copy of the rows at a
    # time, not two (the per-image rows were held until the last column was built)
    columns = {
        c.name: _as_dtype(np.concatenate([np.asarray(r.pop(c.name)) for r in per_image])
                          if per_image else np.zeros(0), c.dtype)
        for c in schema
    }
    return schema, columns


def merge_catalogs(store: str, models: Sequence[ModelMeta], keys: Sequence[str]) -> dict[str, int]:
    """Merge the fragments of every model into ``catalogs/<model>/`` (client side).

    Parameters
    ----------
    store : str
        The run store (every unit of ``keys`` done or blank).
    models : sequence of ModelMeta
        The run's models.
    keys : sequence of str
        The images, in run order (rows are concatenated in this order).

    Returns
    -------
    dict
        Rows per model.
    """
    world = store_world(store, keys)
    counts = {}
    for meta in models:
        schema, columns = build_catalog(store, meta, keys, world=world)
        write_catalog(store, meta, schema, columns, world=[c.name for c in world])
        counts[meta.name] = int(columns["x"].size)
        log.info("catalog %s: %d rows", meta.name, counts[meta.name])
    return counts


def write_catalog(store: str, meta: ModelMeta, schema: Sequence[Column],
                  columns: Mapping[str, npt.NDArray[Any]], *, world: Sequence[str]) -> None:
    """(Re)write ``catalogs/<model>/`` from whole columns (replaces the old catalog)."""
    with writing(store, f"the catalog catalogs/{meta.name}"):
        _write_catalog(store, meta, schema, columns, world=world)


def _write_catalog(store: str, meta: ModelMeta, schema: Sequence[Column],
                   columns: Mapping[str, npt.NDArray[Any]], *, world: Sequence[str]) -> None:
    root = zarr.open_group(store, mode="r+")
    cats = root.require_group("catalogs")
    n = int(np.asarray(columns[schema[0].name]).size)
    cats.create_group(meta.name, overwrite=True, attributes={  # attributes: one write
        "schema": [c.to_dict() for c in schema], "model": meta.name, "task": meta.task.value,
        "n_rows": n, "world": list(world), "classes": list(meta.output.classes),
        "flags": {"1": "touches pixels without data", "2": "touches the image edge",
                  "description": FLAGS_DESCRIPTION},
        "pixel_convention": "0-based, pixel centres on integers (numpy / astropy "
                            "pixel_to_world); FITS/ds9 pixel = x + 1",
    })

    async def write() -> None:
        g = await zarr.api.asynchronous.open_group(store=store, path=f"catalogs/{meta.name}",
                                                    mode="r+")
        await _write_columns(g, [(c.name, columns[c.name], {
            "unit": c.unit, "description": c.description, "dtype": c.dtype}) for c in schema])

    sync(write())


def read_catalog_columns(
    store: str | os.PathLike[str], model: str
) -> tuple[list[Column], dict[str, npt.NDArray[Any]], dict[str, Any]]:
    """Schema, columns and group attributes of ``catalogs/<model>/``.

    Raises
    ------
    StoreError
        The store has no catalog of that model (the message lists those it has).
    """
    path = os.fspath(store)
    try:
        cats = zarr.open_group(path, path="catalogs", mode="r")
    except FileNotFoundError:
        cats = None
    names = sorted(cats.group_keys()) if cats is not None else []
    if cats is None or model not in names:
        msg = (
            f"{path} has no catalog of model {model!r}. Catalogs in it: "
            f"{', '.join(names) or 'none (the run has not finished its merge step)'}."
        )
        raise StoreError(msg)
    g = zarr.open_group(path, path=f"catalogs/{model}", mode="r")
    attrs: dict[str, Any] = g.attrs.asdict()
    schema = [Column(d["name"], d["dtype"], d["unit"], d["description"])
              for d in attrs["schema"]]
    columns = {c.name: _read_array(g[c.name]) for c in schema}
    return schema, columns, attrs
