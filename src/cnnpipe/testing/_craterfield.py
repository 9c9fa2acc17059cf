"""Crater-field model behind :mod:`cnnpipe.testing.craters`: catalog drawing and rendering.

Pure numpy and scipy (k-d trees); no files.  See :mod:`cnnpipe.testing.craters` for the
terrain model, the rim mask and the world coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from cnnpipe.errors import ConfigError, InputError
from cnnpipe.testing._render import (
    CRATER_EJECTA_EXTENT,
    Box,
    block_normals,
    check_seed,
    clip_box,
    crater_relief,
    crater_weight,
    hillshade,
    parse_shape,
    powerlaw_sample,
)

__all__ = [
    "BODIES",
    "CRATER_CLASSES",
    "CraterCatalog",
    "make_crater_catalog",
    "render_crater_dem",
    "render_crater_layers",
    "render_crater_window",
]

#: Rim-mask classes; a pixel's value is the index.
CRATER_CLASSES = ("background", "rim")
#: Body name -> (IAU WCS CTYPE prefix, mean radius in km).
BODIES = {"MOON": ("SE", 1737.4), "MERCURY": ("ME", 2439.4), "MARS": ("MA", 3389.5)}
_DOMAIN = 0x435254  # "CRT"
_BASE_REACH = 1.5  # crater radii within which an older crater shapes a new one's base
_RIM_SAMPLES = 24
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, kw_only=True, eq=False)
class CraterCatalog:
    """A simulated crater field: everything needed to render any window of it.

    Attributes
    ----------
    shape : (ny, nx)
        Image shape (px).
    seed : int
        Seed of the field and its noise.
    body : str
        Body name (a key of :data:`BODIES`).
    body_radius_km, pixscale_km : float
        Body mean radius (km) and map scale (km / px).
    lon0, lat0 : float
        Planetocentric longitude / latitude of the image centre (deg).
    sun_azimuth, sun_elevation : float
        Sun direction (deg; azimuth clockwise from north, +y).
    albedo, noise : float
        Flat-ground reflectance and noise sigma as a fraction of it.
    rim_halfwidth : float
        Half-width of the rim annulus in the mask (px).
    x, y, radius : (n,) float
        Centres and rim radii (px), in formation order.
    depth_m, rim_m, base_m : (n,) float
        Bowl depth, rim height and pre-existing surface height at the centre (m).
    rim_visible : (n,) float
        Fraction of the rim not inside a later crater's rim (``r < R - rim_halfwidth``).
    waves : (m, 4) float
        Background sinusoids ``(kx, ky, phase, amplitude)`` (rad / px, rad, m).
    box : (n, 4) int
        Stamp ``(iy0, iy1, ix0, ix1)`` (the ejecta reach, 3 R).
    """

    shape: tuple[int, int]
    seed: int
    body: str
    body_radius_km: float
    pixscale_km: float
    lon0: float
    lat0: float
    sun_azimuth: float
    sun_elevation: float
    albedo: float
    noise: float
    rim_halfwidth: float
    x: FloatArray
    y: FloatArray
    radius: FloatArray
    depth_m: FloatArray
    rim_m: FloatArray
    base_m: FloatArray
    rim_visible: FloatArray
    waves: FloatArray
    box: IntArray

    def __len__(self) -> int:
        return int(self.x.size)

    @property
    def visible(self) -> npt.NDArray[np.bool_]:
        """(n,) bool: some of the rim survives later craters."""
        return self.rim_visible > 0.0


def _background(waves: FloatArray, yy: FloatArray, xx: FloatArray) -> FloatArray:
    """Sum of ``a cos(kx x + ky y + phi)`` on the outer grid ``yy (h, 1)`` x ``xx (1, w)``."""
    out = np.zeros(np.broadcast_shapes(yy.shape, xx.shape))
    for kx, ky, ph, amp in waves:
        ax, ay = kx * xx + ph, ky * yy
        out += amp * (np.cos(ax) * np.cos(ay) - np.sin(ax) * np.sin(ay))
    return out


def _pairs(
    x: FloatArray, y: FloatArray, r: FloatArray, *, a: float, b: float, c: float
) -> tuple[IntArray, IntArray, FloatArray]:
    """All pairs ``(i, j)``, ``i != j``, closer than ``a r_i + b r_j + c``.

    Craters are binned by radius (factor 1.5) so that each k-d tree search uses a
    distance bound close to the real one.

    Returns
    -------
    i, j : (p,) int
        Pair indices.
    d : (p,) float
        Centre distances (px).
    """
    if x.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    pts = np.stack([x, y], axis=1)
    bins = np.floor(np.log(r / r.min()) / np.log(1.5)).astype(np.int64)
    groups = [np.flatnonzero(bins == k) for k in np.unique(bins)]
    trees = [(g, cKDTree(pts[g])) for g in groups]
    others = trees if b else [(np.arange(x.size), cKDTree(pts))]
    out_i, out_j, out_d = [], [], []
    for gi, ti in trees:
        for gj, tj in others:
            reach = a * r[gi].max() + b * r[gj].max() + c
            if reach <= 0:
                continue
            res = ti.sparse_distance_matrix(tj, reach, output_type="ndarray")
            i, j, d = gi[res["i"]], gj[res["j"]], res["v"]
            keep = (i != j) & (d < a * r[i] + b * r[j] + c)
            out_i.append(i[keep])
            out_j.append(j[keep])
            out_d.append(d[keep])
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def _rim_visible(x: FloatArray, y: FloatArray, r: FloatArray, hw: float) -> FloatArray:
    """Fraction of each rim (24 points) outside every later crater's ``r < R - hw``."""
    n = x.size
    erased = np.zeros((n, _RIM_SAMPLES), bool)
    j, k, _ = _pairs(x, y, r, a=1.0, b=1.0, c=-hw)  # j erases part of k's rim
    later = j > k
    j, k = j[later], k[later]
    if j.size:
        phi = np.linspace(0.0, 2.0 * np.pi, _RIM_SAMPLES, endpoint=False)
        px = x[k, None] + r[k, None] * np.cos(phi) - x[j, None]
        py = y[k, None] + r[k, None] * np.sin(phi) - y[j, None]
        hit = (px * px + py * py) < ((r[j] - hw) ** 2)[:, None]
        order = np.argsort(k, kind="stable")
        ks, hit = k[order], hit[order].astype(np.uint8)
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        erased[ks[starts]] = np.maximum.reduceat(hit, starts, axis=0).astype(bool)
    return 1.0 - erased.mean(axis=1)


