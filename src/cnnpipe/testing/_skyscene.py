"""Survey-scene model behind :mod:`cnnpipe.testing.sky`: catalog drawing and window rendering.

Pure numpy (and scipy.special); no files.  See :mod:`cnnpipe.testing.sky` for the image
model, the truth-mask rule and the window/stream agreement.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import ndtri

from cnnpipe.errors import ConfigError, InputError
from cnnpipe.testing._render import (
    Box,
    block_normals,
    check_seed,
    clip_box,
    moffat_alpha,
    parse_shape,
    sersic_stamp,
    star_stamp,
)

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
]

#: Truth-mask classes; a pixel's value is the index.
SKY_CLASSES = ("background", "star", "disk", "spheroid", "artefact")
#: Object kinds of the truth catalog (``class_id`` = ``SKY_CLASSES.index(kind)``).
MORPH_CLASSES = ("star", "disk", "spheroid")
#: Mask value of artefact pixels.
ARTEFACT = 4
#: Mask value of pixels without data (NaN in the image).
NO_DATA = 255

#: Effective wavelengths (nm) of common filters; other names get 500 nm * 1.25^index.
BAND_WAVELENGTH_NM = {
    "u": 355.0, "g": 475.0, "r": 620.0, "i": 750.0, "z": 870.0, "y": 1000.0,
    "J": 1250.0, "H": 1650.0, "K": 2200.0,
}  # fmt: skip
_SKY_LEVEL = {"u": 40.0, "g": 60.0, "r": 100.0, "i": 150.0, "z": 200.0, "y": 250.0}
_DOMAIN = 0x534B59  # "SKY": separates these random streams from other simulators'
_BAND_RE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_MAX_STAMP = 150.0
_TRAIL_REACH = 4.0  # trail profile is cut at this many widths
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def parse_bands(bands: str | Sequence[str]) -> tuple[str, ...]:
    """Validate a band list: ``'g,r,i'`` or ``['g', 'r', 'i']`` -> ``('g', 'r', 'i')``.

    Raises
    ------
    ConfigError
        An empty list, an empty or malformed name, or a repeated name (case-insensitive,
        because band names become file names and FITS EXTNAMEs).
    """
    names = [b.strip() for b in bands.split(",")] if isinstance(bands, str) else list(bands)
    shown = bands if isinstance(bands, str) else ",".join(map(str, bands))
    for i, name in enumerate(names, start=1):
        if not isinstance(name, str) or not _BAND_RE.match(name):
            msg = (
                "Expected a comma-separated list of band names (letters, digits, '_' or "
                f"'-', at most 16 each) such as 'g,r,i'. Got {shown!r}: name {i} is "
                f"{name!r}."
            )
            raise ConfigError(msg)
    folded = [n.lower() for n in names]
    dups = sorted({n for n in names if folded.count(n.lower()) > 1})
    if dups:
        msg = f"Expected distinct band names. Got {shown!r}, which repeats {dups}."
        raise ConfigError(msg)
    return tuple(names)


@dataclass(frozen=True, kw_only=True, eq=False)
class SkyCatalog:
    """A simulated survey scene: everything needed to render any window of it.

    Object arrays have one row per object, in rendering (and ``id``) order.  Pixel
    coordinates are 0-based with pixel centres on integers.

    Attributes
    ----------
    shape : (ny, nx)
        Image shape (px).
    seed : int
        Seed of the scene and of its noise.
    bands : tuple of str
        Band names.
    sky_level : (n_bands,) float
        Sky background (adu / px).
    gain, read_noise : float
        Gain (e- / adu) and read noise (adu).
    psf, psf_fwhm, psf_beta : str, float, float
        Stellar PSF (``'moffat'`` or ``'gaussian'``), FWHM (px) and Moffat beta.
    mask_nsigma : float
        Truth-mask threshold in units of the band-summed sky noise.
    ra0, dec0, pixel_scale, rotation, sip : float, float, float, float, bool
        WCS: image-centre RA/Dec (deg), scale (arcsec / px), rotation of the CD matrix
        (deg; 0 puts north along +y and east along -x) and whether SIP is added.
    x, y : (n,) float
        Centres (px).
    kind : (n,) int
        ``class_id``: 1 star, 2 disk, 3 spheroid (indices into :data:`SKY_CLASSES`).
    flux : (n, n_bands) float
        Total flux per band (adu).
    r_eff, sersic_n, ellipticity, theta, r_trunc : (n,) float
        Half-light radius along the major axis (px), Sersic index (NaN for stars),
        ``1 - b/a``, major-axis angle (rad, counter-clockwise from +x), stamp truncation
        radius (px).
    box : (n, 4) int
        Stamp ``(iy0, iy1, ix0, ix1)``.
    bad_columns : (m, 4) int
        ``(x, y0, y1, hot)``; hot columns read ``sky + bad_level * sigma``, dead ones 0.
    bad_level : (m,) float
        Hot-column level (sky sigmas).
    cosmic : (k, 3) float
        Cosmic-ray pixels ``(y, x, amplitude in sky sigmas)``.
    trail : (5,) float or None
        Satellite trail ``(nx, ny, c, width, amplitude)``: the line ``nx x + ny y = c``
        (unit normal), Gaussian width (px) and peak (sky sigmas).
    gaps : (g, 4) int
        No-data boxes ``(iy0, iy1, ix0, ix1)``.
    """

    shape: tuple[int, int]
    seed: int
    bands: tuple[str, ...]
    sky_level: FloatArray
    gain: float
    read_noise: float
    psf: str
    psf_fwhm: float
    psf_beta: float
    mask_nsigma: float
    ra0: float
    dec0: float
    pixel_scale: float
    rotation: float
    sip: bool
    x: FloatArray
    y: FloatArray
    kind: IntArray
    flux: FloatArray
    r_eff: FloatArray
    sersic_n: FloatArray
    ellipticity: FloatArray
    theta: FloatArray
    r_trunc: FloatArray
    box: IntArray
    bad_columns: IntArray
    bad_level: FloatArray
    cosmic: FloatArray
    trail: FloatArray | None
    gaps: IntArray

    def __len__(self) -> int:
        return int(self.x.size)

    @property
    def sky_sigma(self) -> FloatArray:
        """(n_bands,) float: sky noise per pixel (adu), ``sqrt(sky / gain + rn^2)``."""
        return np.sqrt(self.sky_level / self.gain + self.read_noise**2)

    @property
    def mask_threshold(self) -> float:
        """Band-summed flux (adu / px) above which an object's pixel enters the mask."""
        return float(self.mask_nsigma * np.sqrt(np.sum(self.sky_sigma**2)))

    def band_index(self, band: str | None) -> int:
        """Index of ``band`` (the first band when None)."""
        if band is None:
            return 0
        if band not in self.bands:
            msg = f"Expected a band among {list(self.bands)}. Got {band!r}."
            raise InputError(msg)
        return self.bands.index(band)


