"""Crater extraction from a rim heat map: thresholding + ring template matching (DeepMoon).

Pure numpy and scipy; no I/O.

After Silburt et al. (2019, Icarus 317, 27, §2.2), who threshold the CNN's rim map and
match ring templates of every radius (``skimage.feature.match_template``), keeping local
maxima above a match threshold and merging overlapping matches.  Here:

1. *Threshold.*  ``b = heat >= threshold``; no-data pixels (not finite) are background,
   so a crater half in the no-data region (or outside the map) scores about half.
2. *Pyramid.*  Radii below ``2 * pyramid_radius`` px are matched at full resolution, one
   pixel apart; a radius ``R`` above that at the level ``s = 2^k`` of a 2x2 mean-pooled
   pyramid of ``b`` where ``pyramid_radius <= R / s < 2 * pyramid_radius``, one level
   pixel apart (relative steps of ``1 / (2 pyramid_radius)`` to ``1 / pyramid_radius``).
   Level pixel ``j`` is centred on full-resolution ``s j + (s - 1) / 2``.  The search
   costs about ``2 pyramid_radius - r_min + pyramid_radius / 3`` full-size FFT
   correlations instead of ``r_max - r_min``.
3. *Ring contrast templates.*  DeepMoon's normalised cross-correlation over the template's
   square window counts every rim of every neighbour in its denominator, so in crowded
   fields large craters score far below small ones.  Instead each level is correlated
   (FFT; one transform of the level) with a zero-sum template: the ring ``|rho - R| <=
   w / 2`` (``w = max(rim_width / s + 1, 1.5)`` level px) over its area, minus guard
   bands ``w / 2 + 1/2 < |rho - R| <= w / 2 + 1/2 + max(1, 0.3 R)`` over theirs; outside
   the map is background.  Responses are divided by that of an ideal rim (``|rho - R|
   <= rim_width / 2`` at full resolution, pooled to the level): 1 is a complete,
   isolated rim at every level.
4. *Peaks.*  Local maxima in ``(radius, y, x)`` (3x3x3) with a response of at least
   ``search_threshold``, placed to sub-pixel by a parabola through the neighbours along
   each axis, then thinned by (5).
5. *Overlaps.*  Greedy suppression by descending score
   (:func:`cnnpipe.pipeline.dedup.dedupe_craters` with ``overlap_pos_frac``,
   ``overlap_rad_frac``), as DeepMoon's ``longlat_thresh2`` / ``rad_thresh``; on the
   template responses and again on the scores (7).
6. *Refinement* (``refine=True``).  Four heat-weighted algebraic circle fits (Kåsa 1976,
   IEEE Trans. Instrum. Meas. 25, 8: least squares of ``x^2 + y^2 + D x + E y + F = 0``)
   of the rim pixels within ``max(rim_width / 2 + 1, f R)`` of the current ring, ``f =
   0.15, 0.08, 0, 0``; a fit is refused when those pixels cover fewer than 5 of 8
   octants, or when it moves the centre or the radius by more than ``0.25 R`` from the
   template match.  Craters with ``R >= 12 k`` px (k >= 2) are measured (6 and 7) on a
   lattice of every k-th pixel and row: an unbiased sample with >= 50 pixels of the
   ring zone, at 1/k^2 of the cost.
7. *Score* on the full-resolution ``b`` around the ring: the rim fill (mean of ``b``
   over the zone ``|rho - R| <= rim_width / 2 + 1/2``, over the same for an ideal rim,
   at most 1) minus the larger mean of ``b`` over the inner and the outer guard band
   (``0 < |rho - R| - (rim_width / 2 + 1/2) <= max(1, 0.3 R)``).  About the visible
   fraction of the rim, less the rim density beside it; a blob's edge scores ~0.
8. *Rim assignment.*  Visiting craters by descending score, each is scored again on the
   rim pixels not yet claimed and, when it still reaches ``match_threshold``, claims the
   pixels of its ring zone.  A ring assembled from arcs of better craters (around a
   cluster of small craters, or tangent to a large one) loses its support; a genuine
   crater loses only the few pixels where rims cross.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft as sfft

from cnnpipe.errors import ConfigError, InputError
from cnnpipe.pipeline.dedup import dedupe_craters

__all__ = ["CraterCandidates", "find_craters", "ring_template"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]

_BAND_FRAC = 0.3  # guard band width / radius
_PRE_POS_FRAC, _PRE_RAD_FRAC = 0.5, 0.3  # de-duplication of template matches
_MAX_PATCH_ELEMENTS = 2_000_000  # per vectorised chunk of the refinement
_REFINE_BANDS = (0.15, 0.08, 0.0, 0.0)  # Kåsa fit bands: max(rim_width / 2 + 1, f R)
_MAX_MOVE = 0.25  # largest refinement of centre and radius, / template radius
_REACH = 1.45  # patch half-size / radius for the refinement and score
_STRIDE_RADIUS = 12.0  # craters with radius >= k * this are sampled every k-th pixel


@dataclass(frozen=True, kw_only=True, eq=False)
class CraterCandidates:
    """Craters found in a heat map, in the heat map's pixel frame.

    Attributes
    ----------
    x, y : (n,) float64
        Centre column / row (px, 0-based, pixel centres on integers: the numpy /
        astropy ``pixel_to_world`` convention).
    radius : (n,) float64
        Rim radius (px).
    score : (n,) float64
        Rim fill minus guard-band rim density, on the rim pixels not claimed by a better
        crater (module docstring, 7 and 8): about 1 for a complete isolated rim, <= 1.
    """

    x: FloatArray
    y: FloatArray
    radius: FloatArray
    score: FloatArray

    def __len__(self) -> int:
        return int(self.x.size)

    @property
    def xyr(self) -> FloatArray:
        """(n, 3) float64: columns ``x, y, radius`` (px), as ``match_craters`` takes."""
        return np.stack([self.x, self.y, self.radius], axis=1)

    @classmethod
    def empty(cls) -> CraterCandidates:
        """No craters, with the full schema."""
        return cls(x=np.zeros(0), y=np.zeros(0), radius=np.zeros(0), score=np.zeros(0))


def _annulus(rho: FloatArray, lo: float, hi: float) -> FloatArray:
    """Anti-aliased indicator of ``lo <= rho <= hi`` (1/2-px linear edges)."""
    return np.clip(rho - lo + 0.5, 0.0, 1.0) * np.clip(hi - rho + 0.5, 0.0, 1.0)


def ring_template(radius: float, width: float, band: float) -> FloatArray:
    """Zero-sum ring contrast template (module docstring, 3).

    Parameters
    ----------
    radius : float
        Ring radius (px), > 0.
    width : float
        Ring width (px), > 0.
    band : float
        Guard band width (px) inside and outside the ring, > 0.

    Returns
    -------
    (2h + 1, 2h + 1) float64
        ``ring / sum(ring) - bands / sum(bands)``, centred; ``h = ceil(radius + width / 2
        + band + 1)``.
    """
    h = math.ceil(radius + width / 2 + band + 1)
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    rho = np.hypot(yy, xx).astype(np.float64)
    half = width / 2
    ring = _annulus(rho, radius - half, radius + half)
    bands = _annulus(rho, radius - half - 0.5 - band, radius - half - 0.5)
    bands += _annulus(rho, radius + half + 0.5, radius + half + 0.5 + band)
    return np.asarray(ring / ring.sum() - bands / bands.sum())


def _pool2(a: F32) -> F32:
    """2x2 mean pooling (odd edges padded with background)."""
    h, w = a.shape
    p = np.pad(a, ((0, h % 2), (0, w % 2)))
    return (0.25 * (p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2])).astype(
        np.float32
    )


def _ideal_response(tz: FloatArray, radius_full: float, rim_width: float, s: int) -> float:
    """Template response to an ideal rim ``|rho - R| <= rim_width / 2`` pooled by ``s``."""
    h = tz.shape[0] // 2
    n = s * (2 * h + 1)
    c = s * h + (s - 1) / 2.0
    yy, xx = np.mgrid[0:n, 0:n]
    ideal = (np.abs(np.hypot(yy - c, xx - c) - radius_full) <= rim_width / 2).astype(np.float32)
    while ideal.shape[0] > 2 * h + 1:
        ideal = _pool2(ideal)
    return float((ideal * tz).sum())


class _Level:
    """One pyramid level: its FFT, and calibrated template responses per radius."""

    def __init__(self, b: F32, s: int, hmax: int) -> None:
        self.s = s
        self.shape = (int(b.shape[0]), int(b.shape[1]))
        ny, nx = self.shape
        self.fshape = (sfft.next_fast_len(ny + hmax, real=True),
                       sfft.next_fast_len(nx + hmax, real=True))  # fmt: skip
        self.spec = sfft.rfft2(b, s=self.fshape)  # one thread: Dask parallelises tiles

    def response(self, radius: float, rim_width: float) -> F32:
        """Ring contrast over the ideal ring's (module docstring, 3), level pixels."""
        width = max(rim_width / self.s + 1.0, 1.5)
        tz = ring_template(radius, width, max(1.0, _BAND_FRAC * radius))
        h = tz.shape[0] // 2
        # k(m) = tz(-m) on the periodic grid: the FFT convolution is then the correlation
        # sum_v b(u + v) tz(v); padding by >= h keeps the wrap-around out of the map.
        k = np.zeros(self.fshape, np.float32)  # float32 transforms: twice as fast
        k[: h + 1, : h + 1] = tz[h::-1, h::-1]
        k[: h + 1, -h:] = tz[h::-1, :h:-1]
        k[-h:, : h + 1] = tz[:h:-1, h::-1]
        k[-h:, -h:] = tz[:h:-1, :h:-1]
        out = sfft.irfft2(self.spec * sfft.rfft2(k), s=self.fshape)
        ny, nx = self.shape
        norm = _ideal_response(tz, radius * self.s, rim_width, self.s)
        return (out[:ny, :nx] / norm).astype(np.float32)


