"""Pure rendering maths shared by the sky and crater simulators.

Nothing here reads or writes files: numpy only.  The functions are the building blocks
that make window rendering exact: every object touches only pixels inside a bounded
stamp, and the noise of a pixel depends only on the seed, a stream key and the pixel's
position (through fixed :data:`NOISE_BLOCK` blocks), never on the window it is rendered
in.

Pixel convention: pixel ``(iy, ix)`` has its centre at the 0-based coordinates
``(y, x) = (iy, ix)`` (numpy / astropy ``pixel_to_world`` convention) and covers
``[iy - 0.5, iy + 0.5) x [ix - 0.5, ix + 0.5)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from cnnpipe.errors import ConfigError

__all__ = [
    "CRATER_EJECTA_EXTENT",
    "CRATER_TAPER_EXTENT",
    "NOISE_BLOCK",
    "Box",
    "block_normals",
    "check_seed",
    "clip_box",
    "crater_relief",
    "crater_weight",
    "hillshade",
    "moffat_alpha",
    "parse_shape",
    "powerlaw_sample",
    "sersic_bn",
    "sersic_stamp",
    "star_stamp",
]

#: Side (px) of the square blocks noise is drawn in; part of the determinism contract.
NOISE_BLOCK = 128
#: Crater ejecta reach, in crater radii (the relief is 0 beyond).
CRATER_EJECTA_EXTENT = 3.0
#: Where a crater stops overprinting older terrain, in crater radii.
CRATER_TAPER_EXTENT = 1.3

FloatArray = npt.NDArray[np.float64]
#: ``(iy0, iy1, ix0, ix1)``: rows ``iy0 <= iy < iy1``, columns ``ix0 <= ix < ix1``.
Box = tuple[int, int, int, int]


def parse_shape(size: int | Sequence[int]) -> tuple[int, int]:
    """An image size: ``n`` -> ``(n, n)``; ``(ny, nx)`` as is; each at least 16 px."""
    if isinstance(size, int | np.integer):
        shape = (int(size), int(size))
    else:
        shape = tuple(int(s) for s in size)  # type: ignore[assignment]
    if len(shape) != 2 or min(shape) < 16:
        msg = f"Expected an image size (px) of at least 16, or (ny, nx). Got {size!r}."
        raise ConfigError(msg)
    return shape


def check_seed(seed: int) -> int:
    """A seed as int; seeds must be >= 0 (numpy SeedSequence entropy)."""
    if int(seed) < 0:
        msg = f"Expected a seed >= 0. Got {seed}."
        raise ConfigError(msg)
    return int(seed)


def block_normals(
    key: Sequence[int], y0: int, x0: int, shape: tuple[int, int], *, block: int = NOISE_BLOCK
) -> npt.NDArray[np.float32]:
    """Standard normal deviates for a window, independent of how the image is windowed.

    Parameters
    ----------
    key : sequence of int >= 0
        Stream key (seed, domain, band, ...); each ``block`` x ``block`` block of the
        plane gets its own generator seeded with ``(*key, block_row, block_col)``.
    y0, x0 : int >= 0
        Window origin (px).
    shape : (h, w)
        Window shape (px).
    block : int
        Block side (px).

    Returns
    -------
    (h, w) float32
        ``N(0, 1)`` deviates; pixel ``(y, x)`` gets the same value in every window that
        contains it.
    """
    h, w = shape
    out = np.empty((h, w), dtype=np.float32)
    if h == 0 or w == 0:
        return out
    for by in range(y0 // block, (y0 + h - 1) // block + 1):
        ry0, ry1 = max(by * block, y0), min((by + 1) * block, y0 + h)
        for bx in range(x0 // block, (x0 + w - 1) // block + 1):
            rx0, rx1 = max(bx * block, x0), min((bx + 1) * block, x0 + w)
            seq = np.random.SeedSequence([*(int(k) for k in key), by, bx])
            z = np.random.Generator(np.random.PCG64(seq)).standard_normal(
                (block, block), dtype=np.float32
            )
            out[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] = z[
                ry0 - by * block : ry1 - by * block, rx0 - bx * block : rx1 - bx * block
            ]
    return out


def clip_box(box: Box, window: Box) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Intersect a stamp box with a window box.

    Returns
    -------
    ((slice, slice), (slice, slice)) or None
        ``(in_window, in_stamp)`` index pairs, or None when they do not overlap.
    """
    y0, y1 = max(box[0], window[0]), min(box[1], window[1])
    x0, x1 = max(box[2], window[2]), min(box[3], window[3])
    if y0 >= y1 or x0 >= x1:
        return None
    win = (slice(y0 - window[0], y1 - window[0]), slice(x0 - window[2], x1 - window[2]))
    sta = (slice(y0 - box[0], y1 - box[0]), slice(x0 - box[2], x1 - box[2]))
    return win, sta