def make_crater_catalog(
    size: int | tuple[int, int],
    *,
    seed: int = 0,
    r_min: float = 3.0,
    r_max: float = 60.0,
    slope: float = 2.0,
    coverage: float = 0.5,
    n_craters: int | None = None,
    body: str = "MOON",
    pixscale_km: float = 0.1,
    lon0: float = 23.47,
    lat0: float = 0.67,
    sun_azimuth: float = 270.0,
    sun_elevation: float = 20.0,
    albedo: float = 0.12,
    noise: float = 0.02,
    rim_halfwidth: float = 1.0,
) -> CraterCatalog:
    """Draw a crater field.

    Parameters
    ----------
    size : int or (ny, nx)
        Image size (px); at least 16.
    seed : int >= 0
        Random seed.
    r_min, r_max : float
        Crater radius range (px).
    slope : float
        Cumulative size-frequency slope: ``N(>R) ∝ R^-slope`` (2 is the classic
        ``N(>D) ∝ D^-2`` of a saturated / production-like population).
    coverage : float
        Number of craters as total crater area / image area (``n_craters`` overrides).
    n_craters : int, optional
        Exact number of craters.
    body : {'MOON', 'MERCURY', 'MARS'}
        Planetary body (CTYPE prefix and radius).
    pixscale_km : float
        Map scale (km / px).
    lon0, lat0 : float
        Image centre (deg, planetocentric, east-positive); default near the Apollo 11
        site, clear of the 0/360 deg longitude wrap.
    sun_azimuth, sun_elevation : float
        Sun direction (deg).
    albedo, noise : float
        Flat-ground reflectance; noise sigma as a fraction of it.
    rim_halfwidth : float
        Half-width of the rim-mask annulus (px).

    Returns
    -------
    CraterCatalog
    """
    shape = parse_shape(size)
    seed = check_seed(seed)
    if not 0 < r_min < r_max:
        msg = f"Expected 0 < r_min < r_max (px). Got r_min={r_min}, r_max={r_max}."
        raise ConfigError(msg)
    if slope <= 0 or coverage < 0:
        msg = f"Expected slope > 0 and coverage >= 0. Got slope={slope}, coverage={coverage}."
        raise ConfigError(msg)
    if body.upper() not in BODIES:
        msg = f"Expected a body among {sorted(BODIES)}. Got {body!r}."
        raise ConfigError(msg)
    body = body.upper()
    h, w = shape
    if n_craters is None:
        # E[R^2] of the truncated power law (pdf ∝ R^(-slope-1) on [r_min, r_max]).
        norm = slope * r_min**slope / (1.0 - (r_min / r_max) ** slope)
        if abs(slope - 2.0) < 1e-9:
            m2 = norm * np.log(r_max / r_min)
        else:
            m2 = norm * (r_max ** (2.0 - slope) - r_min ** (2.0 - slope)) / (2.0 - slope)
        n_craters = round(coverage * h * w / (np.pi * m2))
    n = int(n_craters)
    rng = np.random.default_rng([seed, _DOMAIN, 1])
    x = rng.uniform(-0.5, w - 0.5, n)
    y = rng.uniform(-0.5, h - 0.5, n)
    radius = powerlaw_sample(rng, n, lo=r_min, hi=r_max, slope=slope)
    diam_m = 2.0 * radius * pixscale_km * 1000.0
    depth = 0.196 * diam_m * rng.uniform(0.8, 1.1, n)
    rim = 0.036 * diam_m * rng.uniform(0.8, 1.1, n)

    wrng = np.random.default_rng([seed, _DOMAIN, 2])
    nw = 6
    lam = wrng.uniform(0.2, 1.0, nw) * max(h, w)
    ang = wrng.uniform(0.0, 2.0 * np.pi, nw)
    k = 2.0 * np.pi / lam
    amp = 0.005 * lam * pixscale_km * 1000.0 * wrng.uniform(0.5, 1.0, nw)
    waves = np.stack([k * np.cos(ang), k * np.sin(ang), wrng.uniform(0, 2 * np.pi, nw), amp], 1)

    base = _background(waves, y, x)
    j, kk, d = _pairs(x, y, radius, a=_BASE_REACH, b=0.0, c=0.0)
    older = j < kk
    j, kk, d = j[older], kk[older], d[older]
    contrib = crater_relief(d / radius[j], depth=depth[j], rim=rim[j])
    base = base + np.bincount(kk, weights=contrib, minlength=n)

    reach = CRATER_EJECTA_EXTENT * radius
    box = np.stack(
        [np.floor(y - reach), np.ceil(y + reach) + 1, np.floor(x - reach), np.ceil(x + reach) + 1],
        axis=1,
    ).astype(np.int64)
    return CraterCatalog(
        shape=(h, w), seed=seed, body=body, body_radius_km=BODIES[body][1],
        pixscale_km=float(pixscale_km), lon0=float(lon0), lat0=float(lat0),
        sun_azimuth=float(sun_azimuth), sun_elevation=float(sun_elevation),
        albedo=float(albedo), noise=float(noise), rim_halfwidth=float(rim_halfwidth),
        x=x, y=y, radius=radius, depth_m=depth, rim_m=rim, base_m=base,
        rim_visible=_rim_visible(x, y, radius, float(rim_halfwidth)), waves=waves, box=box,
    )  # fmt: skip