def _parabola(m: FloatArray, c: FloatArray, p: FloatArray) -> FloatArray:
    """Vertex offset of the parabola through (-1, m), (0, c), (1, p), clipped to ±0.5."""
    den = m - 2.0 * c + p
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(den < 0, 0.5 * (m - p) / den, 0.0)
    return np.clip(off, -0.5, 0.5)


def _level_peaks(
    level: _Level, radii: FloatArray, rim_width: float, search_threshold: float
) -> FloatArray:
    """Peaks ``(x, y, r, response)`` in level pixels: 3x3x3 maxima over (r, y, x).

    Only pixels above ``search_threshold`` are tested, against their 26 neighbours
    (edges replicated), which is much cheaper than maximum filters of whole maps.
    """
    found: list[FloatArray] = []
    maps: dict[int, F32] = {}
    step = float(radii[1] - radii[0]) if radii.size > 1 else 1.0
    ny, nx = level.shape
    for k in range(radii.size):
        for q in (k - 1, k, k + 1):
            if 0 <= q < radii.size and q not in maps:
                maps[q] = level.response(float(radii[q]), rim_width)
        for q in [q for q in maps if q < k - 1]:
            del maps[q]
        cur = maps[k]
        iy, ix = np.nonzero(cur >= search_threshold)
        c = cur[iy, ix]
        ym, yp = np.maximum(iy - 1, 0), np.minimum(iy + 1, ny - 1)
        xm, xp = np.maximum(ix - 1, 0), np.minimum(ix + 1, nx - 1)
        peak = np.ones(iy.size, bool)
        for q in (k - 1, k, k + 1):
            if q not in maps:
                continue
            m = maps[q]
            for yy in (ym, iy, yp):
                for xx in (xm, ix, xp):
                    peak &= c >= m[yy, xx]
        iy, ix = iy[peak], ix[peak]
        c64: FloatArray = c[peak].astype(np.float64)
        ym, yp, xm, xp = ym[peak], yp[peak], xm[peak], xp[peak]
        dx = _parabola(cur[iy, xm].astype(np.float64), c64, cur[iy, xp].astype(np.float64))
        dy = _parabola(cur[ym, ix].astype(np.float64), c64, cur[yp, ix].astype(np.float64))
        if k - 1 in maps and k + 1 in maps:
            dr = _parabola(maps[k - 1][iy, ix].astype(np.float64), c64,
                           maps[k + 1][iy, ix].astype(np.float64))  # fmt: skip
        else:
            dr = np.zeros(c64.size)
        found.append(np.stack([ix + dx, iy + dy, radii[k] + dr * step, c64], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 4))