def sersic_bn(n: npt.ArrayLike) -> FloatArray:
    """Sersic ``b_n`` such that ``r_eff`` encloses half the light.

    Asymptotic series of Ciotti & Bertin (1999, A&A 352, 447), eq. 18:
    ``b_n = 2n - 1/3 + 4/(405 n) + 46/(25515 n^2)``; better than 1e-4 for n >= 0.36.
    """
    n = np.asarray(n, dtype=np.float64)
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def moffat_alpha(fwhm: float, beta: float) -> float:
    """Moffat core width ``alpha`` (px) for a FWHM (px): ``fwhm / (2 sqrt(2^(1/beta) - 1))``."""
    return float(fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0)))


def _grid(box: Box, x: float, y: float) -> tuple[FloatArray, FloatArray]:
    dy = np.arange(box[0], box[1], dtype=np.float64)[:, None] - y
    dx = np.arange(box[2], box[3], dtype=np.float64)[None, :] - x
    return dy, dx


def _unit_sum(prof: FloatArray) -> FloatArray:
    total = prof.sum()
    return prof / total if total > 0 else prof


def sersic_stamp(
    box: Box,
    x: float,
    y: float,
    *,
    r_eff: float,
    n: float,
    q: float,
    theta: float,
    r_trunc: float,
    soften: float,
) -> FloatArray:
    """A truncated, softened elliptical Sersic profile sampled on a stamp, summing to 1.

    ``I(r) ∝ exp(-b_n (r_s / r_eff)^(1/n))`` (Sersic 1963) with the elliptical radius
    ``r^2 = u^2 + (v / q)^2`` (``u`` along the major axis at angle ``theta``
    counter-clockwise from +x, ``v`` across it) and ``r_s = sqrt(r^2 + soften^2)``: the
    softening stands in for the PSF core (it is not a convolution).  Pixels with
    ``r > r_trunc`` are 0.  The stamp is normalised so that its pixels sum to 1, so an
    object's flux is exact whatever its size.

    Parameters
    ----------
    box : (iy0, iy1, ix0, ix1)
        Stamp pixels.
    x, y : float
        Centre (px, 0-based).
    r_eff : float
        Half-light radius along the major axis (px).
    n : float
        Sersic index.
    q : float
        Axis ratio ``b/a`` in (0, 1].
    theta : float
        Position angle of the major axis (rad, counter-clockwise from +x).
    r_trunc : float
        Truncation radius along the major axis (px).
    soften : float
        Core softening (px).

    Returns
    -------
    (iy1 - iy0, ix1 - ix0) float64
        Unit-sum stamp.
    """
    dy, dx = _grid(box, x, y)
    c, s = np.cos(theta), np.sin(theta)
    u = dx * c + dy * s
    v = (dy * c - dx * s) / q
    r2 = u * u + v * v
    rs = np.sqrt(r2 + soften * soften) / r_eff
    prof = np.exp(-float(sersic_bn(n)) * rs ** (1.0 / n))
    prof[r2 > r_trunc * r_trunc] = 0.0
    return _unit_sum(prof)


def star_stamp(
    box: Box, x: float, y: float, *, radius: float, psf: str, fwhm: float, beta: float
) -> FloatArray:
    """A circular PSF sampled at pixel centres on a stamp, truncated at ``radius``, sum 1.

    ``moffat``: ``I(r) ∝ (1 + (r / alpha)^2)^-beta`` (Moffat 1969) with ``alpha`` from
    :func:`moffat_alpha`; ``gaussian``: ``I(r) ∝ exp(-r^2 / (2 sigma^2))`` with
    ``sigma = fwhm / 2.3548``.

    Returns
    -------
    (iy1 - iy0, ix1 - ix0) float64
        Unit-sum stamp.
    """
    dy, dx = _grid(box, x, y)
    r2 = dx * dx + dy * dy
    if psf == "moffat":
        a = moffat_alpha(fwhm, beta)
        prof = (1.0 + r2 / (a * a)) ** (-beta)
    else:
        sig = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        prof = np.exp(-0.5 * r2 / (sig * sig))
    prof[r2 > radius * radius] = 0.0
    return _unit_sum(prof)


