"""Seeded writers of small FITS files in every variant cnnpipe must read.

Each writer takes the output path first and returns ``(path, expected)`` where
``expected`` is the ``(ny, nx)`` native float32 image a correct reader returns: physical
values (BSCALE/BZERO applied) with NaN for BLANK, NaN and ±inf pixels.  The same seed
gives the same file.  Used by the tests; small enough to write in milliseconds.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from astropy.io import fits
from astropy.wcs import WCS, Sip

__all__ = [
    "COMPRESSIONS",
    "sky_image",
    "tan_header",
    "write_bands",
    "write_compressed",
    "write_cube",
    "write_empty",
    "write_float",
    "write_gzip",
    "write_mef",
    "write_not_fits",
    "write_scaled_int",
    "write_table",
    "write_truncated",
]

COMPRESSIONS = ("RICE_1", "GZIP_1", "GZIP_2", "HCOMPRESS_1", "PLIO_1")
"""Tile compressions of :class:`astropy.io.fits.CompImageHDU`."""

Image = npt.NDArray[np.float32]


def sky_image(shape: tuple[int, int], *, seed: int = 0) -> Image:
    """A small sky: flat background, a few Gaussian sources and Gaussian noise.

    Returns
    -------
    (ny, nx) float32, counts (background ~100, noise sigma 5)
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    img = 100.0 + rng.normal(0.0, 5.0, shape)
    for _ in range(max(1, ny * nx // 800)):
        cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
        sigma, flux = rng.uniform(0.8, 3.0), rng.uniform(50, 2000)
        img += (
            flux
            / (2 * np.pi * sigma**2)
            * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
        )
    return img.astype(np.float32)


def tan_header(
    shape: tuple[int, int],
    *,
    ra: float = 150.1,
    dec: float = 2.2,
    scale_arcsec: float = 0.25,
    rotation_deg: float = 12.0,
    sip: bool = False,
    crpix_shift: tuple[float, float] = (0.0, 0.0),
) -> fits.Header:
    """A gnomonic (TAN) WCS header centred on the image, optionally with SIP distortion.

    ``crpix_shift`` moves the reference pixel by ``(dx, dy)`` pixels (to make grids that
    disagree).  SIP terms of order 2 and 3 give ~0.5 px of distortion at the corners.
    """
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.crpix = [(nx + 1) / 2 + crpix_shift[0], (ny + 1) / 2 + crpix_shift[1]]
    w.wcs.crval = [ra, dec]
    s = scale_arcsec / 3600.0
    c, sn = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    w.wcs.cd = np.array([[-s * c, s * sn], [s * sn, s * c]])
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    if sip:
        w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        # Coefficients scaled to the image: about 0.5 px of distortion at the corners.
        r = max(nx, ny) / 2.0
        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        a[2, 0], a[1, 1], a[0, 2], a[3, 0] = 0.3 / r, -0.2 / r, 0.2 / r, 0.1 / r**2
        b[2, 0], b[1, 1], b[0, 2], b[0, 3] = -0.2 / r, 0.3 / r, 0.1 / r, -0.1 / r**2
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
    header = w.to_header(relax=True)
    header["OBJECT"] = ("cnnpipe test field", "seeded synthetic image")
    return header


def _with_bad_pixels(data: Image, n_bad: int, rng: np.random.Generator) -> Image:
    flat = data.reshape(-1)
    idx = rng.choice(flat.size, size=min(n_bad, flat.size), replace=False)
    for k, i in enumerate(idx):
        flat[i] = (np.nan, np.inf, -np.inf)[k % 3]
    return data


def _expected(data: npt.NDArray[np.floating]) -> Image:
    out = np.asarray(data, dtype=np.float32).copy()
    out[~np.isfinite(out)] = np.nan
    return out


def write_float(
    path: str | Path,
    *,
    shape: tuple[int, int] = (48, 64),
    seed: int = 0,
    wcs: bool = True,
    sip: bool = False,
    n_bad: int = 0,
    dtype: str = ">f4",
    header: fits.Header | None = None,
) -> tuple[Path, Image]:
    """A plain float image in the primary HDU.

    ``dtype`` is the in-memory array handed to astropy (``">f4"`` big-endian, ``"<f4"``,
    ``">f8"``); the file is big-endian either way.  ``n_bad`` pixels become NaN/+inf/-inf.
    """
    rng = np.random.default_rng(seed)
    data = _with_bad_pixels(sky_image(shape, seed=seed), n_bad, rng).astype(dtype)
    hdr = header.copy() if header is not None else (tan_header(shape, sip=sip) if wcs else None)
    fits.PrimaryHDU(data, header=hdr).writeto(path, overwrite=True)
    return Path(path), _expected(data)


def _raw_ints(
    shape: tuple[int, int], bitpix: int, blank: int | None, n_blank: int, seed: int
) -> npt.NDArray[np.integer]:
    rng = np.random.default_rng(seed)
    dtype = {8: np.uint8, 16: np.int16, 32: np.int32}[bitpix]
    lo, hi = (0, 250) if bitpix == 8 else (-3000, 30000)
    raw = rng.integers(lo, hi, size=shape).astype(dtype)
    if blank is not None:
        # Only the chosen pixels are BLANK; the value never occurs in the data (lo..hi).
        raw[raw == blank] = lo if blank != lo else lo + 1
        flat = raw.reshape(-1)
        flat[rng.choice(flat.size, size=n_blank, replace=False)] = blank
    return raw


def _scaled_expected(
    raw: npt.NDArray[np.integer], bscale: float, bzero: float, blank: int | None
) -> Image:
    # astropy's arithmetic: float32 for 8/16-bit integers, float64 for wider ones.
    wide: npt.NDArray[np.floating] = raw.astype(
        np.float32 if raw.dtype.itemsize <= 2 else np.float64
    )
    np.multiply(wide, bscale, out=wide)
    np.add(wide, bzero, out=wide)
    out = wide.astype(np.float32)
    if blank is not None:
        out[raw == blank] = np.nan
    return out


def write_scaled_int(
    path: str | Path,
    *,
    shape: tuple[int, int] = (40, 56),
    seed: int = 0,
    bitpix: int = 16,
    bscale: float = 0.5,
    bzero: float = 100.0,
    blank: int | None = -32768,
    n_blank: int = 9,
) -> tuple[Path, Image]:
    """An integer image with BSCALE/BZERO/BLANK written as raw integers (no rescaling).

    ``blank=0`` makes the raw zeros at ``n_blank`` positions BLANK (astropy 8 leaves them
    as BZERO); other raw zeros are moved to 1.
    """
    raw = _raw_ints(shape, bitpix, blank, n_blank, seed)
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BSCALE"] = bscale
    hdu.header["BZERO"] = bzero
    if blank is not None:
        hdu.header["BLANK"] = blank
    hdu.writeto(path, overwrite=True)
    return Path(path), _scaled_expected(raw, bscale, bzero, blank)


def write_mef(
    path: str | Path,
    *,
    n_sci: int = 2,
    shape: tuple[int, int] = (32, 40),
    seed: int = 0,
    err_dq: bool = False,
    wcs: bool = True,
    extname: str = "SCI",
) -> tuple[Path, list[Image]]:
    """An MEF: empty primary, then ``n_sci`` image extensions ``extname`` (EXTVER 1..n).

    With ``err_dq``, each is followed by ERR (float) and DQ (int16) extensions.
    Returns the expected image of each science extension.
    """
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [fits.PrimaryHDU()]
    expected = []
    for k in range(1, n_sci + 1):
        data = sky_image(shape, seed=seed + k)
        hdr = tan_header(shape, ra=150.0 + 0.01 * k) if wcs else fits.Header()
        hdr["EXTVER"] = k
        hdus.append(fits.ImageHDU(data, header=hdr, name=extname))
        expected.append(_expected(data))
        if err_dq:
            hdus.append(fits.ImageHDU(np.sqrt(data), name="ERR", ver=k))
            hdus.append(fits.ImageHDU(np.zeros(shape, np.int16), name="DQ", ver=k))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return Path(path), expected


def write_compressed(
    path: str | Path,
    *,
    compression: str = "RICE_1",
    shape: tuple[int, int] = (40, 56),
    seed: int = 0,
    tile_shape: tuple[int, int] | None = None,
    integer: bool = True,
    blank: int | None = None,
    n_blank: int = 5,
    wcs: bool = True,
) -> tuple[Path, Image]:
    """A tile-compressed image (``CompImageHDU`` in HDU 1).

    ``integer=True`` writes int16 (PLIO_1: non-negative values) which every algorithm
    stores losslessly (HCOMPRESS_1 with ``hcomp_scale=0``), so ``expected`` is exact;
    with ``blank``, BSCALE=0.5/BZERO=10 and BLANK are set too.  ``integer=False`` writes
    float32 with NaNs, quantized (lossy): ``expected`` is what astropy decodes.
    """
    hdr = tan_header(shape) if wcs else None
    kwargs: dict[str, object] = {"compression_type": compression}
    if tile_shape is not None:
        kwargs["tile_shape"] = tile_shape
    if compression == "HCOMPRESS_1":
        kwargs["hcomp_scale"] = 0
    if integer:
        raw = _raw_ints(shape, 16, blank, n_blank, seed)
        if compression == "PLIO_1":
            raw = np.abs(raw) % 4096
            if blank is not None:
                raw[raw == blank] = blank + 1
                raw.reshape(-1)[:n_blank] = blank
        hdu = fits.CompImageHDU(raw, header=hdr, **kwargs)  # type: ignore[arg-type]
        bscale, bzero = (0.5, 10.0) if blank is not None else (1.0, 0.0)
        if blank is not None:
            hdu.header["BSCALE"] = bscale
            hdu.header["BZERO"] = bzero
            hdu.header["BLANK"] = blank
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
        return Path(path), _scaled_expected(raw, bscale, bzero, blank)
    rng = np.random.default_rng(seed)
    data = _with_bad_pixels(sky_image(shape, seed=seed), n_blank, rng)
    data[~np.isfinite(data)] = np.nan  # quantization stores NaN only
    hdu = fits.CompImageHDU(data, header=hdr, **kwargs)  # type: ignore[arg-type]
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    return Path(path), _expected(fits.getdata(path, 1))


def write_gzip(
    path: str | Path, *, shape: tuple[int, int] = (48, 64), seed: int = 0, n_bad: int = 3
) -> tuple[Path, Image]:
    """A plain float image compressed as a whole with gzip (``.fits.gz``)."""
    buf = Path(str(path) + ".tmp.fits")
    _, expected = write_float(buf, shape=shape, seed=seed, n_bad=n_bad)
    with open(buf, "rb") as src, gzip.open(path, "wb", compresslevel=1) as dst:
        dst.write(src.read())
    buf.unlink()
    return Path(path), expected


def write_bands(
    folder: str | Path,
    bands: Sequence[str] = ("g", "r", "i"),
    *,
    shape: tuple[int, int] = (40, 48),
    seed: int = 0,
    stem: str = "field",
    shifts: dict[str, tuple[float, float]] | None = None,
    shapes: dict[str, tuple[int, int]] | None = None,
) -> dict[str, tuple[Path, Image]]:
    """One float file per band on a shared TAN grid: ``{folder}/{stem}_{band}.fits``.

    ``shifts`` moves a band's CRPIX by (dx, dy) pixels and ``shapes`` changes a band's
    shape, to make grids that disagree.
    """
    out = {}
    for k, band in enumerate(bands):
        bshape = (shapes or {}).get(band, shape)
        hdr = tan_header(bshape, crpix_shift=(shifts or {}).get(band, (0.0, 0.0)))
        hdr["FILTER"] = band
        out[band] = write_float(
            Path(folder) / f"{stem}_{band}.fits", shape=bshape, seed=seed + k, header=hdr
        )
    return out


def write_cube(path: str | Path, *, shape: tuple[int, int, int] = (3, 20, 24)) -> Path:
    """A 3-D image (NAXIS=3) in the primary HDU."""
    fits.PrimaryHDU(np.arange(np.prod(shape), dtype=np.float32).reshape(shape)).writeto(
        path, overwrite=True
    )
    return Path(path)


def write_table(path: str | Path) -> Path:
    """Empty primary HDU plus a binary table (a catalog, not an image)."""
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name="ra", format="D", array=np.array([1.0, 2.0]))], name="CATALOG"
    )
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path, overwrite=True)
    return Path(path)


def write_empty(path: str | Path) -> Path:
    """A header-only FITS file (primary HDU without data)."""
    fits.PrimaryHDU().writeto(path, overwrite=True)
    return Path(path)


def write_truncated(
    path: str | Path, *, shape: tuple[int, int] = (64, 64), keep: float = 0.6, seed: int = 0
) -> Path:
    """A plain float image cut to ``keep`` of its size (header intact, data cut short)."""
    write_float(path, shape=shape, seed=seed, wcs=False)
    size = Path(path).stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(max(2880 + 8, int(size * keep)))
    return Path(path)


def write_not_fits(path: str | Path) -> Path:
    """A text file with a .fits name."""
    Path(path).write_text("this is not a FITS file\n" * 20)
    return Path(path)
