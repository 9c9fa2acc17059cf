r"""Order-independent de-duplication of crater detections (tile borders, overlapping matches).

Pure numpy and scipy (k-d tree); no I/O.

Two detections ``i`` and ``j`` are duplicates when, with ``r̄ = (r_i + r_j) / 2``,

.. math::

    \sqrt{(x_i - x_j)^2 + (y_i - y_j)^2} < p\,\bar r
    \quad\text{and}\quad
    |r_i - r_j| < q\,\bar r ,

``p = pos_frac`` (default 0.5) and ``q = rad_frac`` (default 0.3).  This is the DeepMoon
criterion (Silburt et al. 2019, Icarus 317, 27, §2.3: a longitude/latitude distance and
a radius difference, each relative to the crater size) written in pixels and relative to
the mean radius, which makes the relation symmetric.  DeepMoon itself uses the squared
distance over the *smaller* radius squared, ``< 1.8``, and ``|Δr| / min(r) < 1.0``
(``longlat_thresh2``, ``rad_thresh`` of its ``template_match_t``, also used to match a
catalog); the defaults here are stricter so that overlapping, genuinely distinct craters
survive.

Greedy non-maximum suppression decides which of a group of duplicates survives: the
detections are visited by descending score, ties broken by ``x``, then ``y``, then ``r``
(ascending); a detection is kept unless it duplicates one already kept.  The visiting
order depends on the values only, so the kept set does not depend on the input order,
and the kept detections are pairwise distinct, so a second pass keeps them all.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from cnnpipe.errors import ConfigError, InputError

__all__ = ["dedupe_craters", "duplicate_pairs"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def _columns(
    x: npt.ArrayLike, y: npt.ArrayLike, r: npt.ArrayLike, score: npt.ArrayLike | None
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    cols = [np.asarray(v, dtype=np.float64).ravel() for v in (x, y, r)]
    n = cols[0].size
    s = np.zeros(n) if score is None else np.asarray(score, dtype=np.float64).ravel()
    sizes = [c.size for c in (*cols, s)]
    if len(set(sizes)) != 1:
        msg = f"Expected x, y, r and score of one length. Got lengths {sizes}."
        raise InputError(msg)
    if not all(np.isfinite(c).all() for c in (*cols, s)):
        msg = "Expected finite x, y, r and score. Got NaN or inf; drop those rows first."
        raise InputError(msg)
    if n and cols[2].min() <= 0:
        msg = f"Expected radii > 0 (px). Got a minimum of {cols[2].min()}."
        raise InputError(msg)
    return cols[0], cols[1], cols[2], s


def _check_fracs(pos_frac: float, rad_frac: float) -> None:
    if not (pos_frac > 0 and 0 < rad_frac < 2):
        msg = f"Expected pos_frac > 0 and 0 < rad_frac < 2. Got {pos_frac} and {rad_frac}."
        raise ConfigError(msg)


def duplicate_pairs(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    r: npt.ArrayLike,
    *,
    pos_frac: float = 0.5,
    rad_frac: float = 0.3,
) -> tuple[IntArray, IntArray]:
    """All pairs of duplicate detections (module docstring criterion).

    Parameters
    ----------
    x, y : (n,) float
        Centres (px, any common frame).
    r : (n,) float
        Radii (px), > 0.
    pos_frac, rad_frac : float
        Centre distance and radius difference limits, as fractions of the mean radius.

    Returns
    -------
    i, j : (p,) int
        Index pairs with ``i < j``, sorted by ``i`` then ``j``.
    """
    _check_fracs(pos_frac, rad_frac)
    xa, ya, ra, _ = _columns(x, y, r, None)
    if xa.size < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty
    # A partner of r_i has r_j < r_i (2 + q) / (2 - q), so r̄ < 2 r_i / (2 - q): querying
    # each point with that reach finds every pair (from both ends).
    pts = np.stack([xa, ya], axis=1)
    tree = cKDTree(pts)
    reach = pos_frac * ra * 2.0 / (2.0 - rad_frac)
    hits = tree.query_ball_point(pts, reach, return_sorted=False)
    counts = np.fromiter((len(h) for h in hits), np.int64, xa.size)
    i = np.repeat(np.arange(xa.size), counts)
    j = np.fromiter((k for h in hits for k in h), np.int64, int(counts.sum()))
    keep = i < j
    i, j = i[keep], j[keep]
    rbar = 0.5 * (ra[i] + ra[j])
    d = np.hypot(xa[i] - xa[j], ya[i] - ya[j])
    dup = (d < pos_frac * rbar) & (np.abs(ra[i] - ra[j]) < rad_frac * rbar)
    i, j = i[dup], j[dup]
    order = np.lexsort((j, i))
    return i[order], j[order]


def dedupe_craters(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    r: npt.ArrayLike,
    score: npt.ArrayLike,
    *,
    pos_frac: float = 0.5,
    rad_frac: float = 0.3,
) -> IntArray:
    """Indices of the detections kept after removing duplicates (module docstring).

    Parameters
    ----------
    x, y : (n,) float
        Centres (px, one frame for all: e.g. whole-image pixels of every tile).
    r : (n,) float
        Radii (px), > 0.
    score : (n,) float
        Detection score; higher wins.
    pos_frac : float
        Duplicates have centres closer than ``pos_frac`` times their mean radius.
    rad_frac : float
        ... and radii differing by less than ``rad_frac`` times their mean radius
        (``0 < rad_frac < 2``).

    Returns
    -------
    (k,) int64
        Indices into the inputs of the kept detections, ascending.  Among detections
        with identical ``(x, y, r, score)`` the first is kept.

    Raises
    ------
    InputError
        Arrays of different lengths, non-finite values or radii <= 0.
    ConfigError
        ``pos_frac`` or ``rad_frac`` out of range.
    """
    _check_fracs(pos_frac, rad_frac)
    xa, ya, ra, sa = _columns(x, y, r, score)
    n = xa.size
    i, j = duplicate_pairs(xa, ya, ra, pos_frac=pos_frac, rad_frac=rad_frac)
    if i.size == 0:
        return np.arange(n, dtype=np.int64)
    # Canonical visiting order: score descending, then x, y, r ascending, then index (only
    # exact duplicate rows tie there, and which of them is reported does not matter).
    order = np.lexsort((np.arange(n), ra, ya, xa, -sa))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    # Only members of some pair need the sequential pass; CSR adjacency over ranks.
    a = np.concatenate([rank[i], rank[j]])
    b = np.concatenate([rank[j], rank[i]])
    srt = np.argsort(a, kind="stable")
    a, b = a[srt], b[srt]
    start = np.searchsorted(a, np.arange(n + 1))
    suppressed = np.zeros(n, bool)
    for k in np.unique(a):
        if not suppressed[k]:
            nb = b[start[k] : start[k + 1]]
            suppressed[nb[nb > k]] = True
    return np.sort(order[~suppressed])