def powerlaw_sample(
    rng: np.random.Generator, n: int, *, lo: float, hi: float, slope: float
) -> FloatArray:
    """Draw sizes from a truncated power law with cumulative ``N(>r) ∝ r^-slope``.

    Inverse-CDF sampling of the truncated Pareto distribution on ``[lo, hi]``:
    ``r = lo (1 - u (1 - (lo/hi)^slope))^(-1/slope)``, ``u ~ U(0, 1)``.

    Returns
    -------
    (n,) float64
        Sizes in the units of ``lo``/``hi``.
    """
    u = rng.random(n)
    return lo * (1.0 - u * (1.0 - (lo / hi) ** slope)) ** (-1.0 / slope)


def crater_relief(
    rn: FloatArray, *, depth: float | FloatArray, rim: float | FloatArray
) -> FloatArray:
    """Relief of a fresh simple crater relative to the surface it formed on.

    Inside the rim crest (``rn = r / R <= 1``) a parabolic bowl from ``-depth`` at the
    centre to ``+rim`` at the crest; outside, an ejecta blanket thinning as ``rn^-3``
    (McGetchin et al. 1973, EPSL 20, 226), shifted to reach 0 at
    :data:`CRATER_EJECTA_EXTENT`.  Proportions are Pike's (1977) lunar simple-crater
    fits, ``depth ≈ 0.196 D`` and ``rim ≈ 0.036 D``, chosen by the caller.

    Parameters
    ----------
    rn : float array
        Distance from the centre in crater radii.
    depth, rim : float or float array broadcasting with ``rn``
        Bowl depth below and rim height above the pre-existing surface (m).

    Returns
    -------
    float array, like ``rn``
        Relief (m).
    """
    e = CRATER_EJECTA_EXTENT
    inside = -depth + (depth + rim) * rn * rn
    with np.errstate(divide="ignore"):
        ejecta = rim * (rn**-3.0 - e**-3.0) / (1.0 - e**-3.0)
    out = np.where(rn <= 1.0, inside, np.where(rn < e, ejecta, 0.0))
    return np.asarray(out, dtype=np.float64)


def crater_weight(rn: FloatArray) -> FloatArray:
    """How much a new crater replaces the older terrain: 1 inside the rim, 0 beyond.

    A smoothstep from 1 at ``rn = 1`` to 0 at :data:`CRATER_TAPER_EXTENT`, so the new
    rim blends into the older surface without a step.
    """
    t = np.clip((rn - 1.0) / (CRATER_TAPER_EXTENT - 1.0), 0.0, 1.0)
    return 1.0 - t * t * (3.0 - 2.0 * t)


def hillshade(
    dem: FloatArray, *, pixel_m: float, azimuth_deg: float, elevation_deg: float, albedo: float
) -> FloatArray:
    """Lambertian shaded relief of a DEM (no cast shadows).

    ``I = albedo * max(0, n . s) / sin(e)`` with ``n`` the surface normal from central
    differences and ``s`` the unit vector to the Sun at azimuth ``A`` (clockwise from +y,
    north, towards +x, east) and elevation ``e``; flat ground has ``I = albedo``.

    Parameters
    ----------
    dem : (h + 2, w + 2) float
        Elevation (m) with a one-pixel halo on every side.
    pixel_m : float
        Pixel size (m).
    azimuth_deg, elevation_deg : float
        Sun direction (deg).
    albedo : float
        Normal albedo of flat ground.

    Returns
    -------
    (h, w) float64
        Reflectance.
    """
    gx = (dem[1:-1, 2:] - dem[1:-1, :-2]) / (2.0 * pixel_m)
    gy = (dem[2:, 1:-1] - dem[:-2, 1:-1]) / (2.0 * pixel_m)
    az, el = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    sx, sy, sz = np.sin(az) * np.cos(el), np.cos(az) * np.cos(el), np.sin(el)
    cos_i = (sz - gx * sx - gy * sy) / np.sqrt(1.0 + gx * gx + gy * gy)
    return np.asarray(albedo * np.maximum(cos_i, 0.0) / sz, dtype=np.float64)
