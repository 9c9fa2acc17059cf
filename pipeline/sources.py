"""FITS images as lazy, picklable pixel sources for ``cnnpipe run``.

:func:`open_sources` turns the command line's image arguments into :class:`Source`
objects after validating everything that can be checked before work starts (file, HDU,
dimensionality, readable pixels, band grids, WCS).  A Source is small and picklable: the
planner sends it to Dask workers, and each worker reads its own windows with
:meth:`Source.read_window`.

Pixels are read by :mod:`cnnpipe.pipeline.fitsread` (per-process cache of open files,
memmap / tile-section / decompressed-stream reads, BSCALE/BZERO/BLANK scaling to
native-endian float32 with NaN for BLANK, NaN and ±inf pixels); the names other modules
use from it (:class:`HDURef`, :func:`clear_cache`, :func:`reflect_indices`,
:data:`REFLECT_MODE`) are re-exported here.

Windows may extend beyond the image: outside pixels are the image mirrored about its
edges with the edge pixel repeated (:data:`REFLECT_MODE` = numpy's ``'symmetric'``,
scipy.ndimage's ``'reflect'``), ``... c b a | a b c ... x y z | z y x ...``, repeated as
often as needed for windows larger than the image.  Masked pixels are mirrored as NaN.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
from astropy.wcs import WCS

from cnnpipe.errors import ConfigError, InputError
from cnnpipe.pipeline.fitscheck import check_integrity, prescan
from cnnpipe.pipeline.fitsread import (
    REFLECT_MODE,
    HDUInfo,
    HDURef,
    check_pixels,
    clear_cache,
    read_band,
    reflect_indices,
    scan_file,
)
from cnnpipe.pipeline.wcsio import Cards, grid_mismatch, header_cards, wcs_from_cards

__all__ = [
    "REFLECT_MODE",
    "HDURef",
    "HDUSelector",
    "NoWCSWarning",
    "Source",
    "clear_cache",
    "open_sources",
    "parse_hdu_selector",
    "parse_spec",
    "reflect_indices",
]

logger = logging.getLogger(__name__)

HDUSelector = int | tuple[str, int | None]
"""An HDU index, or ``(EXTNAME, EXTVER)`` with EXTVER None for every HDU of that name."""


class NoWCSWarning(UserWarning):
    """An input image has no usable celestial WCS; it runs in pixel coordinates."""


@dataclass(frozen=True)
class Source:
    """One input image (one or several bands on one pixel grid).  Small and picklable.

    Parameters
    ----------
    key : str
        Store key, unique in a run and safe as a Zarr group name (``survey``,
        ``survey_SCI_2``).
    bands : tuple of str
        Band names in channel order.
    refs : tuple of HDURef
        One per band, in channel order.
    shape : (ny, nx)
        Image shape in pixels.
    header : Cards
        Header cards of the first band's HDU worth keeping (WCS, observation keywords);
        no structure, scaling, checksum or compression cards.
    has_wcs : bool
        Whether ``header`` holds a usable celestial WCS.
    """

    key: str
    bands: tuple[str, ...]
    refs: tuple[HDURef, ...]
    shape: tuple[int, int]
    header: Cards = field(repr=False)
    has_wcs: bool

    @property
    def nbands(self) -> int:
        """Number of channels (bands)."""
        return len(self.refs)

    def read_window(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[np.float32]:
        """Read the pixels of rows ``y0:y1`` and columns ``x0:x1``, all bands.

        Parameters
        ----------
        y0, y1, x0, x1 : int
            0-based half-open pixel window; may extend beyond the image on any side
            (negative starts, ends past the shape).

        Returns
        -------
        (c, y1 - y0, x1 - x0) float32, native byte order
            Pixel values in the file's physical units (BSCALE/BZERO applied); NaN where
            a pixel is BLANK, NaN or ±inf.  Outside the image: mirrored (see
            :data:`REFLECT_MODE`).

        Notes
        -----
        Reads only the window (plus, for edge windows, the in-image pixels the mirror
        needs), opening the file itself through a per-process cache; see
        :mod:`cnnpipe.pipeline.fitsread` for compressed files.
        """
        y0, y1, x0, x1 = int(y0), int(y1), int(x0), int(x1)
        if y1 <= y0 or x1 <= x0:
            msg = f"Expected a non-empty window (y0 < y1, x0 < x1). Got y {y0}:{y1}, x {x0}:{x1}."
            raise ValueError(msg)
        ny, nx = self.shape
        out = np.empty((len(self.refs), y1 - y0, x1 - x0), dtype=np.float32)
        if y0 >= 0 and x0 >= 0 and y1 <= ny and x1 <= nx:
            for c, ref in enumerate(self.refs):
                read_band(ref, (y0, y1, x0, x1), out[c])
            return out
        iy = reflect_indices(np.arange(y0, y1), ny)
        ix = reflect_indices(np.arange(x0, x1), nx)
        ly, hy = int(iy.min()), int(iy.max()) + 1
        lx, hx = int(ix.min()), int(ix.max()) + 1
        block = np.empty((hy - ly, hx - lx), dtype=np.float32)
        rows = np.empty((y1 - y0, hx - lx), dtype=np.float32)
        for c, ref in enumerate(self.refs):
            read_band(ref, (ly, hy, lx, hx), block)
            np.take(block, iy - ly, axis=0, out=rows)
            np.take(rows, ix - lx, axis=1, out=out[c])
        return out

    def wcs(self) -> WCS | None:
        """The image's celestial WCS rebuilt from :attr:`header`, or None without one.

        SIP and TPV distortions are kept; lookup-table distortions are not (see
        :mod:`cnnpipe.pipeline.wcsio`).
        """
        if not self.has_wcs:
            return None
        wcs, _ = wcs_from_cards(self.header, self.shape)
        return wcs


# --------------------------------------------------------------------------- parsing

_SPEC_RE = re.compile(r"^(?P<path>.*[^\[\]])\[(?P<sel>[^\[\]]*)\]$")
_NAME_SEL_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_\-. ]*?)\s*(?:,\s*(?P<ver>\d+))?$")
_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fz")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".z", ".zip")


def parse_hdu_selector(selector: str | int, *, where: str = "--hdu") -> HDUSelector:
    """Parse ``3``, ``"3"``, ``"SCI"`` or ``"SCI,2"`` into an :data:`HDUSelector`.

    EXTNAME is compared case-insensitively (as FITS requires) and returned upper-case.
    """
    if isinstance(selector, bool):
        msg = f"{where}: expected an HDU index or EXTNAME[,EXTVER]. Got {selector!r}."
        raise ConfigError(msg)
    if isinstance(selector, int):
        if selector < 0:
            msg = f"{where}: expected an HDU index >= 0. Got {selector}."
            raise ConfigError(msg)
        return selector
    text = selector.strip()
    if text.isdigit():
        return int(text)
    match = _NAME_SEL_RE.match(text)
    if match is None:
        msg = (
            f"{where}: cannot parse the HDU selector [{text}]. Expected [INDEX], [EXTNAME] "
            "or [EXTNAME,EXTVER], e.g. survey.fits[SCI,2] or survey.fits[1]."
        )
        raise InputError(msg)
    ver = match.group("ver")
    return match.group("name").strip().upper(), (int(ver) if ver is not None else None)


def parse_spec(spec: str) -> tuple[str, HDUSelector | None]:
    """Split ``"survey.fits[SCI,2]"`` into ``("survey.fits", ("SCI", 2))``.

    A spec without brackets, or naming an existing file whose name ends in brackets,
    has no selector.
    """
    match = _SPEC_RE.match(spec)
    if match is None or os.path.exists(spec):
        return spec, None
    return match.group("path"), parse_hdu_selector(match.group("sel"), where=spec)


def _stem(path: str) -> str:
    name = os.path.basename(path)
    lower = name.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            name, lower = name[: -len(suffix)], lower[: -len(suffix)]
            break
    for suffix in _FITS_SUFFIXES:
        if lower.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name


def _safe_key(text: str) -> str:
    # Zarr v3 node names: no '/', not '.'/'..', must not start with '__'; we keep to a
    # portable alphabet so keys also work as file names and in URLs.
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
    return key or "image"


def _hdu_suffix(info: HDUInfo) -> str:
    if info.extname:
        return info.extname if info.extver is None else f"{info.extname}_{info.extver}"
    return str(info.index)


# --------------------------------------------------------------------------- selection


def _describe(info: HDUInfo) -> str:
    if info.kind == "table":
        return f"a table ({info.type_name})"
    if info.kind == "groups":
        return "random groups (GroupsHDU)"
    if info.kind != "image":
        return f"a {info.type_name}"
    if not info.shape:
        return "an HDU without pixels (NAXIS=0)"
    if 0 in info.shape:
        return f"an empty image (shape {'x'.join(map(str, info.shape))})"
    shape = "x".join(map(str, info.shape))
    if len(info.shape) == 3:
        return f"NAXIS=3 (a cube, shape {shape})"
    return f"NAXIS={len(info.shape)} (shape {shape})"


def _usable(info: HDUInfo) -> bool:
    return info.kind == "image" and len(info.shape) >= 1 and 0 not in info.shape


def _check_2d(info: HDUInfo, given: str, infos: Sequence[HDUInfo]) -> None:
    if _usable(info) and len(info.shape) == 2:
        return
    label = f"{given}[{info.label}]"
    images = [i for i in infos if _usable(i) and len(i.shape) == 2]
    if _usable(info):
        fix = (
            "choose a plane and write it as a 2-D image, e.g. "
            f"fits.writeto('plane.fits', fits.getdata('{given}', {info.index})[k], header)"
        )
    elif images:
        fix = f"select an image HDU, e.g. {given}[{images[0].label}]"
    else:
        fix = f"the file has no 2-D image HDU ({_summary(infos)})"
    msg = f"{label}: expected a 2-D image HDU. Got {_describe(info)}; {fix}."
    raise InputError(msg)


def _summary(infos: Sequence[HDUInfo]) -> str:
    parts = []
    for i in infos:
        name = f"{i.index} {i.label}" if i.extname else str(i.index)
        parts.append(f"[{name}] {_describe(i)}")
    return "; ".join(parts)


def _select(given: str, infos: Sequence[HDUInfo], selector: HDUSelector | None) -> list[HDUInfo]:
    """The HDUs of one file a spec means, each checked to be a 2-D image with data."""
    if selector is None:
        chosen = [i for i in infos if _usable(i)]
        sci = [i for i in chosen if i.extname == "SCI"]
        chosen = sci or chosen
        if not chosen:
            msg = (
                f"{given}: expected at least one image HDU with data. Got {_summary(infos)}; "
                "check that this is an image and not a catalog or a header-only file."
            )
            raise InputError(msg)
    elif isinstance(selector, int):
        if selector >= len(infos):
            msg = (
                f"{given}[{selector}]: no such HDU; the file has {len(infos)} ({_summary(infos)})."
            )
            raise InputError(msg)
        chosen = [infos[selector]]
    else:
        name, ver = selector
        chosen = [
            i
            for i in infos
            if (i.extname or "").upper() == name and (ver is None or (i.extver or 1) == ver)
        ]
        if not chosen:
            sel = name if ver is None else f"{name},{ver}"
            msg = f"{given}[{sel}]: no HDU of that EXTNAME/EXTVER; the file has {_summary(infos)}."
            raise InputError(msg)
    for info in chosen:
        _check_2d(info, given, infos)
    return chosen


@dataclass(frozen=True)
class _Image:
    given: str
    path: str
    info: HDUInfo
    cards: Cards
    wcs: WCS | None

    @property
    def label(self) -> str:
        return f"{self.given}[{self.info.label}]"

    @property
    def ref(self) -> HDURef:
        return HDURef(self.path, self.info.index, self.info.extname, self.info.extver)


def _open_spec(spec: str, hdu: HDUSelector | None) -> tuple[str, list[_Image]]:
    """Validate one spec and return its 2-D images (pixels touched, WCS parsed)."""
    given, selector = parse_spec(spec)
    if selector is None:
        selector = hdu
    path = os.path.abspath(os.path.expanduser(given))
    prescan(path, given)
    infos = scan_file(path, given)
    chosen = _select(given, infos, selector)
    for info in chosen:
        check_pixels(path, given, info)
    check_integrity(path, given, chosen)
    images = []
    for info in chosen:
        label = f"{given}[{info.label}]"
        cards, dropped = header_cards(info.header, where=label)
        if dropped:
            warnings.warn(
                f"{label}: lookup-table distortions (CPDIS/D2IM) are not kept; world "
                "coordinates use the SIP/linear WCS only.",
                UserWarning,
                stacklevel=4,
            )
        wcs, reason = wcs_from_cards(cards, info.shape2d)
        if wcs is None:
            warnings.warn(
                f"{label}: no usable celestial WCS ({reason}); runs in pixel coordinates.",
                NoWCSWarning,
                stacklevel=4,
            )
        images.append(_Image(given, path, info, cards, wcs))
    return given, images


# --------------------------------------------------------------------------- public API


def open_sources(
    specs: Sequence[str],
    *,
    hdu: str | int | None = None,
    bands: Mapping[str, str] | None = None,
    model_bands: Sequence[str] | None = None,
    model_label: str = "model",
) -> list[Source]:
    """Validate the input images of a run and describe them as :class:`Source` objects.

    Parameters
    ----------
    specs : sequence of str
        Image paths, optionally with an HDU selector: ``survey.fits``,
        ``survey.fits[SCI,2]``, ``survey.fits[SCI]`` (every SCI extension),
        ``survey.fits[3]``, ``x.fits.gz``.  Without a selector (and without ``hdu``) every
        2-D image HDU with data is its own Source — only the ``SCI`` extensions when the
        file has any (HST/JWST-style ``SCI``/``ERR``/``DQ`` files); empty primary HDUs and
        tables are skipped.
    hdu : str or int, optional
        Selector for specs that have none (``--hdu``): ``3``, ``"SCI"``, ``"SCI,2"``.
    bands : mapping of band name to spec, optional
        ``{"g": "a.fits", "r": "b.fits"}`` (``--band g=a.fits``): one multi-band Source per
        image, the band files' selected HDUs paired in order.  Exclusive with ``specs``.
    model_bands : sequence of str, optional
        The model's band order.  With ``bands``: channels are stacked in this order and
        every model band must be given.  Without ``bands``: a single-band model names the
        band of every image; a multi-band model is an error.
    model_label : str
        How messages name the model(s) behind ``model_bands`` (e.g. ``"model two
        (/models/two.onnx)"``).

    Returns
    -------
    list of Source
        In spec order, then HDU order; keys unique (``_2``, ``_3`` appended on clashes).

    Raises
    ------
    InputError
        Missing, unreadable, truncated or corrupt file (a CHECKSUM/DATASUM that does not
        match, a broken gzip/bzip2/xz stream: :mod:`cnnpipe.pipeline.fitscheck`);
        non-image, empty or non-2-D HDU; band grids that differ; model bands that are not
        given.
    ConfigError
        Both ``specs`` and ``bands``, neither, or a malformed ``hdu``.

    Warns
    -----
    NoWCSWarning
        For each image without a usable celestial WCS (it runs in pixel coordinates).
    """
    try:
        selector = None if hdu is None else parse_hdu_selector(hdu)
    except InputError as exc:
        raise ConfigError(str(exc)) from exc
    if bands and specs:
        msg = "Give the images either as paths or as --band NAME=PATH, not both."
        raise ConfigError(msg)
    if not bands and not specs:
        msg = "No input images. Give at least one FITS path (or --band NAME=PATH)."
        raise ConfigError(msg)
    if bands:
        sources = _open_multiband(bands, selector, model_bands, model_label)
    else:
        sources = _open_single(specs, selector, model_bands, model_label)
    return _dedupe_keys(sources)


def _open_single(
    specs: Sequence[str], selector: HDUSelector | None, model_bands: Sequence[str] | None,
    model_label: str = "model",
) -> list[Source]:
    if model_bands is not None and len(model_bands) > 1:
        msg = (
            f"{model_label} needs bands {','.join(model_bands)}; got one single-band image "
            f"per path ({', '.join(specs)}); give each band as --band NAME=PATH."
        )
        raise InputError(msg)
    band = (model_bands[0],) if model_bands else ("image",)
    sources = []
    for spec in specs:
        given, images = _open_spec(spec, selector)
        explicit = parse_spec(spec)[1] is not None or selector is not None
        for image in images:
            key = _stem(given)
            if explicit or len(images) > 1:
                key = f"{key}_{_hdu_suffix(image.info)}"
            sources.append(
                Source(
                    key=_safe_key(key),
                    bands=band,
                    refs=(image.ref,),
                    shape=image.info.shape2d,
                    header=image.cards,
                    has_wcs=image.wcs is not None,
                )
            )
    return sources


def _open_multiband(
    bands: Mapping[str, str], selector: HDUSelector | None, model_bands: Sequence[str] | None,
    model_label: str = "model",
) -> list[Source]:
    if model_bands is not None:
        missing = [b for b in model_bands if b not in bands]
        if missing:
            msg = (
                f"{model_label} needs bands {','.join(model_bands)}; got {','.join(bands)} "
                f"(missing {','.join(missing)}); add --band {missing[0]}=PATH."
            )
            raise InputError(msg)
        extra = [b for b in bands if b not in model_bands]
        if extra:
            logger.info("bands %s are not used by the model; ignoring them", ",".join(extra))
        order = list(model_bands)
    else:
        order = list(bands)
    opened = {b: _open_spec(bands[b], selector) for b in order}
    first = order[0]
    given0, images0 = opened[first]
    for b in order[1:]:
        given, images = opened[b]
        if len(images) != len(images0):
            msg = (
                f"band {b} ({given}) has {len(images)} image HDUs but band {first} ({given0}) "
                f"has {len(images0)}; select matching HDUs, e.g. {given}[SCI,1]."
            )
            raise InputError(msg)
        for a_img, b_img in zip(images0, images):
            _check_same_grid(a_img, b_img)
    stems = [_stem(opened[b][0]) for b in order]
    base = _common_prefix(stems).rstrip("_-. ") or stems[0]
    sources = []
    for k, image0 in enumerate(images0):
        key = base if len(images0) == 1 else f"{base}_{_hdu_suffix(image0.info)}"
        refs = tuple(opened[b][1][k].ref for b in order)
        sources.append(
            Source(
                key=_safe_key(key),
                bands=tuple(order),
                refs=refs,
                shape=image0.info.shape2d,
                header=image0.cards,
                has_wcs=image0.wcs is not None,
            )
        )
    return sources


def _common_prefix(names: Sequence[str]) -> str:
    first, last = min(names), max(names)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _check_same_grid(a: _Image, b: _Image) -> None:
    if a.info.shape2d != b.info.shape2d:
        sa = "x".join(map(str, a.info.shape2d))
        sb = "x".join(map(str, b.info.shape2d))
        msg = (
            f"{b.label}: band images must share one pixel grid. Got shape {sb} but "
            f"{a.label} has {sa}; reproject the bands onto one grid (e.g. with reproject)."
        )
        raise InputError(msg)
    if a.wcs is not None and b.wcs is not None:
        offset = grid_mismatch(a.wcs, b.wcs, a.info.shape2d)
        if offset is not None:
            msg = (
                f"{b.label}: band images must share one pixel grid. Its WCS differs from "
                f"{a.label} by up to {offset:.3g} pixels (tolerance 0.1); reproject the "
                "bands onto one grid (e.g. with reproject)."
            )
            raise InputError(msg)
    elif (a.wcs is None) != (b.wcs is None):
        without = a if a.wcs is None else b
        other = b if a.wcs is None else a
        warnings.warn(
            f"{without.label}: no WCS to check that it shares the pixel grid of "
            f"{other.label}; assuming it does (same shape).",
            UserWarning,
            stacklevel=4,
        )


def _dedupe_keys(sources: list[Source]) -> list[Source]:
    seen: dict[str, int] = {}
    taken = {s.key for s in sources}
    out = []
    for source in sources:
        n = seen.get(source.key, 0) + 1
        seen[source.key] = n
        if n == 1:
            out.append(source)
            continue
        key = f"{source.key}_{n}"
        while key in taken:
            n += 1
            key = f"{source.key}_{n}"
        taken.add(key)
        out.append(replace(source, key=key))
    return out
