"""Stream FITS image HDUs to disk in row strips, with memory bounded by one strip.

A FITS file of image HDUs has a layout fixed by the headers and the image shapes alone:
each header is a whole number of 2880-byte blocks, and each data unit is
``rows x cols x itemsize`` big-endian bytes padded with zeros to 2880.
:class:`StreamingFitsWriter` computes every offset up front, writes all headers, sizes the
file, and then writes each strip at its own offset — strips may come in any order and
from any HDU, so several band images (a multi-extension file) are written in one pass
over the sky.  The file appears under its final name only when every row of every HDU
has been written (it is built as ``NAME.partial`` and renamed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt
from astropy.io import fits

from cnnpipe.errors import ConfigError, InputError

__all__ = ["BLOCK", "ImageSpec", "StreamingFitsWriter", "image_header"]

#: FITS logical record length (bytes).
BLOCK = 2880

_BITPIX = {
    np.dtype(np.uint8): 8,
    np.dtype(np.int16): 16,
    np.dtype(np.int32): 32,
    np.dtype(np.int64): 64,
    np.dtype(np.float32): -32,
    np.dtype(np.float64): -64,
}
_STRUCTURAL = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "END"}


def _padded(nbytes: int) -> int:
    return -(-nbytes // BLOCK) * BLOCK


@dataclass(frozen=True, kw_only=True)
class ImageSpec:
    """One image HDU to stream.

    Attributes
    ----------
    shape : (ny, nx) or ()
        Image shape in numpy order; ``()`` for an empty (data-less) HDU such as the
        primary HDU of a multi-extension file.
    dtype : numpy dtype
        Pixel type: uint8, int16, int32, int64, float32 or float64 (written big-endian).
    cards : astropy.io.fits.Header
        Non-structural cards (WCS, EXTNAME, BUNIT, ...); structural keywords in it
        (SIMPLE, BITPIX, NAXISn, ...) are ignored.
    """

    shape: tuple[int, ...]
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    cards: fits.Header = field(default_factory=fits.Header)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.dtype not in _BITPIX:
            msg = (
                f"Expected an image dtype among {sorted(str(d) for d in _BITPIX)}. "
                f"Got {self.dtype}."
            )
            raise ConfigError(msg)
        if len(self.shape) not in (0, 2) or any(int(n) <= 0 for n in self.shape):
            msg = f"Expected an image shape (ny, nx) of positive ints or (). Got {self.shape}."
            raise ConfigError(msg)


def image_header(spec: ImageSpec, *, primary: bool, extend: bool = False) -> fits.Header:
    """The full header of an image HDU: structural keywords in FITS order, then the cards.

    Parameters
    ----------
    spec : ImageSpec
        Shape, type and extra cards.
    primary : bool
        Primary HDU (``SIMPLE``) or image extension (``XTENSION = 'IMAGE'``).
    extend : bool
        Write ``EXTEND = T`` (primary HDU of a file with extensions).

    Returns
    -------
    astropy.io.fits.Header
    """
    hdr = fits.Header()
    if primary:
        hdr["SIMPLE"] = (True, "conforms to FITS standard")
    else:
        hdr["XTENSION"] = ("IMAGE", "image extension")
    hdr["BITPIX"] = (_BITPIX[spec.dtype], "array data type")
    hdr["NAXIS"] = (len(spec.shape), "number of array dimensions")
    for i, n in enumerate(reversed(spec.shape), start=1):
        hdr[f"NAXIS{i}"] = int(n)
    if primary and extend:
        hdr["EXTEND"] = True
    if not primary:
        hdr["PCOUNT"] = 0
        hdr["GCOUNT"] = 1
    for card in spec.cards.cards:
        key = card.keyword
        if key in _STRUCTURAL or (key.startswith("NAXIS") and key[5:].isdigit()):
            continue
        hdr.append(card, end=True)
    return hdr


class StreamingFitsWriter:
    """Write a FITS file of image HDUs strip by strip, never holding a whole image.

    Parameters
    ----------
    path : str or Path
        Output file; written as ``path + '.partial'`` and renamed on :meth:`close`.
    specs : sequence of ImageSpec
        The HDUs in file order; the first becomes the primary HDU.
    overwrite : bool
        Replace an existing file at ``path``.

    Examples
    --------
    >>> with StreamingFitsWriter(path, [ImageSpec(shape=(ny, nx))]) as out:  # doctest: +SKIP
    ...     for y0 in range(0, ny, 256):
    ...         out.write_rows(0, y0, render(y0, min(256, ny - y0)))
    """

    def __init__(
        self, path: str | os.PathLike[str], specs: list[ImageSpec], *, overwrite: bool = False
    ) -> None:
        if not specs:
            msg = "Expected at least one image HDU to write. Got none."
            raise ConfigError(msg)
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            msg = (
                f"Expected no existing file at {str(self.path)!r}. Got one; "
                "pass overwrite=True (--overwrite) to replace it."
            )
            raise ConfigError(msg)
        self.specs = list(specs)
        self.headers: list[fits.Header] = []
        self._data_offsets: list[int] = []
        self._written = [np.zeros(s.shape[0] if s.shape else 0, dtype=bool) for s in self.specs]
        offset = 0
        blobs: list[tuple[int, bytes]] = []
        for i, spec in enumerate(self.specs):
            hdr = image_header(spec, primary=i == 0, extend=len(self.specs) > 1)
            blob = hdr.tostring(padding=True).encode("ascii")
            blobs.append((offset, blob))
            self.headers.append(hdr)
            offset += len(blob)
            self._data_offsets.append(offset)
            nbytes = int(np.prod(spec.shape)) * spec.dtype.itemsize if spec.shape else 0
            offset += _padded(nbytes)
        self.size = offset
        self._partial = self.path.with_name(self.path.name + ".partial")
        try:
            self._fh = open(self._partial, "wb")  # noqa: SIM115 - closed in close()/abort()
        except OSError as exc:
            msg = f"Expected a writable output path. Got {str(self.path)!r}: {exc.strerror}."
            raise ConfigError(msg) from exc
        for off, blob in blobs:
            self._fh.seek(off)
            self._fh.write(blob)
        # Zero-filled data and padding; sparse where the file system allows.
        self._fh.truncate(self.size)

    def write_rows(self, hdu: int, row0: int, rows: npt.ArrayLike) -> None:
        """Write consecutive image rows of one HDU.

        Parameters
        ----------
        hdu : int
            Index of the HDU in ``specs``.
        row0 : int
            First row (0-based numpy row, i.e. FITS ``y - 1``).
        rows : (n, nx) array
            Pixel values; converted to the HDU's dtype, big-endian.
        """
        spec = self.specs[hdu]
        arr = np.asarray(rows)
        if not spec.shape or arr.ndim != 2 or arr.shape[1] != spec.shape[1]:
            msg = (
                f"Expected rows of shape (n, {spec.shape[1] if spec.shape else 0}) for HDU "
                f"{hdu}. Got shape {arr.shape}."
            )
            raise InputError(msg)
        if row0 < 0 or row0 + arr.shape[0] > spec.shape[0]:
            msg = (
                f"Expected rows within 0..{spec.shape[0]} of HDU {hdu}. "
                f"Got rows {row0}..{row0 + arr.shape[0]}."
            )
            raise InputError(msg)
        data = np.ascontiguousarray(arr, dtype=spec.dtype.newbyteorder(">"))
        self._fh.seek(self._data_offsets[hdu] + row0 * spec.shape[1] * spec.dtype.itemsize)
        self._fh.write(data.data.cast("B"))  # the array's own buffer: no extra copy
        self._written[hdu][row0 : row0 + arr.shape[0]] = True

    def close(self) -> Path:
        """Check that every row was written, then move the file to its final name.

        Returns
        -------
        Path
            The written file.
        """
        missing = [i for i, w in enumerate(self._written) if not w.all()]
        if missing:
            self.abort()
            msg = f"Expected every row of every HDU to be written. Got HDUs {missing} incomplete."
            raise InputError(msg)
        self._fh.close()
        os.replace(self._partial, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file."""
        self._fh.close()
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> StreamingFitsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