def _measure(
    b: F32, heat: F32, x: FloatArray, y: FloatArray, r: FloatArray, *, rim_width: float,
    refine: bool,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Refine (module docstring, 6) and score (7) each crater at full resolution.

    Vectorised over chunks of craters of similar size: each gets a square patch of
    ``b`` and ``heat`` (zero outside the map) around its rounded centre; every
    annulus is a test on ``rho^2``, every sum a (batched) matrix product.
    """
    n = x.size
    xo, yo, ro, so = x.copy(), y.copy(), r.copy(), np.zeros(n)
    if n == 0:
        return xo, yo, ro, so
    half = rim_width / 2 + 0.5
    stride = np.maximum(1, (r // _STRIDE_RADIUS).astype(np.int64))
    reach = np.ceil((_REACH * r + half + 2) / stride).astype(np.int64) * stride
    iy, ix = np.round(y).astype(np.int64), np.round(x).astype(np.int64)
    ny, nx = b.shape
    # Matches on coarse levels may be centred a little outside the map.
    hm = int(reach.max())  # patches of a chunk share its largest reach
    pad = max(0, hm - int(min(iy.min(), ix.min())), hm + 1 + int(max(iy.max() - ny,
                                                                   ix.max() - nx)))
    bp = np.pad(b, pad)
    hp = np.pad(heat, pad)
    order = np.lexsort((reach, stride))
    i0 = 0
    while i0 < n:
        st = int(stride[order[i0]])
        same = order[i0:][stride[order[i0:]] == st]
        rs = reach[same]
        lim = int(np.searchsorted(rs, rs[0] * 1.25, "right"))
        side = 2 * int(rs[lim - 1]) // st + 1
        lim = min(lim, max(1, _MAX_PATCH_ELEMENTS // side**2))
        idx = same[:lim]
        i0 += lim
        h = int(rs[lim - 1])
        cy0, cx0 = iy[idx], ix[idx]
        win = (2 * h + 1, 2 * h + 1)
        # Large craters: a lattice of every st-th pixel and row (module docstring, 6).
        pb = sliding_window_view(bp, win)[:, :, ::st, ::st][cy0 + pad - h, cx0 + pad - h]
        grid = np.arange(-h, h + 1, st, dtype=np.float32)
        ox, oy = (x[idx] - cx0).astype(np.float32), (y[idx] - cy0).astype(np.float32)
        cr = r[idx].astype(np.float32)
        if refine:
            ph = sliding_window_view(hp, win)[:, :, ::st, ::st][cy0 + pad - h, cx0 + pad - h]
            origin = (ox.copy(), oy.copy(), cr.copy())
            for frac in _REFINE_BANDS:
                band = np.maximum(rim_width / 2 + 1.0, frac * cr).astype(np.float32)
                ox, oy, cr = _kasa_step(ph, grid, ox, oy, cr, band, origin=origin)
        px = grid[None, :] - ox[:, None]
        py = grid[None, :] - oy[:, None]
        sd = np.sqrt((py * py)[:, :, None] + (px * px)[:, None, :]) - cr[:, None, None]
        dist = np.abs(sd)
        band = np.maximum(1.0, _BAND_FRAC * cr)[:, None, None]
        zone = dist <= half
        nz = np.maximum(np.count_nonzero(zone, axis=(1, 2)), 1)
        ideal = np.count_nonzero(dist <= rim_width / 2, axis=(1, 2)) / nz
        fill = np.einsum("kij,kij->k", pb, zone.astype(np.float32)) / nz
        # The larger density of the inner and outer guard band, not the mean: the edge
        # of a filled blob is a half ring with an empty outside but a full inside.
        dens = np.zeros(idx.size)
        for guard in ((sd < -half) & (sd >= -half - band), (sd > half) & (sd <= half + band)):
            d = np.einsum("kij,kij->k", pb, guard.astype(np.float32))
            dens = np.maximum(dens, d / np.maximum(np.count_nonzero(guard, axis=(1, 2)), 1))
        so[idx] = np.minimum(fill / np.maximum(ideal, 1e-9), 1.0) - dens
        xo[idx], yo[idx], ro[idx] = cx0 + ox, cy0 + oy, cr
    return xo, yo, ro, so


def _kasa_step(
    heat: F32, grid: F32, ox: F32, oy: F32, cr: F32, band: F32, *,
    origin: tuple[F32, F32, F32],
) -> tuple[F32, F32, F32]:
    """One heat-weighted Kåsa circle fit per patch (module docstring, 6).

    ``heat`` is ``(k, p, p)`` on the patch grid ``grid`` (offsets from the patch centre,
    px); ``ox, oy`` are the current centres and ``cr`` the radii; a fit farther than
    allowed from ``origin`` (the template match ``x, y, r``) is refused.
    """
    px = grid[None, :] - ox[:, None]  # (k, p) along x
    py = grid[None, :] - oy[:, None]  # (k, p) along y
    px2, py2 = px * px, py * py
    rho2 = py2[:, :, None] + px2[:, None, :]
    mid = ((np.maximum(cr - band, 0.0) ** 2 + (cr + band) ** 2) / 2)[:, None, None]
    halfw = ((cr + band) ** 2 - mid[:, 0, 0])[:, None, None]
    w = heat * (np.abs(rho2 - mid) <= halfw)
    # Moments sum_ij w_ij y_i^q x_j^p from one batched matrix product; the coordinates
    # are centred, so float32 sums lose nothing that matters at these sizes.
    xp = np.stack([np.ones_like(px), px, px2, px2 * px], axis=-1)  # (k, p, 4)
    yq = np.stack([np.ones_like(py), py, py2, py2 * py], axis=-1)
    mom = np.einsum("kiq,kij,kjp->kqp", yq, w, xp, optimize=True).astype(np.float64)
    s0, sx, sy = mom[:, 0, 0], mom[:, 0, 1], mom[:, 1, 0]
    sxx, sxy, syy = mom[:, 0, 2], mom[:, 1, 1], mom[:, 2, 0]
    sxq = mom[:, 0, 3] + mom[:, 2, 1]  # sum w x (x^2 + y^2)
    syq = mom[:, 1, 2] + mom[:, 3, 0]
    sq = mom[:, 0, 2] + mom[:, 2, 0]
    lhs = np.stack([np.stack([sxx, sxy, sx], -1), np.stack([sxy, syy, sy], -1),
                    np.stack([sx, sy, s0], -1)], -2)  # fmt: skip
    rhs = -np.stack([sxq, syq, sq], -1)
    # Rim pixels must surround the centre: at least 5 of 8 octants of the patch.
    covered = (w.reshape(w.shape[0], -1) @ _octants(grid)) > 0
    det = np.linalg.det(lhs)
    good = (covered.sum(axis=1) >= 5) & (np.abs(det) > 1e-9 * np.maximum(s0, 1.0) ** 3)
    sol = np.zeros((w.shape[0], 3))
    if good.any():
        sol[good] = np.linalg.solve(lhs[good], rhs[good][..., None])[..., 0]
    nx_, ny_ = ox - sol[:, 0] / 2, oy - sol[:, 1] / 2
    rr2 = (sol[:, 0] ** 2 + sol[:, 1] ** 2) / 4 - sol[:, 2]
    nr = np.sqrt(np.maximum(rr2, 0.0))
    x0, y0, r0 = origin
    ok = good & (rr2 > 0)
    ok &= np.hypot(nx_ - x0, ny_ - y0) <= _MAX_MOVE * r0
    ok &= np.abs(nr - r0) <= _MAX_MOVE * r0
    f32 = np.float32
    return (np.where(ok, nx_, ox).astype(f32), np.where(ok, ny_, oy).astype(f32),
            np.where(ok, nr, cr).astype(f32))  # fmt: skip


def _octants(grid: F32) -> F32:
    """(p * p, 8) one-hot octant (about the patch centre) of each patch pixel."""
    ang = np.arctan2(grid[:, None], grid[None, :])
    o = (np.floor((ang + np.pi) / (np.pi / 4)).astype(np.int64) % 8).ravel()
    out = np.zeros((o.size, 8), np.float32)
    out[np.arange(o.size), o] = 1.0
    return out


def _ring_pixels(
    x: FloatArray, y: FloatArray, r: FloatArray, *, rim_width: float, shape: tuple[int, int]
) -> tuple[list[tuple[IntArray, IntArray]], FloatArray, int]:
    """Flat indices (into the map padded by ``pad``) of each crater's zone and guard pixels.

    Returns ``[(idx, span)] * 3, ideal, pad`` for the zone, the inner and the outer guard
    band: crater ``k``'s zone pixels are ``idx[span[k, 0]:span[k, 1]]``; ``ideal`` is the
    ideal rim's share of each zone (module docstring, 7).
    """
    half = rim_width / 2 + 0.5
    band = np.maximum(1.0, _BAND_FRAC * r)
    reach = np.ceil(r + half + band + 1).astype(np.int64)
    iy, ix = np.round(y).astype(np.int64), np.round(x).astype(np.int64)
    ny, nx = shape
    # Refined centres may lie a little outside the map: pad for every patch.
    hm = int(reach.max())  # patches of a chunk share its largest reach
    pad = max(0, hm - int(min(iy.min(), ix.min())), hm + 1 + int(max(iy.max() - ny,
                                                                   ix.max() - nx)))
    width = nx + 2 * pad
    parts: list[list[IntArray]] = [[], [], []]  # zone, inner guard, outer guard
    n = x.size
    counts, ideal = np.zeros((3, n), np.int64), np.zeros(n)
    order = np.argsort(reach, kind="stable")
    i0 = 0
    while i0 < n:
        h = int(reach[order[i0]])
        i1 = int(np.searchsorted(reach[order], h, "right"))
        i1 = min(i1, i0 + max(1, _MAX_PATCH_ELEMENTS // (2 * h + 1) ** 2))
        idx = order[i0:i1]
        i0 = i1
        g = np.arange(-h, h + 1, dtype=np.float64)
        dy = g[None, :] + (iy[idx] - y[idx])[:, None]
        dx = g[None, :] + (ix[idx] - x[idx])[:, None]
        sd = np.sqrt((dy * dy)[:, :, None] + (dx * dx)[:, None, :]) - r[idx][:, None, None]
        bd = band[idx][:, None, None]
        masks = (np.abs(sd) <= half, (sd < -half) & (sd >= -half - bd),
                 (sd > half) & (sd <= half + bd))  # fmt: skip
        ideal[idx] = (np.abs(sd) <= rim_width / 2).sum(axis=(1, 2))
        ideal[idx] /= np.maximum(masks[0].sum(axis=(1, 2)), 1)
        # flat index in the padded map of patch pixel (i, j) of crater k
        base = (iy[idx] + pad - h) * width + (ix[idx] + pad - h)
        off = (np.arange(2 * h + 1)[:, None] * width + np.arange(2 * h + 1)[None, :]).ravel()
        for m, mask in enumerate(masks):
            counts[m, idx] = mask.sum(axis=(1, 2))
            kk, pix = np.nonzero(mask.reshape(idx.size, -1))
            parts[m].append(base[kk] + off[pix])
    # np.nonzero is row-major, so the pixels come grouped by crater in the order `order`.
    row = np.empty(n, np.int64)
    row[order] = np.arange(n)
    out = []
    for m in range(3):
        c = np.concatenate([[0], np.cumsum(counts[m, order])])
        out.append((np.concatenate(parts[m]), np.stack([c[row], c[row + 1]], axis=1)))
    return out, ideal, pad


def _assign_rims(
    b: F32, x: FloatArray, y: FloatArray, r: FloatArray, score: FloatArray, *,
    rim_width: float, match_threshold: float,
) -> FloatArray:
    """Greedy rim assignment (module docstring, 8); returns the final scores.

    Craters are visited by descending score (ties by ``x``, ``y``, ``r``); each is scored
    again (7) on the rim pixels no accepted crater has claimed, and, if it still reaches
    ``match_threshold``, claims the pixels of its ring zone.
    """
    out = np.zeros(x.size)
    if x.size == 0:
        return out
    ((zi, zs), (ii, is_), (oi, os_)), ideal, pad = _ring_pixels(
        x, y, r, rim_width=rim_width, shape=(b.shape[0], b.shape[1]))
    free = np.pad(b, pad).ravel()
    for k in np.lexsort((r, y, x, -score)):
        zone = zi[zs[k, 0] : zs[k, 1]]
        inner = ii[is_[k, 0] : is_[k, 1]]
        outer = oi[os_[k, 0] : os_[k, 1]]
        fill = float(free[zone].sum()) / max(zone.size, 1)
        dens = max(float(free[inner].sum()) / max(inner.size, 1),
                   float(free[outer].sum()) / max(outer.size, 1))  # as in _measure
        out[k] = min(fill / max(ideal[k], 1e-9), 1.0) - dens
        if out[k] >= match_threshold:
            free[zone] = 0.0
    return out


def find_craters(
    heat: npt.ArrayLike,
    *,
    r_min: float = 3.0,
    r_max: float = 60.0,
    threshold: float = 0.6,
    match_threshold: float = 0.3,
    search_threshold: float | None = None,
    rim_width: float = 2.0,
    pyramid_radius: float = 8.0,
    overlap_pos_frac: float = 0.5,
    overlap_rad_frac: float = 0.3,
    refine: bool = True,
) -> CraterCandidates:
    """Extract craters (centre, radius) from a rim heat map (module docstring).

    Parameters
    ----------
    heat : (ny, nx) float array
        Rim heat map, e.g. a U-Net's rim probability in [0, 1]; NaN or inf marks no data.
    r_min, r_max : float
        Radius range searched (px), ``1 <= r_min < r_max``.
    threshold : float
        Heat level that marks a rim pixel (DeepMoon's ``target_thresh``).  The default
        and ``match_threshold``'s were tuned on the bundled ``demo_craters`` model
        (simulated fields, seeds 0-9); 0.5-0.7 work as well there.
    match_threshold : float
        Minimum final score (module docstring, 7, 8): about the fraction of the rim that
        is present, less the rim density around it (DeepMoon's ``template_thresh``).
        Lower finds more craters and more false ones.
    search_threshold : float, optional
        Minimum template response of a candidate (default ``0.8 * match_threshold``).
    rim_width : float
        Width of a rim in the thresholded heat map (px): 2 for a model trained on the
        ``|r - R| <= 1`` px rim mask of :mod:`cnnpipe.testing.craters`.
    pyramid_radius : float
        Smallest template radius (px) used on downsampled levels, >= 4; smaller is faster
        and coarser in radius before the refinement.
    overlap_pos_frac, overlap_rad_frac : float
        Matches closer than ``overlap_pos_frac`` mean radii with radii within
        ``overlap_rad_frac`` mean radii are one crater (the best score is kept).
    refine : bool
        Re-fit centres and radii on the full-resolution rim pixels (module docstring, 6).

    Returns
    -------
    CraterCandidates
        Sorted by descending score; empty (with its schema) when nothing matches.

    Raises
    ------
    InputError
        ``heat`` is not a non-empty two-dimensional array.
    ConfigError
        A parameter is out of range.

    Notes
    -----
    A 2048 x 2048 map of a crowded field (12 000 craters, radii 3-60 px) takes about 4 s
    of CPU on one core: a quarter for the template search (about 16 full-size FFT
    correlations), under half to refine and score ~70 000 candidates, the rest for the
    rim assignment.

    Rims of craters larger than ``r_max`` are claimed by nothing and can be matched by
    small rings tangent to them: search the whole range of radii present and select
    afterwards.  Craters are found anywhere in the map; the caller de-duplicates
    across tile borders (:func:`cnnpipe.pipeline.dedup.dedupe_craters`) and flags
    craters whose ring leaves the map.
    """
    a = np.asarray(heat, dtype=np.float32)
    if a.ndim != 2 or a.size == 0:
        msg = f"Expected a non-empty (y, x) heat map. Got shape {a.shape}."
        raise InputError(msg)
    if not 1.0 <= r_min < r_max:
        msg = f"Expected 1 <= r_min < r_max (px). Got r_min={r_min}, r_max={r_max}."
        raise ConfigError(msg)
    if not (rim_width > 0 and pyramid_radius >= 4 and 0 < match_threshold <= 1):
        msg = (
            "Expected rim_width > 0, pyramid_radius >= 4 and 0 < match_threshold <= 1. "
            f"Got {rim_width}, {pyramid_radius} and {match_threshold}."
        )
        raise ConfigError(msg)
    search = 0.8 * match_threshold if search_threshold is None else float(search_threshold)
    with np.errstate(invalid="ignore"):
        b = (np.isfinite(a) & (a >= threshold)).astype(np.float32)  # no data: background
    rows: list[FloatArray] = []
    level_img, s, r_lo = b, 1, float(r_min)
    while r_lo <= r_max:
        r_hi = 2.0 * pyramid_radius * s  # exclusive upper radius of this level
        radii_full = np.arange(r_lo, min(r_hi, r_max + 0.5 * s), s, dtype=np.float64)
        if radii_full.size:
            radii = radii_full / s
            width = max(rim_width / s + 1.0, 1.5)
            hmax = math.ceil(float(radii[-1]) * (1 + _BAND_FRAC) + width + 3)
            pk = _level_peaks(_Level(level_img, s, hmax), radii, rim_width, search)
            pk[:, :2] = s * pk[:, :2] + (s - 1) / 2.0
            pk[:, 2] *= s
            rows.append(pk)
            r_lo = float(radii_full[-1]) + s
        if r_hi > r_max:
            break
        level_img = _pool2(level_img)
        s *= 2
        r_lo = max(r_lo, pyramid_radius * s)
    pk = np.concatenate(rows) if rows else np.zeros((0, 4))
    # Template responses only thin out near-identical matches; the final score decides.
    pk = pk[dedupe_craters(pk[:, 0], pk[:, 1], pk[:, 2], pk[:, 3],
                           pos_frac=min(overlap_pos_frac, _PRE_POS_FRAC),
                           rad_frac=min(overlap_rad_frac, _PRE_RAD_FRAC))]  # fmt: skip
    weights = np.where(b > 0, np.clip(np.nan_to_num(a), 0.0, 1.0), 0.0).astype(np.float32)
    x, y, r, score = _measure(b, weights, pk[:, 0], pk[:, 1], pk[:, 2],
                              rim_width=rim_width, refine=refine)  # fmt: skip
    ok = (score >= match_threshold) & (r >= r_min - 0.5) & (r <= r_max * 1.1)
    x, y, r, score = x[ok], y[ok], r[ok], score[ok]
    keep = dedupe_craters(x, y, r, score, pos_frac=overlap_pos_frac, rad_frac=overlap_rad_frac)
    x, y, r, score = x[keep], y[keep], r[keep], score[keep]
    score = _assign_rims(b, x, y, r, score, rim_width=rim_width,
                         match_threshold=match_threshold)  # fmt: skip
    ok = score >= match_threshold
    x, y, r, score = x[ok], y[ok], r[ok], score[ok]
    order = np.lexsort((r, y, x, -score))
    return CraterCandidates(x=x[order], y=y[order], radius=r[order], score=score[order])
