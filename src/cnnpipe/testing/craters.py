"""Seeded planetary crater-field simulator: DEM, shaded relief, rim mask, truth catalog.

* :func:`make_crater_catalog` draws craters (vectorised numpy + k-d tree pair searches):
  uniform centres, radii from a truncated power law ``N(>R) ∝ R^-slope`` on
  ``[r_min, r_max]`` px, in formation order (``id``).
* :func:`render_crater_window` / :func:`render_crater_dem` render any window in memory,
  bit for bit what the same pixels hold in the whole image.
* :func:`write_craters` streams the image (and optionally the DEM), the rim mask and the
  truth catalog to files, one strip of rows at a time.

Terrain model.  The DEM (m) starts as a few long-wavelength sinusoids; craters then form
one after another.  Crater ``k`` (radius ``R``, centre ``c``) sets::

    h <- relief_k(r / R) + w(r / R) * base_k + (1 - w(r / R)) * h

with ``relief`` a parabolic bowl of depth ``~0.196 D`` inside a rim of height
``~0.036 D`` (Pike 1977) and an ``r^-3`` ejecta blanket out to 3 R, and ``w`` = 1 inside
the rim tapering to 0 at 1.3 R (:mod:`cnnpipe.testing._render`): a later crater erases
(overprints) what was inside its rim.  ``base_k`` is the surface the crater formed on,
taken at its centre from the background plus the reliefs of earlier craters whose
1.5 R reach covers it (an additive approximation that keeps windows exact).

The image is Lambertian shaded relief (Sun azimuth clockwise from north, +y, towards
east, +x; default from the west at 20 deg elevation) plus Gaussian noise.  The rim mask
is 1 on ``|r - R| <= rim_halfwidth`` of every crater, drawn in formation order, with each
crater clearing the older rims inside ``r < R - rim_halfwidth``.

World coordinates.  An equirectangular (plate carrée) map, planetocentric, east-positive
longitude increasing with x and latitude with y, in the IAU planetary FITS WCS convention
(Marmo et al. 2018, Earth Space Sci. 5, 640): ``CTYPE1/2 = 'SELN-CAR'/'SELT-CAR'`` for the
Moon (``'MALN'``, ``'MELN'`` for Mars, Mercury), ``WCSNAME = 'Bodycentric Body-Fixed'`` and
``A_RADIUS = B_RADIUS = C_RADIUS`` (m).  Plain cards repeat it for other readers: ``BODY``,
``BODYRAD`` (km) and ``PIXSCALE`` (km / px, along the equator and meridians).  astropy
reads this as a celestial WCS; use ``WCS.all_pix2world`` for lon/lat — astropy 8's
``pixel_to_world`` raises for body-fixed frames ("Cannot create a SkyCoord without
data").  ``diameter_km = 2 * radius_px * PIXSCALE`` (map scale; no 1/cos(lat) stretch).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from astropy.io import fits
from astropy.wcs import WCS

from cnnpipe.errors import ConfigError
from cnnpipe.testing._craterfield import (
    BODIES,
    CRATER_CLASSES,
    CraterCatalog,
    make_crater_catalog,
    render_crater_dem,
    render_crater_layers,
    render_crater_window,
)
from cnnpipe.testing._io import (
    SimulationFiles,
    check_outputs,
    output_stem,
    truth_path,
    write_table,
)
from cnnpipe.testing.fitswrite import ImageSpec, StreamingFitsWriter

__all__ = [
    "BODIES",
    "CRATER_CLASSES",
    "CraterCatalog",
    "crater_files",
    "crater_header",
    "crater_truth_columns",
    "make_crater_catalog",
    "render_crater_dem",
    "render_crater_layers",
    "render_crater_window",
    "write_craters",
]


def crater_header(catalog: CraterCatalog) -> fits.Header:
    """Planetary WCS cards (module docstring): plate carrée, planetocentric, IAU style.

    Returns
    -------
    astropy.io.fits.Header
        WCS and body cards only (no NAXIS).
    """
    ny, nx = catalog.shape
    prefix = BODIES[catalog.body][0]
    deg_per_px = float(np.rad2deg(catalog.pixscale_km / catalog.body_radius_km))
    hdr = fits.Header()
    hdr["WCSAXES"] = 2
    hdr["WCSNAME"] = ("Bodycentric Body-Fixed", "planetocentric coordinates")
    hdr["CTYPE1"] = (f"{prefix}LN-CAR", "planetocentric longitude, plate carree")
    hdr["CTYPE2"] = (f"{prefix}LT-CAR", "planetocentric latitude, plate carree")
    hdr["CUNIT1"], hdr["CUNIT2"] = "deg", "deg"
    hdr["CRPIX1"] = ((nx + 1) / 2.0, "image centre, 1-based FITS pixels")
    hdr["CRPIX2"] = ((ny + 1) / 2.0 - catalog.lat0 / deg_per_px, "equator row")
    hdr["CRVAL1"] = (catalog.lon0, "[deg] east longitude of the centre")
    hdr["CRVAL2"] = (0.0, "[deg] reference on the equator")
    hdr["CDELT1"] = (deg_per_px, "[deg/px] PIXSCALE / BODYRAD")
    hdr["CDELT2"] = deg_per_px
    radius_m = catalog.body_radius_km * 1000.0
    hdr["A_RADIUS"] = (radius_m, "[m] body equatorial radius")
    hdr["B_RADIUS"] = (radius_m, "[m] body equatorial radius")
    hdr["C_RADIUS"] = (radius_m, "[m] body polar radius")
    hdr["BODY"] = (catalog.body, "target body")
    hdr["BODYRAD"] = (catalog.body_radius_km, "[km] body mean radius")
    hdr["PIXSCALE"] = (catalog.pixscale_km, "[km/px] map scale")
    return hdr


def crater_truth_columns(catalog: CraterCatalog) -> dict[str, npt.NDArray[Any]]:
    """The truth catalog: one row per crater, in formation (``id``) order.

    Columns: ``id``; ``x``, ``y`` (px, 0-based centre, numpy / astropy convention);
    ``radius_px`` (rim radius, px); ``lon``, ``lat`` (deg, planetocentric, east-positive,
    from the WCS); ``diameter_km``; ``depth_m``; ``visible`` (some rim survives later
    craters); ``rim_visible_frac`` (fraction of the rim that does).
    """
    world = WCS(crater_header(catalog)).all_pix2world(catalog.x, catalog.y, 0)
    return {
        "id": np.arange(len(catalog), dtype=np.int64),
        "x": catalog.x,
        "y": catalog.y,
        "radius_px": catalog.radius,
        "lon": np.asarray(world[0]),
        "lat": np.asarray(world[1]),
        "diameter_km": 2.0 * catalog.radius * catalog.pixscale_km,
        "depth_m": catalog.depth_m,
        "visible": catalog.visible,
        "rim_visible_frac": catalog.rim_visible,
    }


_UNITS = {"x": "pix", "y": "pix", "radius_px": "pix", "lon": "deg", "lat": "deg",
          "diameter_km": "km", "depth_m": "m"}  # fmt: skip
_DESCRIPTIONS = {
    "id": "formation order (later craters overprint earlier ones)",
    "x": "pixel column, 0-based, pixel centres on integers (numpy / astropy convention)",
    "y": "pixel row, 0-based, pixel centres on integers (numpy / astropy convention)",
    "radius_px": "rim radius",
    "lon": "planetocentric east longitude from the image WCS",
    "lat": "planetocentric latitude from the image WCS",
    "diameter_km": "rim diameter at the map scale",
    "depth_m": "bowl depth below the pre-existing surface",
    "visible": "part of the rim survives later craters",
    "rim_visible_frac": "fraction of the rim outside later craters' rims",
}


def crater_files(
    out: str | os.PathLike[str], *, truth: str | os.PathLike[str] | None = None
) -> SimulationFiles:
    """The files :func:`write_craters` writes for these arguments (nothing is touched)."""
    out = Path(out)
    stem = output_stem(out)
    mask = stem.with_name(stem.name + ".mask.fits")
    return SimulationFiles(images=(out,), mask=mask, truth=truth_path(out, truth))


def write_craters(
    catalog: CraterCatalog,
    out: str | os.PathLike[str],
    *,
    truth: str | os.PathLike[str] | None = None,
    dem: bool = False,
    noise: bool = True,
    overwrite: bool = False,
    strip_rows: int = 256,
) -> SimulationFiles:
    """Write the image (+ DEM extension), rim mask and truth catalog, streaming strips.

    Files: ``OUT`` (primary HDU: shaded relief, float32; with ``dem`` a second HDU
    ``EXTNAME = 'DEM'``, float32 m), ``OUT.mask.fits`` (uint8 rim mask, same WCS) and
    ``truth`` or ``OUT.truth.parquet`` (a FITS table when the name ends in ``.fits``).

    Returns
    -------
    SimulationFiles
    """
    if strip_rows < 1:
        msg = f"Expected strip_rows >= 1. Got {strip_rows}."
        raise ConfigError(msg)
    out = Path(out)
    files = crater_files(out, truth=truth)
    mask_path, table_path = files.mask, files.truth
    check_outputs(list(files.all), overwrite=overwrite)

    ny, nx = catalog.shape
    wcs = crater_header(catalog)
    common = fits.Header()
    common["ORIGIN"] = "cnnpipe simulate"
    common["SIMKIND"] = ("craters", "simulated crater field")
    common["SIMSEED"] = (catalog.seed, "random seed")
    img = wcs.copy()
    img.extend(common)
    img["COMMENT"] = "Pixel values: Lambertian reflectance; flat ground reads ALBEDO."
    img["ALBEDO"] = catalog.albedo
    img["SUNAZ"] = (catalog.sun_azimuth, "[deg] Sun azimuth, clockwise from north (+y)")
    img["SUNELEV"] = (catalog.sun_elevation, "[deg] Sun elevation")
    specs = [ImageSpec(shape=(ny, nx), cards=img)]
    if dem:
        dcards = wcs.copy()
        dcards["EXTNAME"] = "DEM"
        dcards["BUNIT"] = ("m", "elevation relative to BODYRAD")
        specs.append(ImageSpec(shape=(ny, nx), cards=dcards))
    mcards = wcs.copy()
    mcards.extend(common)
    mcards["EXTNAME"] = "MASK"
    for c, name in enumerate(CRATER_CLASSES):
        mcards[f"CLASS{c}"] = (name, f"mask value {c}")
    mcards["RIMHW"] = (catalog.rim_halfwidth, "[px] rim annulus half-width")
    image_w = StreamingFitsWriter(out, specs, overwrite=overwrite)
    try:
        mspec = ImageSpec(shape=(ny, nx), dtype=np.dtype(np.uint8), cards=mcards)
        mask_w = StreamingFitsWriter(mask_path, [mspec], overwrite=overwrite)
    except BaseException:
        image_w.abort()
        raise
    try:
        for y0 in range(0, ny, strip_rows):
            rows = min(strip_rows, ny - y0)
            strip, mask, elev = render_crater_layers(catalog, y0, 0, (rows, nx), noise=noise)
            image_w.write_rows(0, y0, strip)
            if dem:
                image_w.write_rows(1, y0, elev)
            mask_w.write_rows(0, y0, mask)
        image_w.close()
        mask_w.close()
    except BaseException:
        image_w.abort()
        mask_w.abort()
        raise
    meta = {"simkind": "craters", "seed": catalog.seed, "shape": list(catalog.shape),
            "body": catalog.body, "pixscale_km": catalog.pixscale_km}  # fmt: skip
    write_table(table_path, crater_truth_columns(catalog), units=_UNITS,
                descriptions=_DESCRIPTIONS, meta=meta)  # fmt: skip
    return SimulationFiles(images=(out,), mask=mask_path, truth=table_path)
