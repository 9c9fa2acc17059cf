"""Source positions for classify heads: input catalogs, ``sep`` detection, cutouts.

Input catalogs (``cnnpipe run --catalog FILE``) are read on the client
(:func:`read_catalog`) and converted to pixels of each image (:func:`to_pixels`); each
work unit then gets only the positions whose nearest pixel lies in it
(:func:`partition`), as small arrays inside its task.

* Formats, by file name: FITS table (``.fits``, ``.fit``, ``.fts``, optionally ``.gz``;
  the first table HDU), Parquet (``.parquet``, ``.pq``; read with pyarrow), CSV
  (``.csv``, ``.txt``; an ECSV header is used when present), ECSV (``.ecsv``), VOTable
  (``.vot``, ``.votable``, ``.xml``).
* Columns, matched case-insensitively: sky positions ``ra``/``dec`` (also ``raj2000``/
  ``dej2000``, ``ra_icrs``/``dec_icrs``, ...; degrees unless the column has another
  angle unit), converted with the image WCS (``all_world2pix``, origin 0, SIP included);
  or pixel positions ``x``/``y``, 0-based (numpy / astropy ``pixel_to_world``
  convention; ``origin=1`` for FITS / ds9 1-based positions).  Sky positions win when
  both are present.  An ``id`` column (also ``source_id``, ``objid``, ``object_id``,
  ``name``) is carried into the output; otherwise the row index is the id.
* Positions whose nearest pixel lies outside an image are dropped for that image (the
  number is logged); so are positions in work units without any data.

Without a catalog, :func:`detect_sources` finds sources with ``sep`` (SExtractor's
algorithms; Barbary 2016, JOSS 1, 58) in each unit's first model band: background
``sep.Background`` (64 px meshes, 3x3 filter) of the unit plus a margin, clipped to the
image; ``sep.extract`` at :data:`DETECT_SIGMA` times the global background rms with
``minarea`` :data:`DETECT_MINAREA` pixels and masked pixels masked.  A detection belongs
to the unit that holds its centroid's nearest pixel, so neighbouring units, which both
see a source straddling their border through the margin, keep it once.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cnnpipe.errors import InputError, WorkerError
from cnnpipe.pipeline.columns import FLAG_EDGE, FLAG_MASKED
from cnnpipe.pipeline.plan import Unit

__all__ = [
    "DETECT_MINAREA",
    "DETECT_SIGMA",
    "InputCatalog",
    "Positions",
    "cutouts",
    "detect_sources",
    "partition",
    "read_catalog",
    "to_pixels",
]

log = logging.getLogger(__name__)

#: detection threshold of :func:`detect_sources`, in units of the background rms
DETECT_SIGMA = 3.0
#: minimum number of connected pixels above the threshold
DETECT_MINAREA = 5

_RA = ("ra", "raj2000", "ra_j2000", "ra_icrs", "ra_deg", "alpha_j2000", "alpha")
_DEC = ("dec", "dej2000", "decj2000", "dec_j2000", "de_icrs", "dec_icrs", "dec_deg",
        "delta_j2000", "delta")
_ID = ("id", "source_id", "sourceid", "objid", "object_id", "name")


@dataclass(frozen=True, kw_only=True, eq=False)
class Positions:
    """Source positions in one image: ids, input row numbers, 0-based pixel ``x, y``."""

    ids: npt.NDArray[Any]
    row: npt.NDArray[np.int64]
    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.x.size)

    def take(self, idx: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> Positions:
        """The positions selected by ``idx``."""
        return Positions(ids=self.ids[idx], row=self.row[idx], x=self.x[idx], y=self.y[idx])

    @classmethod
    def empty(cls) -> Positions:
        """No positions."""
        return cls(ids=np.zeros(0, np.int64), row=np.zeros(0, np.int64), x=np.zeros(0),
                   y=np.zeros(0))


@dataclass(frozen=True, kw_only=True, eq=False)
class InputCatalog:
    """Positions read from a file: sky (``ra``/``dec``, deg) or 0-based pixels."""

    path: str
    ids: npt.NDArray[Any]
    a: npt.NDArray[np.float64]
    b: npt.NDArray[np.float64]
    sky: bool

    def __len__(self) -> int:
        return int(self.a.size)


def _find(names: Mapping[str, str], candidates: tuple[str, ...]) -> str | None:
    return next((names[c] for c in candidates if c in names), None)


def _read_table(path: str) -> tuple[dict[str, npt.NDArray[Any]], dict[str, str]]:
    """Columns and units (astropy unit strings, "" for none) of a catalog file."""
    lower = path.lower()
    for ext in (".gz", ".bz2", ".xz"):
        if lower.endswith(ext):
            lower = lower[: -len(ext)]
    if lower.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        cols = {n: table.column(n).to_numpy(zero_copy_only=False) for n in table.column_names}
        units = {}
        for f in table.schema:
            meta = f.metadata or {}
            units[f.name] = meta.get(b"unit", b"").decode()
        return cols, units
    if lower.endswith((".fits", ".fit", ".fts")):
        fmt = "fits"
    elif lower.endswith((".vot", ".votable", ".xml")):
        fmt = "votable"
    elif lower.endswith(".ecsv"):
        fmt = "ascii.ecsv"
    elif lower.endswith((".csv", ".txt")):
        with open(path, encoding="utf-8", errors="replace") as f:
            fmt = "ascii.ecsv" if f.readline().startswith("# %ECSV") else "ascii.csv"
    else:
        msg = (
            f"--catalog {path}: unknown catalog format. Expected a FITS table (.fits), "
            "Parquet (.parquet), CSV (.csv), ECSV (.ecsv) or VOTable (.vot/.xml) file."
        )
        raise InputError(msg)
    from astropy.table import Table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = Table.read(path, format=fmt)
    cols = {n: np.asarray(table[n]) for n in table.colnames}
    units = {n: str(table[n].unit) if table[n].unit is not None else "" for n in table.colnames}
    return cols, units


def _degrees(values: npt.NDArray[Any], unit: str, what: str, path: str) -> npt.NDArray[np.float64]:
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        msg = (
            f"--catalog {path}: column {what} is not numeric. Expected decimal degrees "
            "(sexagesimal strings are not read)."
        )
        raise InputError(msg) from None
    if unit and unit not in ("deg", "degree", "degrees"):
        import astropy.units as u

        try:
            v = (v * u.Unit(unit)).to_value(u.deg)
        except (ValueError, u.UnitsError):
            msg = f"--catalog {path}: column {what} has unit {unit!r}. Expected an angle."
            raise InputError(msg) from None
    return v


def read_catalog(path: str | os.PathLike[str], *, origin: int = 0) -> InputCatalog:
    """Read source positions from a catalog file (module docstring).

    Parameters
    ----------
    path : str
        Catalog file.
    origin : {0, 1}
        Pixel convention of ``x``/``y`` columns: 0 (numpy / astropy, default) or 1
        (FITS / ds9).  Sky positions ignore it.

    Raises
    ------
    InputError
        Unreadable file, unknown format, or no ra/dec nor x/y columns.
    """
    path = os.fspath(path)
    if origin not in (0, 1):
        msg = f"--catalog-origin: expected 0 or 1. Got {origin!r}."
        raise InputError(msg)
    try:
        cols, units = _read_table(path)
    except InputError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        msg = f"--catalog {path}: cannot read it ({type(exc).__name__}: {first})."
        raise InputError(msg) from None
    names = {n.lower(): n for n in cols}
    ra, dec = _find(names, _RA), _find(names, _DEC)
    xs, ys = names.get("x"), names.get("y")
    n = len(next(iter(cols.values()))) if cols else 0
    id_col = _find(names, _ID)
    if id_col is not None:
        ids = np.asarray(cols[id_col])
        ids = ids.astype(np.int64) if ids.dtype.kind in "iub" else ids.astype(str)
    else:
        ids = np.arange(n, dtype=np.int64)
    if ra is not None and dec is not None:
        return InputCatalog(path=path, ids=ids, sky=True,
                            a=_degrees(cols[ra], units.get(ra, ""), ra, path),
                            b=_degrees(cols[dec], units.get(dec, ""), dec, path))
    if xs is not None and ys is not None:
        try:
            x = np.asarray(cols[xs], dtype=np.float64) - origin
            y = np.asarray(cols[ys], dtype=np.float64) - origin
        except (TypeError, ValueError):
            msg = f"--catalog {path}: columns {xs}/{ys} are not numeric pixel positions."
            raise InputError(msg) from None
        return InputCatalog(path=path, ids=ids, a=x, b=y, sky=False)
    msg = (
        f"--catalog {path}: no position columns. Expected ra/dec (deg; also RAJ2000/"
        f"DEJ2000, RA_ICRS/DEC_ICRS) or x/y (pixels). Got columns {sorted(cols)}."
    )
    raise InputError(msg)


def _world2pix(wcs: Any, lon: npt.NDArray[np.float64],
               lat: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], ...]:
    """``all_world2pix(lon, lat, 0)``; NaN where the inverse did not truly converge.

    A distortion (SIP) far outside its image can fold, and the iterative inverse then
    stops at a wrong pixel; a round trip through ``all_pix2world`` that misses the input
    by more than 1e-4 pixel marks such positions.
    """
    from astropy.wcs.utils import proj_plane_pixel_scales

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        x, y = wcs.all_world2pix(lon, lat, 0, tolerance=1e-7, maxiter=100, quiet=True)
        blon, blat = wcs.all_pix2world(x, y, 0)
        scale = float(np.mean(proj_plane_pixel_scales(wcs.celestial)))
        dlon = ((blon - lon + 180.0) % 360.0 - 180.0) * np.cos(np.deg2rad(lat))
        miss = np.hypot(dlon, blat - lat) / scale
    bad = ~(miss < 1e-4)
    x, y = np.where(bad, np.nan, x), np.where(bad, np.nan, y)
    return np.asarray(x, np.float64), np.asarray(y, np.float64)


def to_pixels(cat: InputCatalog, wcs: Any, shape: tuple[int, int], *, key: str) -> Positions:
    """The catalog's positions inside an image of ``shape``, as 0-based pixels.

    Sky positions go through ``wcs.all_world2pix(ra, dec, 0)`` (SIP included; positions
    where its inverse does not converge count as off the image); positions whose
    nearest pixel ``(floor(y + 0.5), floor(x + 0.5))`` is outside the image, or that are
    not finite, are dropped (logged).

    Raises
    ------
    InputError
        Sky positions but the image has no WCS.
    """
    if cat.sky:
        if wcs is None:
            msg = (
                f"--catalog {cat.path} gives ra/dec but image {key} has no celestial WCS; "
                "give x/y pixel columns instead."
            )
            raise InputError(msg)
        x, y = _world2pix(wcs, cat.a, cat.b)
    else:
        x, y = cat.a, cat.b
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    with np.errstate(invalid="ignore"):
        ix, iy = np.floor(x + 0.5), np.floor(y + 0.5)
        inside = (ix >= 0) & (ix < shape[1]) & (iy >= 0) & (iy < shape[0])
    if (~inside).any():
        log.info("--catalog %s: %d of %d positions are outside image %s; dropped.",
                 cat.path, int((~inside).sum()), x.size, key)
    rows = np.arange(x.size, dtype=np.int64)
    return Positions(ids=cat.ids[inside], row=rows[inside], x=x[inside], y=y[inside])


def partition(pos: Positions, *, tile: int) -> dict[tuple[int, int], Positions]:
    """Positions per work unit ``(uy, ux)``: the unit holding each one's nearest pixel."""
    uy = (np.floor(pos.y + 0.5) // tile).astype(np.int64)
    ux = (np.floor(pos.x + 0.5) // tile).astype(np.int64)
    out: dict[tuple[int, int], Positions] = {}
    if len(pos) == 0:
        return out
    order = np.lexsort((ux, uy))
    keys = np.stack([uy[order], ux[order]], axis=1)
    starts = np.flatnonzero(np.r_[True, (np.diff(keys, axis=0) != 0).any(axis=1)])
    for a, b in zip(starts, np.r_[starts[1:], order.size]):
        out[(int(keys[a, 0]), int(keys[a, 1]))] = pos.take(order[a:b])
    return out


def _in_unit(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64],
             unit: Unit) -> npt.NDArray[np.bool_]:
    ix, iy = np.floor(x + 0.5), np.floor(y + 0.5)
    return (ix >= unit.x0) & (ix < unit.x1) & (iy >= unit.y0) & (iy < unit.y1)


def detect_sources(
    pixels: npt.NDArray[np.float32],
    origin: tuple[int, int],
    unit: Unit,
    image_shape: tuple[int, int],
    *,
    margin: int,
    thresh: float = DETECT_SIGMA,
    minarea: int = DETECT_MINAREA,
) -> Positions:
    """Sources found by ``sep`` around a unit whose centroid lies in the unit.

    Parameters
    ----------
    pixels : (h, w) float32
        One band of the unit's read window (NaN = no data); must cover the unit ±
        ``margin`` where that is inside the image.
    origin : (y, x)
        Image coordinates of ``pixels[0, 0]``.
    unit : Unit
        The work unit.
    image_shape : (ny, nx)
        Image shape (the detection region is clipped to it: no mirrored sources).
    margin : int
        Pixels around the unit searched, so that sources on the border are whole.
    thresh, minarea : float, int
        Detection threshold (x global background rms) and minimum area (px).

    Returns
    -------
    Positions
        ``ids`` -1 (numbered at the merge), ``row`` -1.
    """
    import sep

    oy, ox = origin
    y0, y1 = max(0, unit.y0 - margin), min(image_shape[0], unit.y1 + margin)
    x0, x1 = max(0, unit.x0 - margin), min(image_shape[1], unit.x1 + margin)
    data = np.ascontiguousarray(pixels[y0 - oy:y1 - oy, x0 - ox:x1 - ox], dtype=np.float32)
    bad = ~np.isfinite(data)
    data[bad] = 0.0
    try:
        bkg = sep.Background(data, mask=bad, bw=64, bh=64, fw=3, fh=3)
        rms = float(bkg.globalrms)
        if not rms > 0:
            return Positions.empty()
        objs = sep.extract(data - bkg.back(), thresh, err=rms, mask=bad, minarea=minarea)
    except Exception as exc:
        msg = f"sep source detection failed in unit ({unit.uy}, {unit.ux}): {exc}"
        raise WorkerError(msg) from None
    x = np.asarray(objs["x"], np.float64) + x0
    y = np.asarray(objs["y"], np.float64) + y0
    keep = _in_unit(x, y, unit)
    n = int(keep.sum())
    return Positions(ids=np.full(n, -1, np.int64), row=np.full(n, -1, np.int64),
                     x=x[keep], y=y[keep])


def cutouts(
    pixels: npt.NDArray[np.float32],
    origin: tuple[int, int],
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    *,
    patch: tuple[int, int],
    image_shape: tuple[int, int],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Patch-sized cutouts centred on positions, and their flags.

    The cutout of ``(x, y)`` covers rows ``iy - py // 2 ... iy - py // 2 + py - 1`` with
    ``iy = floor(y + 0.5)`` (columns alike): the source's pixel is at ``(py // 2,
    px // 2)``.  Beyond the image the read window holds reflected pixels
    (:data:`cnnpipe.pipeline.sources.REFLECT_MODE`).

    Parameters
    ----------
    pixels : (c, h, w) float32
        The model's bands of the unit's read window (NaN = no data).
    origin : (y, x)
        Image coordinates of ``pixels[:, 0, 0]``.
    x, y : (n,) float64
        Positions, 0-based pixels; their cutouts must lie inside the window.
    patch : (py, px)
        Cutout size.
    image_shape : (ny, nx)
        Image shape.

    Returns
    -------
    cut : (n, c, py, px) float32
    flags : (n,) uint8
        ``FLAG_MASKED`` when a cutout holds pixels without data, ``FLAG_EDGE`` when it
        reaches beyond the image.
    """
    py, px = patch
    oy, ox = origin
    ys = (np.floor(y + 0.5).astype(np.int64) - py // 2)
    xs = (np.floor(x + 0.5).astype(np.int64) - px // 2)
    c = pixels.shape[0]
    cut = np.empty((ys.size, c, py, px), np.float32)
    for k, (a, b) in enumerate(zip(ys - oy, xs - ox)):
        cut[k] = pixels[:, a:a + py, b:b + px]
    edge = (ys < 0) | (xs < 0) | (ys + py > image_shape[0]) | (xs + px > image_shape[1])
    masked = ~np.isfinite(cut).all(axis=(1, 2, 3)) if ys.size else np.zeros(0, bool)
    flags = (masked * FLAG_MASKED | edge * FLAG_EDGE).astype(np.uint8)
    return cut, flags
