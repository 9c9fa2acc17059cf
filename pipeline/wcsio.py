"""FITS header cards and WCS of an input image: what a Source keeps and how it is rebuilt.

A :class:`~cnnpipe.pipeline.sources.Source` travels to Dask workers and into the output
store, so it keeps the image's header as plain ``(keyword, value, comment)`` tuples and
rebuilds :class:`astropy.wcs.WCS` from them on demand.

What survives the round trip through cards: the linear WCS (CRPIX, CRVAL, CD/PC, CDELT,
CTYPE, CUNIT, ...), projection parameters (PV, e.g. TPV), and SIP polynomial distortion
(``A_*``/``B_*``/``AP_*``/``BP_*``), which astropy keeps in header cards.  What does not:
lookup-table distortions (``CPDIS``/``CQDIS``/``D2IM`` with ``DP``/``DQ`` record cards),
whose tables live in other HDUs (``WCSDVARR``/``D2IMARR``) of the file; they are dropped,
with a warning, and world coordinates then use the SIP / linear part only.  They amount
to at most a fraction of a pixel (HST detector corrections).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

__all__ = [
    "Cards",
    "grid_mismatch",
    "header_cards",
    "header_from_cards",
    "usable_wcs",
    "wcs_from_cards",
]

Cards = tuple[tuple[str, object, str], ...]
"""FITS header cards as ``(keyword, value, comment)``; values are str/int/float/bool/None."""

# Structure, scaling, checksums and tile-compression bookkeeping: they describe the file,
# not the image, and would be wrong for any array written from the Source.
_STRUCTURAL = re.compile(
    r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|GROUPS|BSCALE|BZERO|BLANK"
    r"|CHECKSUM|DATASUM|INHERIT|END|ZIMAGE|ZCMPTYPE|ZBITPIX|ZNAXIS\d*|ZTILE\d+|ZNAME\d+"
    r"|ZVAL\d+|ZMASKCMP|ZSIMPLE|ZTENSION|ZEXTEND|ZBLOCKED|ZPCOUNT|ZGCOUNT|ZHECKSUM"
    r"|ZDATASUM|ZQUANTIZ|ZDITHER0|ZBLANK|ZSCALE|ZZERO)$"
)
# Lookup-table distortions: their tables are other HDUs of the file (see module docstring).
_TABLE_DISTORTION = re.compile(r"^(CPDIS\d|CQDIS\d|DP\d|DQ\d|D2IM\w*|AXISCORR|CPERR\d|CQERR\d)")
_COMMENTARY = {"COMMENT", "HISTORY", ""}


def header_cards(header: fits.Header, *, where: str = "header") -> tuple[Cards, bool]:
    """Keep the cards of an image header worth carrying with the image.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The image HDU's header (for a tile-compressed HDU, the image header).
    where : str
        How warnings name the header (``survey.fits[0]``).

    Returns
    -------
    cards : tuple of (keyword, value, comment)
        All cards except structure/scaling/compression/checksum cards, COMMENT/HISTORY,
        and lookup-table distortion cards.  Undefined values become ``None``; values that
        are not str/int/float/bool (complex) become their string form.  Cards whose
        value cannot be parsed, or is not finite (``1E+9999``), are dropped with a warning:
        FITS allows neither, and astropy cannot write them back.
    dropped_table_distortion : bool
        True when lookup-table distortion cards were present and dropped.

    Warns
    -----
    UserWarning
        For each unreadable card (named with ``where``).
    """
    kept: list[tuple[str, object, str]] = []
    dropped = False
    for card in header.cards:
        keyword = card.keyword
        if keyword in _COMMENTARY or _STRUCTURAL.match(keyword):
            continue
        if _TABLE_DISTORTION.match(keyword):
            dropped = True
            continue
        try:
            value = card.value
            comment = str(card.comment)
            readable = not isinstance(value, float | complex) or bool(np.isfinite(value))
        except (fits.VerifyError, ValueError):  # astropy's parser gave up on the value
            readable = False
        if not readable:
            warnings.warn(
                f"{where}: expected a FITS value in card {keyword}. Got "
                f"{str(card.image)[10:].strip()!r}; the card is dropped (world coordinates "
                "may be missing).",
                UserWarning,
                stacklevel=2,
            )
            continue
        if isinstance(value, fits.card.Undefined):
            value = None
        elif isinstance(value, np.generic):
            value = value.item()
        if not (value is None or isinstance(value, str | int | float | bool)):
            value = str(value)
        kept.append((keyword, value, comment))
    return tuple(kept), dropped


def header_from_cards(cards: Iterable[tuple[str, object, str]]) -> fits.Header:
    """Build an :class:`astropy.io.fits.Header` from ``(keyword, value, comment)`` cards."""
    header = fits.Header()
    for keyword, value, comment in cards:
        header.append(fits.Card(keyword, value, comment), end=True)
    return header


def wcs_from_cards(cards: Cards, shape: tuple[int, int]) -> tuple[WCS | None, str]:
    """Rebuild the celestial WCS of a 2-D image from its header cards.

    Parameters
    ----------
    cards : Cards
        Header cards as returned by :func:`header_cards`.
    shape : (ny, nx)
        Image shape in pixels; sets the WCS's ``pixel_shape``.

    Returns
    -------
    wcs : astropy.wcs.WCS or None
        The WCS, or None when the header has no usable celestial WCS.
    reason : str
        Why there is none ("" when there is one), for the warning message.
    """
    header = header_from_cards(cards)
    header["NAXIS"] = 2
    header["NAXIS1"] = shape[1]
    header["NAXIS2"] = shape[0]
    if not any(k.startswith("CTYPE") for k in header):
        return None, "no CTYPE keywords"
    try:
        with warnings.catch_warnings():
            # 'datfix'/'unitfix' notes about DATE-OBS/MJD are noise here.
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2, relax=True)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        return None, f"astropy cannot parse it: {type(exc).__name__}: {first_line}"
    return usable_wcs(wcs, shape)


def usable_wcs(wcs: WCS, shape: tuple[int, int]) -> tuple[WCS | None, str]:
    """Return ``(wcs, "")`` when ``wcs`` is a 2-D celestial WCS that maps the image centre.

    A purely linear or pixel WCS is not usable: catalogs need RA/Dec (or planetocentric
    longitude/latitude).  Returns ``(None, reason)`` otherwise.
    """
    if wcs.naxis != 2 or not wcs.has_celestial:
        ctypes = ",".join(str(c) for c in wcs.wcs.ctype) or "none"
        return None, f"no celestial axes (CTYPE {ctypes})"
    centre = np.array([[(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0]])
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            world = wcs.all_pix2world(centre, 0)
    except Exception as exc:
        return None, f"it cannot map the image centre: {type(exc).__name__}"
    if not np.all(np.isfinite(world)):
        return None, "it maps the image centre to no sky position"
    return wcs, ""


def grid_mismatch(
    wcs_a: WCS, wcs_b: WCS, shape: tuple[int, int], *, tol_pix: float = 0.1
) -> float | None:
    """Largest pixel offset between two WCSs over the image, or None when they agree.

    Maps a 5x5 grid of pixels (corners included) to the sky with ``wcs_a`` and back to
    pixels with ``wcs_b``; returns the largest offset in pixels when it exceeds
    ``tol_pix``.  A failed inversion counts as a mismatch (``inf``).
    """
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 5), np.linspace(0, ny - 1, 5))
    pix = np.column_stack([gx.ravel(), gy.ravel()])
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            world = wcs_a.all_pix2world(pix, 0)
            back = wcs_b.all_world2pix(world, 0, tolerance=1e-6, maxiter=50, quiet=True)
    except Exception:
        return float("inf")
    # Longitude wrap cannot bite here: we compare pixels, not angles.
    offset = float(np.nanmax(np.hypot(*(back - pix).T))) if np.isfinite(back).all() else np.inf
    return offset if offset > tol_pix else None