def _wavelengths(bands: tuple[str, ...]) -> FloatArray:
    return np.array(
        [BAND_WAVELENGTH_NM.get(b, 500.0 * 1.25**i) for i, b in enumerate(bands)], np.float64
    )


def make_sky_catalog(
    size: int | tuple[int, int],
    *,
    seed: int = 0,
    bands: str | Sequence[str] = ("r",),
    star_density: float = 60.0,
    galaxy_density: float = 250.0,
    spheroid_fraction: float = 0.35,
    psf: str = "moffat",
    psf_fwhm: float = 3.0,
    psf_beta: float = 3.5,
    sky_level: Mapping[str, float] | None = None,
    gain: float = 1.0,
    read_noise: float = 5.0,
    gaps: bool = True,
    artefacts: bool = True,
    mask_nsigma: float = 1.0,
    sip: bool = False,
    ra0: float = 150.1,
    dec0: float = 2.2,
    pixel_scale: float = 0.2,
    rotation: float = 0.0,
) -> SkyCatalog:
    """Draw a survey scene.

    Parameters
    ----------
    size : int or (ny, nx)
        Image size (px); at least 16.
    seed : int >= 0
        Random seed; the same seed gives the same objects whatever the band list.
    bands : str or sequence of str
        Band names (``'g,r,i'``); see :func:`parse_bands`.
    star_density, galaxy_density : float
        Mean numbers per million pixels.
    spheroid_fraction : float
        Fraction of galaxies that are spheroids.
    psf : {'moffat', 'gaussian'}
        Stellar PSF profile.
    psf_fwhm : float
        PSF FWHM (px); galaxies are softened by the matching Gaussian sigma.
    psf_beta : float
        Moffat ``beta``.
    sky_level : mapping of band -> float, optional
        Sky background (adu / px); defaults per band (u 40 ... y 250, others 100).
    gain, read_noise : float
        e- / adu and adu.
    gaps, artefacts : bool
        Add no-data gaps / bad columns, cosmic rays and a satellite trail.
    mask_nsigma : float
        Truth-mask threshold in band-summed sky sigmas (see the module docstring).
    sip : bool
        Add a 3rd-order SIP distortion (a few px at the corners) to the TAN WCS.
    ra0, dec0, pixel_scale, rotation : float
        Image centre (deg), scale (arcsec / px) and rotation (deg) of the WCS.

    Returns
    -------
    SkyCatalog

    Notes
    -----
    Fluxes (r band, adu) follow truncated power laws ``N(>F) ∝ F^-0.8`` on
    [300, 3e6] for stars and ``F^-1`` on [200, 2e5] for galaxies; galaxy sizes grow as
    ``F^0.3`` with a log-normal scatter of 0.3 (natural log).
    """
    shape = parse_shape(size)
    seed = check_seed(seed)
    band_t = parse_bands(bands)
    if psf not in ("moffat", "gaussian"):
        msg = f"Expected psf 'moffat' or 'gaussian'. Got {psf!r}."
        raise ConfigError(msg)
    levels = dict(_SKY_LEVEL, **(sky_level or {}))
    sky = np.array([levels.get(b, 100.0) for b in band_t], np.float64)
    h, w = shape
    rng = np.random.default_rng([seed, _DOMAIN, 1])
    n_star = int(rng.poisson(star_density * h * w / 1e6))
    n_gal = int(rng.poisson(galaxy_density * h * w / 1e6))
    n = n_star + n_gal
    x = rng.uniform(-0.5, w - 0.5, n)
    y = rng.uniform(-0.5, h - 0.5, n)
    u = rng.random((n, 7))  # flux, colour, size, index, ellipticity, angle, kind
    star = np.arange(n) < n_star
    kind = np.where(star, 1, np.where(u[:, 6] < spheroid_fraction, 3, 2)).astype(np.int64)
    sph = kind == 3

    f_lo, f_hi, f_slope = (
        np.where(star, 300.0, 200.0),
        np.where(star, 3e6, 2e5),
        np.where(star, 0.8, 1.0),
    )
    flux_r = f_lo * (1.0 - u[:, 0] * (1.0 - (f_lo / f_hi) ** f_slope)) ** (-1.0 / f_slope)
    z_col, z_size = ndtri(u[:, 1]), ndtri(u[:, 2])
    alpha = np.where(
        star,
        np.clip(0.5 + 1.0 * z_col, -2, 3),
        np.where(sph, 1.8, 0.7) + np.where(sph, 0.3, 0.4) * z_col,
    )
    flux = flux_r[:, None] * (_wavelengths(band_t)[None, :] / 620.0) ** alpha[:, None]

    r_gal = np.where(sph, 1.8, 2.5) * (flux_r / 1000.0) ** 0.3 * np.exp(0.3 * z_size)
    sersic_n = np.where(sph, 3.0 + 2.0 * u[:, 3], 0.7 + 0.6 * u[:, 3])
    ell = np.where(sph, 0.4, 0.75) * u[:, 4]
    theta = np.pi * u[:, 5]
    if psf == "moffat":
        a = moffat_alpha(psf_fwhm, psf_beta)
        star_hlr = a * np.sqrt(2.0 ** (1.0 / (psf_beta - 1.0)) - 1.0)
    else:
        star_hlr = psf_fwhm / 2.0
    r_eff = np.where(star, star_hlr, np.clip(r_gal, 0.8, 30.0))
    sersic_n = np.where(star, np.nan, sersic_n)
    ell = np.where(star, 0.0, ell)
    theta = np.where(star, 0.0, theta)

    # Stars: truncate where the PSF falls below 2% of the faintest sky sigma.
    sigma = np.sqrt(sky / gain + read_noise**2)
    eps = 0.02 * float(sigma.min())
    fmax = flux.max(axis=1)
    if psf == "moffat":
        a = moffat_alpha(psf_fwhm, psf_beta)
        peak = fmax * (psf_beta - 1.0) / (np.pi * a * a)
        r_star = a * np.sqrt(np.maximum(peak / eps, 1.0) ** (1.0 / psf_beta) - 1.0)
    else:
        s = psf_fwhm / 2.3548
        peak = fmax / (2.0 * np.pi * s * s)
        r_star = s * np.sqrt(2.0 * np.log(np.maximum(peak / eps, 1.0)))
    r_trunc = np.where(
        star, np.clip(r_star, 2.0 * psf_fwhm, 64.0), np.clip(6.0 * r_eff, 4.0, _MAX_STAMP)
    )
    q = 1.0 - ell
    hx = r_trunc * np.sqrt(np.cos(theta) ** 2 + (q * np.sin(theta)) ** 2)
    hy = r_trunc * np.sqrt(np.sin(theta) ** 2 + (q * np.cos(theta)) ** 2)
    box = np.stack(
        [np.ceil(y - hy), np.floor(y + hy) + 1, np.ceil(x - hx), np.floor(x + hx) + 1], axis=1
    ).astype(np.int64)

    bad, level, cosmic, trail = _draw_artefacts(
        np.random.default_rng([seed, _DOMAIN, 2]), shape, artefacts
    )
    gap_boxes = _draw_gaps(np.random.default_rng([seed, _DOMAIN, 3]), shape, gaps)
    return SkyCatalog(
        shape=shape, seed=seed, bands=band_t, sky_level=sky, gain=float(gain),
        read_noise=float(read_noise), psf=psf, psf_fwhm=float(psf_fwhm),
        psf_beta=float(psf_beta), mask_nsigma=float(mask_nsigma), ra0=float(ra0),
        dec0=float(dec0), pixel_scale=float(pixel_scale), rotation=float(rotation),
        sip=bool(sip), x=x, y=y, kind=kind, flux=flux, r_eff=r_eff, sersic_n=sersic_n,
        ellipticity=ell, theta=theta, r_trunc=r_trunc, box=box, gaps=gap_boxes,
        bad_columns=bad, bad_level=level, cosmic=cosmic, trail=trail,
    )  # fmt: skip


