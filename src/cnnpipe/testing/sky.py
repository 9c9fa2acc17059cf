"""Seeded survey-image simulator: stars, disk and spheroid galaxies, noise, gaps, artefacts.

Three layers:

* :func:`make_sky_catalog` draws the scene (objects, artefacts, no-data gaps, WCS) —
  vectorised numpy, fast even for 20000 x 20000 px;
* :func:`render_sky_window` / :func:`render_sky_bands` render any window of it in memory
  (pure numpy), for ML training on windows;
* :func:`write_sky` streams the whole image(s), the truth mask and the truth catalog to
  files, one strip of rows at a time (memory O(strip)).

A window renders exactly (bit for bit) what the same pixels hold in the whole image: each
object touches only its bounded stamp, evaluated in full and then cropped, objects are
added in catalog order, and noise comes from fixed 128 x 128 blocks seeded by
``(seed, band, block)`` (:func:`cnnpipe.testing._render.block_normals`).

Image model (counts, ``adu``), per band ``b``::

    image = sky_b + S_b + sqrt((sky_b + S_b) / gain + read_noise^2) * N(0, 1)

with ``S_b`` the noiseless sum of the objects (and the satellite trail): a Gaussian
approximation of photon (Poisson) noise plus read noise.  Stars are Moffat or Gaussian
PSFs; galaxies are truncated (6 ``r_eff``), softened Sersic profiles — disks with
n ~ 1, spheroids with n ~ 4 (:func:`cnnpipe.testing._render.sersic_stamp`).  Every
stamp sums to the object's flux exactly.  Band fluxes follow a per-object power law in
wavelength, ``F_b = F_r (lambda_b / 620 nm)^alpha``: spheroids red, disks bluer.

Truth mask (uint8, classes :data:`SKY_CLASSES`, 255 = no data).  A pixel belongs to an
object when that object's own noiseless band-summed flux there exceeds ``mask_nsigma``
times the noise of the band-summed sky, ``sqrt(sum_b sigma_b^2)``, and is larger than
every other object's (the earlier object wins a tie).  Artefacts (bad columns, cosmic-ray
hits, the satellite trail core) override objects; no-data gaps (NaN in the image: chip
gaps and a blank corner) override everything.  Artefacts and gaps are common to all bands.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from astropy.io import fits
from astropy.wcs import WCS

from cnnpipe.errors import ConfigError
from cnnpipe.testing._io import (
    SimulationFiles,
    check_outputs,
    output_stem,
    truth_path,
    write_table,
)
from cnnpipe.testing._skyscene import (
    ARTEFACT,
    BAND_WAVELENGTH_NM,
    MORPH_CLASSES,
    NO_DATA,
    SKY_CLASSES,
    SkyCatalog,
    make_sky_catalog,
    parse_bands,
    render_sky_bands,
    render_sky_window,
)
from cnnpipe.testing.fitswrite import ImageSpec, StreamingFitsWriter

__all__ = [
    "ARTEFACT",
    "BAND_WAVELENGTH_NM",
    "MORPH_CLASSES",
    "NO_DATA",
    "SKY_CLASSES",
    "SkyCatalog",
    "make_sky_catalog",
    "parse_bands",
    "render_sky_bands",
    "render_sky_window",
    "sky_files",
    "sky_header",
    "sky_truth_columns",
    "write_sky",
]


def sky_header(catalog: SkyCatalog) -> fits.Header:
    """WCS cards of the image: TAN (``RA---TAN``/``DEC--TAN``), or TAN-SIP when ``sip``.

    The reference pixel is the image centre; the CD matrix has ``pixel_scale`` arcsec/px,
    east to -x (RA decreasing with x), rotated by ``rotation`` degrees.  SIP ``A``/``B``
    coefficients (order 3) scale with the image so that the distortion is ~2 px at the
    corners.

    Returns
    -------
    astropy.io.fits.Header
        WCS cards only (no NAXIS).
    """
    ny, nx = catalog.shape
    s = catalog.pixel_scale / 3600.0
    rot = np.deg2rad(catalog.rotation)
    suffix = "-SIP" if catalog.sip else ""
    hdr = fits.Header()
    hdr["WCSAXES"] = 2
    hdr["CTYPE1"] = ("RA---TAN" + suffix, "gnomonic projection")
    hdr["CTYPE2"] = ("DEC--TAN" + suffix, "gnomonic projection")
    hdr["CUNIT1"], hdr["CUNIT2"] = "deg", "deg"
    hdr["CRPIX1"] = ((nx + 1) / 2.0, "image centre, 1-based FITS pixels")
    hdr["CRPIX2"] = (ny + 1) / 2.0
    hdr["CRVAL1"], hdr["CRVAL2"] = catalog.ra0, catalog.dec0
    hdr["CD1_1"] = -s * np.cos(rot)
    hdr["CD1_2"] = s * np.sin(rot)
    hdr["CD2_1"] = s * np.sin(rot)
    hdr["CD2_2"] = s * np.cos(rot)
    hdr["RADESYS"] = "ICRS"
    if catalog.sip:
        ref = max(ny, nx) / 2.0
        hdr["A_ORDER"], hdr["B_ORDER"] = 3, 3
        for key, c in {"A_2_0": 0.8, "A_1_1": -0.5, "A_0_2": 0.3, "A_3_0": 0.4,
                       "A_1_2": -0.2, "B_2_0": -0.3, "B_1_1": 0.6, "B_0_2": 0.5,
                       "B_0_3": -0.3, "B_2_1": 0.2}.items():  # fmt: skip
            hdr[key] = 2.0 * c / ref ** (int(key[2]) + int(key[4]))
    return hdr


def sky_truth_columns(catalog: SkyCatalog) -> dict[str, npt.NDArray[Any]]:
    """The truth catalog: one row per object, in ``id`` order.

    Columns: ``id``; ``x``, ``y`` (px, 0-based, pixel centres on integers: the numpy /
    astropy ``pixel_to_world`` convention); ``ra``, ``dec`` (deg, ICRS, from the image
    WCS with SIP via ``all_pix2world``); ``kind`` (:data:`MORPH_CLASSES`); ``class_id``
    (mask value); ``flux_<band>`` (adu, total); ``r_eff`` (px, major-axis half-light
    radius; the PSF's for stars); ``sersic_n`` (NaN for stars); ``ellipticity``
    (``1 - b/a``); ``theta`` (deg, major axis counter-clockwise from +x).
    """
    world = WCS(sky_header(catalog)).all_pix2world(catalog.x, catalog.y, 0)
    cols: dict[str, npt.NDArray[Any]] = {
        "id": np.arange(len(catalog), dtype=np.int64),
        "x": catalog.x,
        "y": catalog.y,
        "ra": np.asarray(world[0]),
        "dec": np.asarray(world[1]),
        "kind": np.array([SKY_CLASSES[k] for k in catalog.kind], dtype="U8"),
        "class_id": catalog.kind.astype(np.uint8),
    }
    for i, band in enumerate(catalog.bands):
        cols[f"flux_{band}"] = catalog.flux[:, i]
    cols["r_eff"] = catalog.r_eff
    cols["sersic_n"] = catalog.sersic_n
    cols["ellipticity"] = catalog.ellipticity
    cols["theta"] = np.rad2deg(catalog.theta)
    return cols


_UNITS = {"x": "pix", "y": "pix", "ra": "deg", "dec": "deg", "r_eff": "pix", "theta": "deg"}
_DESCRIPTIONS = {
    "id": "object id, also the rendering order",
    "x": "pixel column, 0-based, pixel centres on integers (numpy / astropy convention)",
    "y": "pixel row, 0-based, pixel centres on integers (numpy / astropy convention)",
    "ra": "right ascension (ICRS) from the image WCS",
    "dec": "declination (ICRS) from the image WCS",
    "kind": "star, disk or spheroid",
    "class_id": "truth-mask class (1 star, 2 disk, 3 spheroid)",
    "r_eff": "half-light radius along the major axis (PSF's for stars)",
    "sersic_n": "Sersic index (NaN for stars)",
    "ellipticity": "1 - b/a",
    "theta": "major-axis position angle, counter-clockwise from +x",
}


def _image_cards(catalog: SkyCatalog, band: str, *, extname: bool) -> fits.Header:
    i = catalog.band_index(band)
    hdr = sky_header(catalog)
    if extname:
        hdr["EXTNAME"] = (band, "band")
    hdr["FILTER"] = (band, "band name")
    hdr["BUNIT"] = "adu"
    hdr["SKYLEVEL"] = (float(catalog.sky_level[i]), "[adu] sky background included")
    hdr["SKYSIGMA"] = (float(catalog.sky_sigma[i]), "[adu] sky noise per pixel")
    hdr["GAIN"] = (catalog.gain, "[e-/adu]")
    hdr["RDNOISE"] = (catalog.read_noise, "[adu]")
    hdr["PSF"] = (catalog.psf, "stellar PSF profile")
    hdr["PSFFWHM"] = (catalog.psf_fwhm, "[pix] PSF FWHM")
    return hdr


def _common_cards(catalog: SkyCatalog, hdr: fits.Header) -> fits.Header:
    hdr["ORIGIN"] = "cnnpipe simulate"
    hdr["SIMKIND"] = ("sky", "simulated survey image")
    hdr["SIMSEED"] = (catalog.seed, "random seed")
    hdr["BANDS"] = (",".join(catalog.bands), "bands of this simulation")
    return hdr


def sky_files(
    out: str | os.PathLike[str],
    *,
    bands: str | Sequence[str],
    mef: bool = False,
    truth: str | os.PathLike[str] | None = None,
) -> SimulationFiles:
    """The files :func:`write_sky` writes for these arguments (nothing is touched)."""
    out = Path(out)
    band_t = parse_bands(bands)
    stem = output_stem(out)
    images: tuple[Path, ...]
    if mef or len(band_t) == 1:
        images = (out,)
    else:
        images = tuple(stem.with_name(f"{stem.name}_{b}.fits") for b in band_t)
    mask = stem.with_name(stem.name + ".mask.fits")
    return SimulationFiles(images=images, mask=mask, truth=truth_path(out, truth))


def write_sky(
    catalog: SkyCatalog,
    out: str | os.PathLike[str],
    *,
    mef: bool = False,
    truth: str | os.PathLike[str] | None = None,
    noise: bool = True,
    overwrite: bool = False,
    strip_rows: int = 256,
) -> SimulationFiles:
    """Write the image(s), truth mask and truth catalog, streaming strips of rows.

    Files: with one band and no ``mef``, the image is ``OUT`` itself; with several bands,
    ``OUT_<band>.fits`` each, or with ``mef`` one file ``OUT`` (empty primary HDU, then
    one image extension per band, ``EXTNAME`` = band).  The mask is ``OUT.mask.fits``
    (uint8, same WCS) and the truth catalog ``truth`` or ``OUT.truth.parquet`` (a FITS
    table when the name ends in ``.fits``).  ``OUT`` minus a ``.fits`` suffix is the stem.

    Memory stays O(``strip_rows`` x width x bands).

    Returns
    -------
    SimulationFiles
    """
    if strip_rows < 1:
        msg = f"Expected strip_rows >= 1. Got {strip_rows}."
        raise ConfigError(msg)
    out = Path(out)
    files = sky_files(out, bands=catalog.bands, mef=mef, truth=truth)
    images, mask_path, table_path = list(files.images), files.mask, files.truth
    check_outputs(list(files.all), overwrite=overwrite)

    ny, nx = catalog.shape
    mcards = _common_cards(catalog, sky_header(catalog))
    mcards["EXTNAME"] = "MASK"
    for c, name in enumerate(SKY_CLASSES):
        mcards[f"CLASS{c}"] = (name, f"mask value {c}")
    mcards["NODATA"] = (NO_DATA, "mask value of pixels without data")
    mcards["MASKNSIG"] = (catalog.mask_nsigma, "object threshold, band-summed sky sigmas")
    plan: list[tuple[Path, list[ImageSpec]]] = []  # one entry per file, mask last
    targets: list[tuple[int, int]] = []  # (file, hdu) per band
    if mef:
        specs = [ImageSpec(shape=(), cards=_common_cards(catalog, fits.Header()))]
        for b in catalog.bands:
            cards = _common_cards(catalog, _image_cards(catalog, b, extname=True))
            specs.append(ImageSpec(shape=(ny, nx), cards=cards))
        plan.append((out, specs))
        targets = [(0, i + 1) for i in range(len(catalog.bands))]
    else:
        for i, (b, path) in enumerate(zip(catalog.bands, images)):
            cards = _common_cards(catalog, _image_cards(catalog, b, extname=False))
            plan.append((path, [ImageSpec(shape=(ny, nx), cards=cards)]))
            targets.append((i, 0))
    plan.append((mask_path, [ImageSpec(shape=(ny, nx), dtype=np.dtype(np.uint8), cards=mcards)]))
    with ExitStack() as stack:
        writers: list[StreamingFitsWriter] = []
        for path, specs in plan:
            writers.append(StreamingFitsWriter(path, specs, overwrite=overwrite))
            stack.callback(writers[-1].abort)  # no-op once closed; cleans up on failure
        for y0 in range(0, ny, strip_rows):
            rows = min(strip_rows, ny - y0)
            strip, mask = render_sky_bands(catalog, y0, 0, (rows, nx), noise=noise)
            for i, (wi, hdu) in enumerate(targets):
                writers[wi].write_rows(hdu, y0, strip[i])
            writers[-1].write_rows(0, y0, mask)
        for wr in writers:
            wr.close()

    meta = {"simkind": "sky", "seed": catalog.seed, "bands": list(catalog.bands),
            "shape": list(catalog.shape), "classes": list(SKY_CLASSES)}  # fmt: skip
    units = dict(_UNITS, **{f"flux_{b}": "adu" for b in catalog.bands})
    descriptions = dict(
        _DESCRIPTIONS, **{f"flux_{b}": f"total flux in band {b}" for b in catalog.bands}
    )
    write_table(table_path, sky_truth_columns(catalog), units=units,
                descriptions=descriptions, meta=meta)  # fmt: skip
    return SimulationFiles(images=tuple(images), mask=mask_path, truth=table_path)