def _render(
    cat: CraterCatalog, win: Box, *, noise: bool
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """Image, rim mask and DEM of a window; computed on a 1-px halo for the gradients."""
    halo = (win[0] - 1, win[1] + 1, win[2] - 1, win[3] + 1)
    yy = np.arange(halo[0], halo[1], dtype=np.float64)[:, None]
    xx = np.arange(halo[2], halo[3], dtype=np.float64)[None, :]
    dem = _background(cat.waves, yy, xx)
    mask = np.zeros(dem.shape, np.uint8)
    hw = cat.rim_halfwidth
    b = cat.box
    hit = (b[:, 0] < halo[1]) & (b[:, 1] > halo[0]) & (b[:, 2] < halo[3]) & (b[:, 3] > halo[2])
    for k in np.flatnonzero(hit):
        cut = clip_box((int(b[k, 0]), int(b[k, 1]), int(b[k, 2]), int(b[k, 3])), halo)
        if cut is None:
            continue
        (sy, sx), _ = cut
        dy = yy[sy] - cat.y[k]
        dx = xx[:, sx] - cat.x[k]
        r = np.sqrt(dy * dy + dx * dx)
        rn = r / cat.radius[k]
        wgt = crater_weight(rn)
        rel = crater_relief(rn, depth=cat.depth_m[k], rim=cat.rim_m[k])
        dem[sy, sx] = rel + wgt * cat.base_m[k] + (1.0 - wgt) * dem[sy, sx]
        m = mask[sy, sx]
        m[r < cat.radius[k] - hw] = 0
        m[np.abs(r - cat.radius[k]) <= hw] = 1
    image = hillshade(
        dem, pixel_m=cat.pixscale_km * 1000.0, azimuth_deg=cat.sun_azimuth,
        elevation_deg=cat.sun_elevation, albedo=cat.albedo,
    )  # fmt: skip
    h, w = win[1] - win[0], win[3] - win[2]
    if noise:
        z = block_normals((cat.seed, _DOMAIN, 1), win[0], win[2], (h, w))
        image = image + (cat.noise * cat.albedo) * z
    return (
        image.astype(np.float32),
        np.ascontiguousarray(mask[1:-1, 1:-1]),
        dem[1:-1, 1:-1].astype(np.float32),
    )


def _window(cat: CraterCatalog, y0: int, x0: int, shape: tuple[int, int]) -> Box:
    h, w = int(shape[0]), int(shape[1])
    if h <= 0 or w <= 0 or y0 < 0 or x0 < 0 or y0 + h > cat.shape[0] or x0 + w > cat.shape[1]:
        msg = (
            f"Expected a non-empty window inside the {cat.shape[0]}x{cat.shape[1]} image. "
            f"Got origin (y0={y0}, x0={x0}) and shape {tuple(shape)}."
        )
        raise InputError(msg)
    return (int(y0), int(y0) + h, int(x0), int(x0) + w)


def render_crater_window(
    catalog: CraterCatalog, y0: int, x0: int, shape: tuple[int, int], *, noise: bool = True
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Render a window of the shaded-relief image and its rim mask.

    Parameters
    ----------
    catalog : CraterCatalog
        The field.
    y0, x0 : int
        Window origin (px, 0-based row and column).
    shape : (h, w)
        Window shape (px); the window must lie inside the image.
    noise : bool
        Add Gaussian noise (``noise * albedo``).

    Returns
    -------
    image : (h, w) float32
        Reflectance (flat ground = ``albedo``).
    mask : (h, w) uint8
        1 on visible crater rims, 0 elsewhere (:data:`CRATER_CLASSES`).
    """
    image, mask, _ = _render(catalog, _window(catalog, y0, x0, shape), noise=noise)
    return image, mask


def render_crater_layers(
    catalog: CraterCatalog, y0: int, x0: int, shape: tuple[int, int], *, noise: bool = True
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """Render a window's image, rim mask and DEM in one pass.

    Returns
    -------
    image : (h, w) float32
        Reflectance, as :func:`render_crater_window`.
    mask : (h, w) uint8
        Rim mask, as :func:`render_crater_window`.
    dem : (h, w) float32
        Elevation (m), as :func:`render_crater_dem`.
    """
    return _render(catalog, _window(catalog, y0, x0, shape), noise=noise)


def render_crater_dem(
    catalog: CraterCatalog, y0: int, x0: int, shape: tuple[int, int]
) -> npt.NDArray[np.float32]:
    """Render a window of the DEM.

    Returns
    -------
    (h, w) float32
        Elevation (m) relative to the body's mean radius.
    """
    return _render(catalog, _window(catalog, y0, x0, shape), noise=False)[2]