def _draw_artefacts(
    rng: np.random.Generator, shape: tuple[int, int], enabled: bool
) -> tuple[IntArray, FloatArray, FloatArray, FloatArray | None]:
    """Bad columns, cosmic-ray hits and one satellite trail (module docstring)."""
    h, w = shape
    if not enabled or min(h, w) < 64:
        return np.zeros((0, 4), np.int64), np.zeros(0), np.zeros((0, 3)), None
    nbad = 1 + int(rng.poisson(w / 1500.0))
    bx = rng.integers(0, w, nbad)
    start = np.where(rng.random(nbad) < 0.5, 0, rng.integers(0, h, nbad))
    hot = rng.random(nbad) < 0.6
    bad = np.stack([bx, start, np.full(nbad, h), hot], axis=1).astype(np.int64)
    level = rng.uniform(30.0, 100.0, nbad)

    ncr = int(rng.poisson(2.0 * h * w / 1e5))
    length = rng.uniform(0.5, 6.0, ncr)
    ang = rng.uniform(0.0, np.pi, ncr)
    cy, cx = rng.uniform(0, h - 1, ncr), rng.uniform(0, w - 1, ncr)
    amp = rng.uniform(30.0, 300.0, ncr)
    t = np.linspace(0.0, 1.0, 8)[None, :] * length[:, None]
    py = np.rint(cy[:, None] + t * np.sin(ang)[:, None]).astype(np.int64)
    px = np.rint(cx[:, None] + t * np.cos(ang)[:, None]).astype(np.int64)
    track = np.repeat(np.arange(ncr), 8)
    pix = np.unique(np.stack([track, py.ravel(), px.ravel()], axis=1), axis=0)
    pix = pix[(pix[:, 1] >= 0) & (pix[:, 1] < h) & (pix[:, 2] >= 0) & (pix[:, 2] < w)]
    cosmic = np.stack([pix[:, 1], pix[:, 2], amp[pix[:, 0]]], axis=1).astype(np.float64)

    phi = rng.uniform(0.0, np.pi)
    nx, ny = -np.sin(phi), np.cos(phi)
    c = nx * rng.uniform(0, w) + ny * rng.uniform(0, h)
    trail = np.array([nx, ny, c, 0.8, 8.0])
    return bad, level, cosmic, trail


