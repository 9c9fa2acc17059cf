"""Checks of a FITS file's structure and integrity, before astropy parses it and before work.

:func:`prescan` walks the headers of a file the way the FITS standard lays them out
(FITS 4.0, sec. 3.3 and 4.4: header blocks up to ``END``, then
``|BITPIX|/8 * GCOUNT * (PCOUNT + NAXIS1 * ... * NAXISn)`` data bytes padded to 2880) and
refuses axis counts astropy 8 cannot survive: ``NAXIS = 1180591620717411303424`` makes it
build a list of that many axes (minutes, then MemoryError), and a negative ``NAXISn`` can
point the next HDU back at a header already read, which astropy then reads forever.
For a gzip, bzip2 or xz stream it also reads to the end, so that the stream's own check
(CRC-32 / CRC-64) is compared: astropy reads only as far as the HDUs need.

:func:`check_integrity` verifies what the selected HDUs say about themselves: ``DATASUM``
is the 32-bit ones' complement sum of the data unit (padding included), and ``CHECKSUM``
makes the ones' complement sum of the whole HDU negative zero, ``0xFFFFFFFF`` (FITS 4.0,
Appendix J; Seaman, Pence & Rots 2002).  astropy only warns about a bad checksum, and only
when asked (DESIGN §9); a corrupt file would otherwise run to a complete store of wrong
pixels.  Cards without a number (``DATASUM = ''``) are not checked.

Both read raw bytes in blocks (bounded memory), never through a memory map.  zip and
Unix-compress files are not checked.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import os
import re
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnpipe.errors import InputError

if TYPE_CHECKING:  # fitsread imports this module
    from astropy.io.fits import Header

    from cnnpipe.pipeline.fitsread import HDUInfo

__all__ = ["check_axes", "check_integrity", "ones_complement_sum", "prescan"]

_BLOCK = 2880 * 2048  # 5.6 MiB: whole FITS blocks, so every HDU boundary is word-aligned
_NEG_ZERO = 0xFFFFFFFF
#: magic bytes -> the module whose ``open`` reads the stream (and checks its CRC at the end)
_STREAMS: dict[bytes, Any] = {b"\x1f\x8b": gzip, b"BZh": bz2, b"\xfd7zXZ\x00": lzma}
_CARD = re.compile(r"^(CHECKSUM|DATASUM )= +'([^']*)'")
_BITPIXES = (8, 16, 32, 64, -32, -64)
_STREAM_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
_MAX_HEADER_BLOCKS = 1000  # 36000 cards: beyond that it is not a header astropy could read


def ones_complement_sum(words_sum: int) -> int:
    """Fold a plain sum of 32-bit words into their 32-bit ones' complement sum.

    Ones' complement addition is addition with end-around carry, so the carries of a
    plain (arbitrary-precision) sum are added back until the result fits 32 bits.
    """
    while words_sum >> 32:
        words_sum = (words_sum & _NEG_ZERO) + (words_sum >> 32)
    return words_sum


def _word_sum(buf: bytes | memoryview) -> int:
    # < 2**32 words per block: the uint64 accumulator cannot overflow
    return int(np.frombuffer(buf, dtype=">u4").sum(dtype=np.uint64))


def _stream_module(path: str) -> Any:
    with open(path, "rb") as fh:
        head = fh.read(6)
    return next((m for magic, m in _STREAMS.items() if head.startswith(magic)), None)


def _claims(raw_header: bytes) -> dict[str, str]:
    """The CHECKSUM / DATASUM values of a raw header (80-byte cards up to END)."""
    out: dict[str, str] = {}
    for i in range(0, len(raw_header) - 79, 80):
        card = raw_header[i:i + 80].decode("ascii", "replace")
        if card.startswith("END "):
            break
        match = _CARD.match(card)
        if match:
            out[match.group(1).strip()] = match.group(2).strip()
    return out


class _Sums:
    """Running plain sums of one HDU's header and data bytes."""

    def __init__(self, info: HDUInfo) -> None:
        self.info = info
        self.header = bytearray()
        self.data = 0

    def feed(self, pos: int, block: bytes) -> None:
        """Add the part of ``block`` (which starts at file offset ``pos``) in this HDU."""
        hdr, dat, span = self.info.span
        end = pos + len(block)
        lo, hi = max(pos, hdr), min(end, dat)
        if lo < hi:
            self.header += block[lo - pos:hi - pos]
        lo, hi = max(pos, dat), min(end, dat + span)
        if lo < hi:
            self.data += _word_sum(memoryview(block)[lo - pos:hi - pos])


