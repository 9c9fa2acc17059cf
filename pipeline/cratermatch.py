r"""One-to-one matching of detected craters to a truth catalog; recall and precision.

Pure numpy and scipy (k-d tree); no I/O.

A detection ``p`` can match a truth crater ``t`` when

.. math::

    \lVert c_p - c_t \rVert < f_\mathrm{pos}\, r_t
    \quad\text{and}\quad
    |r_p - r_t| < f_\mathrm{rad}\, r_t ,

relative to the *truth* radius (defaults 0.5 and 0.3, the DeepMoon-style criterion of
the crater issue).  Candidate pairs are accepted greedily by increasing cost
``(|c_p - c_t| + |r_p - r_t|) / r_t`` (ties by truth then detection index), each crater
on either side used at most once, so a second detection of one crater counts as a false
positive.

Recall is the fraction of the *selected* truth craters (``truth_select``, e.g. visible
rims and ``2 r >= 10`` px) matched by any detection; precision the fraction of the
selected detections (``pred_select``, e.g. ``2 r >= 10`` px) matched to any truth crater
(also unselected ones: finding a half-erased crater is not a false positive).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from cnnpipe.errors import ConfigError, InputError

__all__ = ["CraterMatch", "match_craters"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, kw_only=True, eq=False)
class CraterMatch:
    """Result of :func:`match_craters`.

    Attributes
    ----------
    pairs : (k, 2) int64
        Matched ``(pred index, truth index)`` pairs, by increasing cost.
    recall : float
        Matched fraction of the selected truth craters (NaN when none is selected).
    precision : float
        Matched fraction of the selected detections (NaN when none is selected).
    n_truth, n_pred : int
        Numbers of selected truth craters and detections.
    """

    pairs: IntArray
    recall: float
    precision: float
    n_truth: int
    n_pred: int


def _xyr(a: npt.ArrayLike, name: str) -> FloatArray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 3))
    if arr.ndim != 2 or arr.shape[1] != 3:
        msg = f"Expected {name} as an (n, 3) array of x, y, radius (px). Got shape {arr.shape}."
        raise InputError(msg)
    if not np.isfinite(arr).all() or arr[:, 2].min() <= 0:
        msg = f"Expected finite {name} with radii > 0. Got NaN, inf or a radius <= 0."
        raise InputError(msg)
    return arr


def _select(sel: npt.ArrayLike | None, n: int, name: str) -> BoolArray:
    if sel is None:
        return np.ones(n, bool)
    s = np.asarray(sel, dtype=bool).ravel()
    if s.size != n:
        msg = f"Expected {name} with one flag per row ({n}). Got {s.size}."
        raise InputError(msg)
    return s


def match_craters(
    pred: npt.ArrayLike,
    truth: npt.ArrayLike,
    *,
    pos_frac: float = 0.5,
    rad_frac: float = 0.3,
    pred_select: npt.ArrayLike | None = None,
    truth_select: npt.ArrayLike | None = None,
) -> CraterMatch:
    """Match detections to truth craters one to one (module docstring).

    Parameters
    ----------
    pred : (n, 3) float
        Detections: ``x, y, radius`` (px), e.g. :attr:`CraterCandidates.xyr`.
    truth : (m, 3) float
        Truth craters ``x, y, radius`` (px), same frame.
    pos_frac : float
        Centre distance limit as a fraction of the truth radius.
    rad_frac : float
        Radius difference limit as a fraction of the truth radius.
    pred_select : (n,) bool, optional
        Detections that count in the precision (default all).
    truth_select : (m,) bool, optional
        Truth craters that count in the recall (default all).

    Returns
    -------
    CraterMatch
    """
    if not (pos_frac > 0 and rad_frac > 0):
        msg = f"Expected pos_frac > 0 and rad_frac > 0. Got {pos_frac} and {rad_frac}."
        raise ConfigError(msg)
    p = _xyr(pred, "pred")
    t = _xyr(truth, "truth")
    psel = _select(pred_select, p.shape[0], "pred_select")
    tsel = _select(truth_select, t.shape[0], "truth_select")
    pairs = np.zeros((0, 2), np.int64)
    if p.shape[0] and t.shape[0]:
        hits = cKDTree(p[:, :2]).query_ball_point(t[:, :2], pos_frac * t[:, 2])
        counts = np.fromiter((len(h) for h in hits), np.int64, t.shape[0])
        ti = np.repeat(np.arange(t.shape[0]), counts)
        pi = np.fromiter((k for h in hits for k in h), np.int64, int(counts.sum()))
        d = np.hypot(p[pi, 0] - t[ti, 0], p[pi, 1] - t[ti, 1])
        dr = np.abs(p[pi, 2] - t[ti, 2])
        ok = (d < pos_frac * t[ti, 2]) & (dr < rad_frac * t[ti, 2])
        pi, ti, cost = pi[ok], ti[ok], ((d + dr) / t[ti, 2])[ok]
        order = np.lexsort((pi, ti, cost))
        used_p = np.zeros(p.shape[0], bool)
        used_t = np.zeros(t.shape[0], bool)
        out = []
        for k in order:
            a, b = pi[k], ti[k]
            if not (used_p[a] or used_t[b]):
                used_p[a] = used_t[b] = True
                out.append((a, b))
        if out:
            pairs = np.asarray(out, dtype=np.int64)
    n_t, n_p = int(tsel.sum()), int(psel.sum())
    hit_t = np.zeros(t.shape[0], bool)
    hit_p = np.zeros(p.shape[0], bool)
    hit_p[pairs[:, 0]] = True
    hit_t[pairs[:, 1]] = True
    recall = float(hit_t[tsel].sum() / n_t) if n_t else float("nan")
    precision = float(hit_p[psel].sum() / n_p) if n_p else float("nan")
    return CraterMatch(pairs=pairs, recall=recall, precision=precision, n_truth=n_t, n_pred=n_p)