def _draw_gaps(rng: np.random.Generator, shape: tuple[int, int], enabled: bool) -> IntArray:
    """Vertical chip gaps (one per ~4096 px) and one blank corner (1/6 x 1/5 of the image)."""
    h, w = shape
    if not enabled or min(h, w) < 64:
        return np.zeros((0, 4), np.int64)
    ngap = max(1, round(w / 4096))
    gw = max(2, min(w // 100, 24))
    centre = np.arange(1, ngap + 1) * w / (ngap + 1) + rng.uniform(-w / 20, w / 20, ngap)
    x0 = np.clip(np.rint(centre).astype(np.int64) - gw // 2, 0, w - gw)
    boxes = [(0, h, int(g), int(g) + gw) for g in x0]
    bh, bw = h // 6, w // 5
    top, right = rng.random() < 0.5, rng.random() < 0.5
    by0, bx0 = (h - bh if top else 0), (w - bw if right else 0)
    boxes.append((by0, by0 + bh, bx0, bx0 + bw))
    return np.array(boxes, np.int64)


def _stamp(cat: SkyCatalog, k: int, box: Box) -> FloatArray:
    if cat.kind[k] == 1:
        return star_stamp(
            box, cat.x[k], cat.y[k], radius=cat.r_trunc[k], psf=cat.psf,
            fwhm=cat.psf_fwhm, beta=cat.psf_beta,
        )  # fmt: skip
    return sersic_stamp(
        box, cat.x[k], cat.y[k], r_eff=cat.r_eff[k], n=cat.sersic_n[k],
        q=1.0 - cat.ellipticity[k], theta=cat.theta[k], r_trunc=cat.r_trunc[k],
        soften=cat.psf_fwhm / 2.3548,
    )  # fmt: skip


def _check_window(shape: tuple[int, int], y0: int, x0: int, wshape: tuple[int, int]) -> Box:
    h, w = int(wshape[0]), int(wshape[1])
    if h <= 0 or w <= 0 or y0 < 0 or x0 < 0 or y0 + h > shape[0] or x0 + w > shape[1]:
        msg = (
            f"Expected a non-empty window inside the {shape[0]}x{shape[1]} image. Got "
            f"origin (y0={y0}, x0={x0}) and shape {tuple(wshape)}."
        )
        raise InputError(msg)
    return (int(y0), int(y0) + h, int(x0), int(x0) + w)


def _trail_region(trail: FloatArray, win: Box) -> Box | None:
    """Bounding box, within the window, of the pixels a trail touches (or None).

    The line ``nx x + ny y = c`` widened by the trail reach ``r``: the columns it can reach
    over the window's rows intersected with the rows it can reach over its columns.
    """
    nx, ny, c, width = trail[:4]
    r = _TRAIL_REACH * width + 1.0
    y0, y1, x0, x1 = win
    lo_x, hi_x, lo_y, hi_y = float(x0), float(x1), float(y0), float(y1)
    if abs(nx) > 1e-9:
        ends = [(c - ny * yv) / nx for yv in (y0, y1)]
        lo_x, hi_x = max(lo_x, min(ends) - r / abs(nx)), min(hi_x, max(ends) + r / abs(nx) + 1)
    if abs(ny) > 1e-9:
        ends = [(c - nx * xv) / ny for xv in (x0, x1)]
        lo_y, hi_y = max(lo_y, min(ends) - r / abs(ny)), min(hi_y, max(ends) + r / abs(ny) + 1)
    box = (int(np.floor(lo_y)), int(np.ceil(hi_y)), int(np.floor(lo_x)), int(np.ceil(hi_x)))
    box = (max(box[0], y0), min(box[1], y1), max(box[2], x0), min(box[3], x1))
    return box if box[0] < box[1] and box[2] < box[3] else None


def render_sky_bands(
    catalog: SkyCatalog,
    y0: int,
    x0: int,
    shape: tuple[int, int],
    *,
    bands: Sequence[str] | None = None,
    noise: bool = True,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Render a window of several bands and the truth mask.

    Parameters
    ----------
    catalog : SkyCatalog
        The scene.
    y0, x0 : int
        Window origin (px, 0-based row and column).
    shape : (h, w)
        Window shape (px); the window must lie inside the image.
    bands : sequence of str, optional
        Bands to render, in this order (default: all of the catalog's).
    noise : bool
        Add sky noise (without it: sky + objects + artefacts, NaN gaps).

    Returns
    -------
    images : (n_bands, h, w) float32
        Pixel values (adu); NaN where there is no data.
    mask : (h, w) uint8
        Truth classes (:data:`SKY_CLASSES` indices; 255 = no data).
    """
    win = _check_window(catalog.shape, y0, x0, shape)
    bidx = [catalog.band_index(b) for b in (catalog.bands if bands is None else bands)]
    h, w = win[1] - win[0], win[3] - win[2]
    flux = catalog.flux[:, bidx]
    ftot = catalog.flux.sum(axis=1)
    sig = np.zeros((len(bidx), h, w), np.float32)
    best = np.zeros((h, w), np.float32)
    mask = np.zeros((h, w), np.uint8)
    thresh = np.float32(catalog.mask_threshold)
    b = catalog.box
    hit = (b[:, 0] < win[1]) & (b[:, 1] > win[0]) & (b[:, 2] < win[3]) & (b[:, 3] > win[2])
    for k in np.flatnonzero(hit):
        box = (int(b[k, 0]), int(b[k, 1]), int(b[k, 2]), int(b[k, 3]))
        cut = clip_box(box, win)
        if cut is None:
            continue
        wsl, ssl = cut
        sub = _stamp(catalog, int(k), box)[ssl]
        sig[(slice(None), *wsl)] += flux[k][:, None, None] * sub
        own = (ftot[k] * sub).astype(np.float32)
        cur, cls = best[wsl], mask[wsl]
        win_px = (own > thresh) & (own > cur)
        cur[win_px] = own[win_px]
        cls[win_px] = catalog.kind[k]

    sigma = catalog.sky_sigma[bidx]
    art = np.zeros((h, w), bool)
    region = None if catalog.trail is None else _trail_region(catalog.trail, win)
    if catalog.trail is not None and region is not None:
        nx, ny, c, width, amp = catalog.trail
        ry0, ry1, rx0, rx1 = region
        yy = np.arange(ry0, ry1, dtype=np.float64)[:, None]
        xx = np.arange(rx0, rx1, dtype=np.float64)[None, :]
        d = np.abs(nx * xx + ny * yy - c)
        prof = (np.exp(-0.5 * (d / width) ** 2) * (d <= _TRAIL_REACH * width)).astype(np.float32)
        rsl = (slice(ry0 - win[0], ry1 - win[0]), slice(rx0 - win[2], rx1 - win[2]))
        sig[(slice(None), *rsl)] += (amp * sigma)[:, None, None].astype(np.float32) * prof
        art[rsl] |= d <= 2.0 * width

    del best  # in place from here on: memory stays at a few strips
    sky = catalog.sky_level[bidx]
    images = sig
    inv_gain, rn2 = np.float32(1.0 / catalog.gain), np.float32(catalog.read_noise**2)
    for i, bi in enumerate(bidx):
        img = images[i]
        img += np.float32(sky[i])
        if noise:
            key = (catalog.seed, _DOMAIN, zlib.crc32(catalog.bands[bi].encode()))
            std = img * inv_gain
            std += rn2
            np.sqrt(std, out=std)
            std *= block_normals(key, win[0], win[2], (h, w))
            img += std
            del std

    cr = catalog.cosmic
    if cr.size:
        cy, cx = cr[:, 0].astype(np.int64), cr[:, 1].astype(np.int64)
        inside = (cy >= win[0]) & (cy < win[1]) & (cx >= win[2]) & (cx < win[3])
        iy, ix = cy[inside] - win[0], cx[inside] - win[2]
        images[:, iy, ix] += (cr[inside, 2][None, :] * sigma[:, None]).astype(np.float32)
        art[iy, ix] = True
    for (bx, by0, by1, hot), level in zip(catalog.bad_columns, catalog.bad_level):
        if win[2] <= bx < win[3] and by0 < win[1] and by1 > win[0]:
            rows = slice(max(by0, win[0]) - win[0], min(by1, win[1]) - win[0])
            values = sky + level * sigma if hot else np.zeros_like(sky)
            images[:, rows, bx - win[2]] = values[:, None].astype(np.float32)
            art[rows, bx - win[2]] = True
    mask[art] = ARTEFACT
    for gap in catalog.gaps:
        cut = clip_box((int(gap[0]), int(gap[1]), int(gap[2]), int(gap[3])), win)
        if cut is not None:
            images[(slice(None), *cut[0])] = np.nan
            mask[cut[0]] = NO_DATA
    return images, mask


def render_sky_window(
    catalog: SkyCatalog,
    y0: int,
    x0: int,
    shape: tuple[int, int],
    *,
    band: str | None = None,
    noise: bool = True,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Render one band of a window and its truth mask (see :func:`render_sky_bands`).

    Returns
    -------
    image : (h, w) float32
        Pixel values (adu) of ``band`` (default: the first band); NaN = no data.
    mask : (h, w) uint8
        Truth classes; identical for every band.
    """
    name = catalog.bands[catalog.band_index(band)]
    images, mask = render_sky_bands(catalog, y0, x0, shape, bands=[name], noise=noise)
    return images[0], mask
