"""Low-level FITS reading for :mod:`cnnpipe.pipeline.sources`: scan, cache, convert.

Blocking, per-process I/O only; :mod:`cnnpipe.pipeline.sources` validates the command
line's images and builds picklable Sources on top of it.

- :func:`scan_file` parses every header of a file into :class:`HDUInfo` records and
  :func:`check_pixels` reads an HDU's last row, turning unreadable, truncated or corrupt
  files into :class:`~cnnpipe.errors.InputError`.
- :func:`read_into` (and :func:`read_band`, its error-wrapping form for an
  :class:`HDURef`) reads an in-image window through a small per-process cache of open
  files (never pickled; emptied in a forked child and at exit, or by
  :func:`clear_cache`):

  - uncompressed HDU of an uncompressed file: positional reads (``os.preadv``) of the
    window's bytes, row by row (one read when the window spans whole rows).  Not a
    memmap: mapped file pages count in a worker's resident memory, so a memmap's RSS
    grows with the image even though the pages are only cache.
  - tile-compressed HDU (``CompImageHDU``: RICE_1, GZIP_1, GZIP_2, HCOMPRESS_1, PLIO_1):
    ``CompImageHDU.section``, which decompresses only the tiles the window touches.
  - whole-file compression (``.fits.gz``, ``.bz2``, ``.xz``, ``.Z``, ``.zip``): such a
    stream cannot be read at an offset, so the HDU's data are decompressed once per
    worker process and kept in memory (LRU, bounded); prefer tile compression
    (``fpack``) for big images.

Raw integers are scaled by BSCALE/BZERO here, not by astropy, so that BLANK is honoured
for every value including ``BLANK = 0`` (which astropy 8 does not turn into NaN).  The
result is native-endian float32 with NaN for BLANK, NaN and ±inf pixels.

:func:`reflect_indices` maps window indices outside the image back into it
(:data:`REFLECT_MODE`), for windows that extend beyond the image's edges.
"""

from __future__ import annotations

import atexit
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from astropy.io import fits

from cnnpipe.errors import InputError
from cnnpipe.pipeline.fitscheck import check_axes

__all__ = [
    "REFLECT_MODE",
    "HDUInfo",
    "HDURef",
    "check_pixels",
    "clear_cache",
    "hdu_label",
    "read_band",
    "read_into",
    "reflect_indices",
    "scan_file",
]

REFLECT_MODE = "symmetric"
"""Edge handling of :meth:`cnnpipe.pipeline.sources.Source.read_window`: numpy
``np.pad(..., mode='symmetric')``."""

_BITPIX_DTYPE = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
# gzip, bzip2, xz, zip, Unix compress: astropy opens them as streams without offsets.
_STREAM_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"PK\x03\x04", b"\x1f\x9d")
_CACHE_ENTRIES = 32
_CACHE_STREAM_BYTES = 4 << 30
"""Decompressed whole-file-compressed HDUs kept per process (the newest is always kept)."""


def hdu_label(index: int, extname: str | None, extver: int | None) -> str:
    """``SCI,2`` / ``SCI`` / ``3``: the bracket part of an HDU's name in messages."""
    if extname:
        return extname if extver is None else f"{extname},{extver}"
    return str(index)


@dataclass(frozen=True)
class HDURef:
    """Where one image plane lives: file and HDU.  Small and picklable.

    Parameters
    ----------
    path : str
        Absolute path of the FITS file.
    hdu : int
        HDU index in the file (0 = primary).
    extname, extver : str or None, int or None
        EXTNAME and EXTVER of the HDU when its header has them.
    """

    path: str
    hdu: int
    extname: str | None
    extver: int | None

    @property
    def label(self) -> str:
        """``file.fits[SCI,2]`` / ``file.fits[0]``: how error messages name this HDU."""
        return f"{os.path.basename(self.path)}[{hdu_label(self.hdu, self.extname, self.extver)}]"


# --------------------------------------------------------------------------- scanning