def _verdict(given: str, sums: _Sums) -> None:
    info = sums.info
    label = f"{given}[{info.label}]"
    claims = _claims(bytes(sums.header))
    datasum = ones_complement_sum(sums.data)
    fix = (
        "the file is corrupt; copy or download it again (if it was edited on purpose by a "
        "tool that left the cards stale, remove them: astropy.io.fits.delval)"
    )
    want = claims.get("DATASUM", "")
    if want.isdigit() and int(want) != datasum:
        msg = (
            f"{label}: expected the data to match DATASUM {want}. Got {datasum}; {fix}."
        )
        raise InputError(msg)
    if len(claims.get("CHECKSUM", "")) == 16:
        total = ones_complement_sum(_word_sum(bytes(sums.header)) + datasum)
        if total != _NEG_ZERO:
            msg = (
                f"{label}: expected the HDU to match its CHECKSUM {claims['CHECKSUM']}. Got "
                f"a ones' complement sum of {total:#010x} instead of 0xffffffff; {fix}."
            )
            raise InputError(msg)


def check_integrity(path: str, given: str, infos: Sequence[HDUInfo]) -> None:
    """Refuse HDUs whose CHECKSUM / DATASUM say the file is corrupt.

    Parameters
    ----------
    path : str
        Absolute path of the file.
    given : str
        The path as the user wrote it, for messages.
    infos : sequence of HDUInfo
        The HDUs the run reads (from :func:`~cnnpipe.pipeline.fitsread.scan_file`, with
        their ``span``); only their checksums are verified.

    Raises
    ------
    InputError
        A checksum does not match.
    """
    stream = _stream_module(path)
    todo = []
    with open(path, "rb") if stream is None else stream.open(path, "rb") as fh:
        for info in infos:
            hdr, dat, _ = info.span
            if dat <= hdr:
                continue
            fh.seek(hdr)
            if _claims(fh.read(dat - hdr)):
                todo.append(_Sums(info))
    if not todo:
        return
    if stream is None:
        _sum_plain(path, todo)
    else:
        _sum_stream(path, given, stream, todo)
    for sums in todo:
        _verdict(given, sums)


def _sum_plain(path: str, todo: Sequence[_Sums]) -> None:
    with open(path, "rb") as fh:
        for sums in todo:
            hdr, dat, span = sums.info.span
            pos = hdr
            while pos < dat + span:
                fh.seek(pos)
                block = fh.read(min(_BLOCK, dat + span - pos))
                if not block:
                    return  # truncation is check_pixels' finding, with its own message
                sums.feed(pos, block)
                pos += len(block)


def _sum_stream(path: str, given: str, stream: Any, todo: Sequence[_Sums]) -> None:
    pos = 0
    try:
        with stream.open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                for sums in todo:
                    sums.feed(pos, block)
                pos += len(block)
    except _STREAM_ERRORS as exc:
        raise _stream_error(given, exc) from None


def _stream_error(given: str, exc: BaseException) -> InputError:
    text = " ".join(str(exc).split()) or type(exc).__name__
    msg = (
        f"{given}: expected an intact compressed stream. Got {type(exc).__name__}: {text}; "
        "the file is corrupt, copy or download it again."
    )
    return InputError(msg)


def _cards(header: bytes) -> dict[str, str]:
    """Keyword -> value text of the fixed-format value cards of a raw header."""
    out: dict[str, str] = {}
    for i in range(0, len(header) - 79, 80):
        card = header[i:i + 80].decode("ascii", "replace")
        if card[8:10] == "= ":
            out.setdefault(card[:8].rstrip(), card[10:].split("/")[0].strip())
    return out


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _read_header(fh: Any) -> bytes | None:
    """Header blocks up to the one with the END card, or None (no header: let astropy say)."""
    blocks = []
    for _ in range(_MAX_HEADER_BLOCKS):
        block = fh.read(2880)
        if len(block) < 2880:
            return None
        blocks.append(block)
        if any(block[i:i + 8] == b"END     " for i in range(0, 2880, 80)):
            return b"".join(blocks)
    return None


def _data_bytes(given: str, index: int, header: bytes) -> int | None:
    """Size of the HDU's data before padding; None where it cannot be told.

    Raises
    ------
    InputError
        NAXIS outside 0..999, or a negative NAXISn.
    """
    cards = _cards(header)
    naxis = _int(cards.get("NAXIS"))
    if naxis is None:
        return None  # not a header cnnpipe can walk: astropy's message says why
    if not 0 <= naxis <= 999:
        msg = (
            f"{given}[{index}]: expected NAXIS between 0 and 999. Got {cards['NAXIS']}; the "
            "header is corrupt, copy or download the file again."
        )
        raise InputError(msg)
    sizes = [_int(cards.get(f"NAXIS{k}")) for k in range(1, naxis + 1)]
    negative = [(k, n) for k, n in enumerate(sizes, 1) if n is not None and n < 0]
    if negative:
        k, n = negative[0]
        msg = (
            f"{given}[{index}]: expected NAXIS{k} >= 0. Got {n}; the header is corrupt, "
            "copy or download the file again."
        )
        raise InputError(msg)
    bitpix = _int(cards.get("BITPIX"))
    axes = [n for n in sizes if n is not None]
    if bitpix is None or bitpix not in _BITPIXES or len(axes) < naxis:
        return None
    if cards.get("GROUPS") == "T" and axes and axes[0] == 0:
        axes = axes[1:]  # random groups: NAXIS1 = 0 is not an axis of the data
    count = math.prod(axes) if axes else 0
    return abs(bitpix) // 8 * (_int(cards.get("GCOUNT")) or 1) * (
        (_int(cards.get("PCOUNT")) or 0) + count)


def prescan(path: str, given: str) -> None:
    """Walk a file's headers before astropy does; check a compressed stream to its end.

    Stops quietly where the layout cannot be followed (not FITS, truncated, a value it
    cannot read): :func:`~cnnpipe.pipeline.fitsread.scan_file` then reports it in
    astropy's words.

    Parameters
    ----------
    path : str
        Absolute path of the file.
    given : str
        The path as the user wrote it, for messages.

    Raises
    ------
    InputError
        An axis count astropy cannot read safely, or a corrupt compressed stream.
    """
    if not os.path.isfile(path):
        return
    stream = _stream_module(path)
    pos = index = 0
    # a stream's decompressed size is unknown: only seeks a file offset can hold
    end = os.path.getsize(path) if stream is None else 2**62
    try:
        with open(path, "rb") if stream is None else stream.open(path, "rb") as fh:
            while (header := _read_header(fh)) is not None:
                size = _data_bytes(given, index, header)
                pos += len(header) + -(-size // 2880) * 2880 if size is not None else end
                if pos >= end:
                    break  # the last HDU, or data past the end: scan_file says "truncated"
                index += 1
                fh.seek(pos)
            if stream is not None:
                while fh.read(_BLOCK):  # to the end: the stream's CRC is checked there
                    pass
    except _STREAM_ERRORS as exc:
        if stream is not None:
            raise _stream_error(given, exc) from None


def _is_count(value: object, top: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= 0
            and (top is None or value <= top))


def check_axes(given: str, index: int, header: Header) -> None:
    """BITPIX one of the six, NAXIS in 0..999, NAXISn non-negative (FITS 4.0, sec. 4.4.1).

    The same rules as :func:`prescan`, on a header astropy has parsed (every HDU, also of
    the zip and Unix-compress files the walk does not read).

    Raises
    ------
    InputError
        Naming the file and HDU index.
    """
    bitpix = header.get("BITPIX")
    if isinstance(bitpix, bool) or bitpix not in _BITPIXES:
        msg = (
            f"{given}[{index}]: expected BITPIX 8, 16, 32, 64, -32 or -64. Got {bitpix!r}; "
            "the header is corrupt, copy or download the file again."
        )
        raise InputError(msg)
    naxis = header.get("NAXIS")
    sizes = {f"NAXIS{k}": header.get(f"NAXIS{k}") for k in range(1, naxis + 1)} if (
        _is_count(naxis, 999)) else {}
    if _is_count(naxis, 999) and all(_is_count(v) for v in sizes.values()):
        return
    got = ", ".join(f"{k} = {v!r}" for k, v in {"NAXIS": naxis, **sizes}.items())
    msg = (
        f"{given}[{index}]: expected NAXIS and NAXISn to be non-negative integers. Got "
        f"{got}; the header is corrupt, copy or download the file again."
    )
    raise InputError(msg)