@dataclass(frozen=True)
class HDUInfo:
    """What validation needs to know about one HDU of a file (header already parsed)."""

    index: int
    kind: str  # "image" | "table" | "groups" | "other"
    type_name: str
    extname: str | None
    extver: int | None
    shape: tuple[int, ...]  # numpy order (NAXISn, ..., NAXIS1); () without data
    header: fits.Header = field(repr=False, compare=False)
    #: byte offsets in the (decompressed) file: header start, data start, data length
    #: (padding included); what :mod:`cnnpipe.pipeline.fitscheck` checksums
    span: tuple[int, int, int] = field(default=(0, 0, 0), compare=False)

    @property
    def label(self) -> str:
        """Bracket part of the HDU's name (``SCI,2`` or the index)."""
        return hdu_label(self.index, self.extname, self.extver)

    @property
    def shape2d(self) -> tuple[int, int]:
        """(ny, nx) of a 2-D image."""
        return int(self.shape[-2]), int(self.shape[-1])


def _hdu_info(
    index: int, hdu: fits.hdu.base.ExtensionHDU | fits.PrimaryHDU, where: dict[str, Any] | None
) -> HDUInfo:
    if isinstance(hdu, fits.GroupsHDU):
        kind = "groups"
    elif isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
        kind = "image"
    elif isinstance(hdu, fits.BinTableHDU | fits.TableHDU):
        kind = "table"
    else:
        kind = "other"
    header = hdu.header
    extname = header.get("EXTNAME")
    extver = header.get("EXTVER")
    shape = tuple(int(n) for n in hdu.shape) if kind == "image" else ()
    return HDUInfo(
        index=index,
        kind=kind,
        type_name=type(hdu).__name__,
        extname=str(extname).strip().upper() if extname else None,
        extver=int(extver) if isinstance(extver, int | np.integer) else None,
        shape=shape,
        header=header.copy(),
        span=(int(where["hdrLoc"]), int(where["datLoc"]), int(where["datSpan"]))
        if where else (0, 0, 0),
    )


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def scan_file(path: str, given: str) -> list[HDUInfo]:
    """Parse every header of a FITS file; InputError when it is not a readable FITS file.

    Parameters
    ----------
    path : str
        Absolute path of the file.
    given : str
        The path as the user wrote it, for messages.

    Returns
    -------
    list of HDUInfo
        One per HDU, in file order (at least one).

    Raises
    ------
    InputError
        Missing file, directory, unreadable, truncated or corrupt FITS, or no HDU.

    Warns
    -----
    UserWarning
        astropy's verification and checksum notes, re-issued prefixed with ``given``.
    """
    if not os.path.exists(path):
        msg = f"{given}: no such file (looked for {path}); check the path."
        raise InputError(msg)
    if not os.path.isfile(path):
        msg = f"{given}: expected a FITS file. Got a directory or special file."
        raise InputError(msg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # HDU by HDU, each checked before astropy reads the next from where the
            # previous one's data end: a negative NAXISn can point back at a header
            # already read, and astropy then reads the same HDUs forever (astropy 8).
            with fits.open(
                path, memmap=True, do_not_scale_image_data=True, lazy_load_hdus=True
            ) as hdul:
                infos: list[HDUInfo] = []
                for i, hdu in enumerate(hdul):
                    check_axes(given, i, hdu.header)
                    infos.append(_hdu_info(i, hdu, hdul.fileinfo(i)))
        except InputError:
            raise
        except Exception as exc:
            msg = (
                f"{given}: not a readable FITS file ({_short(exc)}); check that it is FITS "
                "and neither truncated nor corrupt."
            )
            raise InputError(msg) from exc
    for w in caught:
        text = " ".join(str(w.message).split())
        if "truncated" in text.lower():
            msg = f"{given}: the file is truncated ({text}); copy or download it again."
            raise InputError(msg)
        if issubclass(w.category, UserWarning):  # astropy's verify/checksum notes
            warnings.warn(f"{given}: {text}", w.category, stacklevel=5)
    if not infos:
        msg = f"{given}: expected a FITS file with at least one HDU. Got none."
        raise InputError(msg)
    return infos


def check_pixels(image_path: str, given: str, info: HDUInfo) -> None:
    """Read the last row of an HDU: astropy only warns about truncation at open.

    Parameters
    ----------
    image_path : str
        Absolute path of the file.
    given : str
        The path as the user wrote it, for messages.
    info : HDUInfo
        A 2-D image HDU of the file, from :func:`scan_file`.

    Raises
    ------
    InputError
        The pixels cannot be read (truncated or corrupt file).
    """
    ny, nx = info.shape2d
    try:
        read_into(image_path, info.index, (ny - 1, ny, 0, nx), np.empty((1, nx), np.float32))
    except InputError:
        raise
    except Exception as exc:
        msg = (
            f"{given}[{info.label}]: cannot read the pixels ({_short(exc)}); the file is "
            "truncated or corrupt, copy or download it again."
        )
        raise InputError(msg) from exc


# --------------------------------------------------------------------------- reading


def reflect_indices(index: npt.NDArray[np.integer], n: int) -> npt.NDArray[np.intp]:
    """Map indices on an infinite axis to ``0..n-1`` by mirroring with edge repeat.

    The map has period ``2n``: ``i mod 2n`` in ``0..n-1`` is itself and in ``n..2n-1``
    is ``2n-1-(i mod 2n)``; it equals numpy's ``np.pad(mode='symmetric')`` for any pad
    width.
    """
    m = np.mod(np.asarray(index, dtype=np.intp), 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)


def read_band(ref: HDURef, window: tuple[int, int, int, int], out: npt.NDArray[np.float32]) -> None:
    """:func:`read_into` for one band of a Source, naming the HDU when reading fails.

    Parameters
    ----------
    ref : HDURef
        The band's file and HDU.
    window : (y0, y1, x0, x1)
        Half-open window inside the image.
    out : (y1 - y0, x1 - x0) float32
        Destination.

    Raises
    ------
    InputError
        The pixels cannot be read: the file is corrupt where validation did not look
        (a tile-compressed HDU's middle tiles), or changed after validation.
    """
    try:
        read_into(ref.path, ref.hdu, window, out)
    except Exception as exc:  # e.g. astropy's CfitsioException from a corrupt tile
        y0, y1, x0, x1 = window
        msg = (
            f"{ref.label}: cannot read pixels [{y0}:{y1}, {x0}:{x1}] ({_short(exc)}); the "
            "file is corrupt there, or changed after the run started."
        )
        raise InputError(msg) from exc


@dataclass(frozen=True)
class _Scaling:
    bscale: float
    bzero: float
    blank: int | None  # integer BITPIX only


class _RawFile:
    """The uncompressed data array of one HDU, read by position (thread-safe ``preadv``)."""

    def __init__(self, path: str, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.offset = offset
        self.dtype = dtype
        self.ny, self.nx = int(shape[0]), int(shape[1])

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Raw pixels (file dtype) of the in-image window ``[y0:y1, x0:x1]``."""
        item = self.dtype.itemsize
        out = np.empty((y1 - y0, x1 - x0), dtype=self.dtype)
        if x0 == 0 and x1 == self.nx:
            self._pread(out.reshape(-1), self.offset + y0 * self.nx * item)
        else:
            for i, y in enumerate(range(y0, y1)):
                self._pread(out[i], self.offset + (y * self.nx + x0) * item)
        return out

    def _pread(self, dest: np.ndarray, pos: int) -> None:
        view = memoryview(dest.data).cast("B")
        done = 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], pos + done)
            if n <= 0:
                msg = f"unexpected end of file at byte {pos + done}"
                raise OSError(msg)
            done += n

    def close(self) -> None:
        """Close the file descriptor."""
        os.close(self.fd)


class _Handle:
    """An open HDU in this process.

    A positional reader, an in-memory raw array (a decompressed stream), or an open
    HDUList (tile compression).
    """

    def __init__(
        self,
        raw: np.ndarray | _RawFile | None,
        hdul: fits.HDUList | None,
        index: int,
        scaling: _Scaling,
    ) -> None:
        self.raw = raw
        self.hdul = hdul
        self.index = index
        self.scaling = scaling
        self.in_memory = isinstance(raw, np.ndarray)
        self.nbytes = int(raw.nbytes) if isinstance(raw, np.ndarray) else 0
        self.lock = threading.Lock()
        self.closed = False

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray | None:
        """Raw pixels of the window (file dtype), or None when the handle was closed."""
        if isinstance(self.raw, _RawFile):
            with self.lock:  # the descriptor must not be closed under a reader
                if self.closed:
                    return None
                return self.raw.read(y0, y1, x0, x1)
        if self.raw is not None:
            return self.raw[y0:y1, x0:x1]
        # Decompression state of an HDUList is not thread-safe.
        with self.lock:
            if self.closed or self.hdul is None:
                return None
            return np.asarray(self.hdul[self.index].section[y0:y1, x0:x1])

    def close(self, *, lock: bool = True) -> None:
        """Close the file; readers that still hold this handle reopen through the cache."""
        if lock:
            with self.lock:
                self._close()
        else:
            self._close()

    def _close(self) -> None:
        if not self.closed and isinstance(self.raw, _RawFile):
            self.raw.close()
        self.closed = True
        if self.hdul is not None:
            self.hdul.close()


def _is_stream_compressed(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(6)
    return head.startswith(_STREAM_MAGIC)


def _open_handle(path: str, index: int, size: int) -> _Handle:
    stream = _is_stream_compressed(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported once, by open_sources
        hdul = fits.open(path, memmap=not stream, do_not_scale_image_data=True)
        try:
            hdu = hdul[index]
            header = hdu.header
            bitpix = int(header["BITPIX"])
            blank = header.get("BLANK")
            scaling = _Scaling(
                bscale=float(header.get("BSCALE", 1.0)),
                bzero=float(header.get("BZERO", 0.0)),
                blank=int(blank) if bitpix > 0 and isinstance(blank, int | np.integer) else None,
            )
            if isinstance(hdu, fits.CompImageHDU):
                return _Handle(None, hdul, index, scaling)  # keeps the file open
            if stream:
                # No offsets in a compressed stream: decompress the HDU once.
                raw = np.asarray(hdu.data)
                return _Handle(raw, None, index, scaling)
            shape = tuple(int(n) for n in hdu.shape)
            offset = int(hdul.fileinfo(index)["datLoc"])
        except BaseException:
            hdul.close()
            raise
    hdul.close()
    dtype = np.dtype(_BITPIX_DTYPE[bitpix])
    need = offset + dtype.itemsize * int(np.prod(shape))
    if size < need:
        msg = f"the data need {need} bytes but the file has {size}"
        raise OSError(msg)
    return _Handle(_RawFile(path, offset, dtype, shape), None, index, scaling)


class _HandleCache:
    """Per-process LRU of open HDUs, keyed by file identity (path, size, mtime).

    Emptied in a forked child (handles are never shared between processes) and never
    pickled: Sources hold only paths.
    """

    def __init__(self, max_entries: int, max_stream_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_stream_bytes = max_stream_bytes
        self._lock = threading.Lock()
        self._handles: OrderedDict[tuple[str, int, int, int], _Handle] = OrderedDict()
        self._opening: dict[tuple[str, int, int, int], threading.Lock] = {}

    def get(self, path: str, index: int) -> _Handle:
        st = os.stat(path)
        key = (path, index, st.st_size, st.st_mtime_ns)
        with self._lock:
            handle = self._handles.get(key)
            if handle is not None:
                self._handles.move_to_end(key)
                return handle
            opening = self._opening.setdefault(key, threading.Lock())
        with opening:  # one thread decompresses a .gz; the others wait for it
            with self._lock:
                handle = self._handles.get(key)
            if handle is None:
                handle = _open_handle(path, index, st.st_size)
                with self._lock:
                    self._handles[key] = handle
                    self._evict()
            with self._lock:
                self._opening.pop(key, None)
        return handle

    def _evict(self) -> None:
        # Caller holds self._lock.  Keep the newest entry whatever its size.
        def over() -> bool:
            held = sum(h.nbytes for h in self._handles.values() if h.in_memory)
            return len(self._handles) > self.max_entries or held > self.max_stream_bytes

        while len(self._handles) > 1 and over():
            _, old = self._handles.popitem(last=False)
            old.close()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's handles, with fresh (unheld) locks."""
        self._lock = threading.Lock()
        for stale in self._handles.values():
            stale.close(lock=False)
        self._handles.clear()
        self._opening.clear()

    def clear(self) -> None:
        """Close and forget every handle of this process."""
        with self._lock:
            for handle in self._handles.values():
                handle.close()
            self._handles.clear()


_CACHE = _HandleCache(_CACHE_ENTRIES, _CACHE_STREAM_BYTES)
atexit.register(_CACHE.clear)
os.register_at_fork(after_in_child=_CACHE.after_fork)


def clear_cache() -> None:
    """Close this process's cached file handles (e.g. before files are rewritten)."""
    _CACHE.clear()


def read_into(
    path: str, hdu: int, window: tuple[int, int, int, int], out: npt.NDArray[np.float32]
) -> None:
    """Read an in-image window of one HDU into ``out`` as native float32 with NaN masks.

    Parameters
    ----------
    path : str
        Absolute path of the FITS file.
    hdu : int
        HDU index.
    window : (y0, y1, x0, x1)
        Half-open window inside the image.
    out : (y1 - y0, x1 - x0) float32
        Destination, written in one pass from the raw (big-endian) pixels.
    """
    y0, y1, x0, x1 = window
    raw = None
    for _ in range(3):  # a handle evicted by another thread mid-read is reopened
        handle = _CACHE.get(path, hdu)
        raw = handle.read(y0, y1, x0, x1)
        if raw is not None:
            break
    if raw is None or raw.shape != out.shape:
        got = None if raw is None else raw.shape
        msg = f"Expected a {out.shape} window of {path}[{hdu}]. Got {got}."
        raise OSError(msg)
    _to_float32(raw, handle.scaling, out)


def _to_float32(raw: np.ndarray, scaling: _Scaling, out: npt.NDArray[np.float32]) -> None:
    """Scale raw FITS pixels into ``out`` the way astropy does, with BLANK/NaN/inf -> NaN.

    Physical value = BZERO + BSCALE * raw (FITS standard 4.0, sec. 5.3), computed in
    float32 for BITPIX 8/16/-32 and float64 for 32/64/-64 (astropy's choice), so results
    equal ``fits.getdata`` bit for bit.
    """
    bscale, bzero = scaling.bscale, scaling.bzero
    scaled = bscale != 1.0 or bzero != 0.0
    blank = None
    if raw.dtype.kind in "iu" and scaling.blank is not None:
        blank = raw == scaling.blank
    with np.errstate(over="ignore", invalid="ignore"):
        if not scaled:
            np.copyto(out, raw, casting="unsafe")
        elif raw.dtype.itemsize <= 2 or raw.dtype == np.float32:
            np.copyto(out, raw, casting="unsafe")
            if bscale != 1.0:
                np.multiply(out, bscale, out=out)
            if bzero != 0.0:
                np.add(out, bzero, out=out)
        else:
            wide = raw.astype(np.float64)
            if bscale != 1.0:
                wide *= bscale
            if bzero != 0.0:
                wide += bzero
            np.copyto(out, wide, casting="unsafe")
    if blank is not None:
        out[blank] = np.nan
    if raw.dtype.kind == "f" or scaled:
        bad = ~np.isfinite(out)
        if bad.any():
            out[bad] = np.nan
