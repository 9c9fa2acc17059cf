"""Real-patch reading from FITS and the agreement measures (torch-free)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from cnnpipe.errors import InputError, ParityError
from cnnpipe.export.validate import band_images, compare, read_fits_patches
from cnnpipe.modelmeta import OutputKind


def _plane(value: float, shape: tuple[int, int] = (20, 24)) -> np.ndarray:
    return np.full(shape, value, np.float32)


def test_band_layouts(tmp_path: Path) -> None:
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.stack([_plane(1), _plane(2)])).writeto(cube)
    mef = tmp_path / "mef.fits"
    fits.HDUList([
        fits.PrimaryHDU(),
        fits.ImageHDU(_plane(20), name="R"),  # out of order: matched by EXTNAME
        fits.ImageHDU(_plane(10), name="G"),
    ]).writeto(mef)
    per_band = []
    for band, v in (("r", 200.0), ("g", 100.0)):
        hdu = fits.PrimaryHDU(_plane(v))
        hdu.header["FILTER"] = band
        per_band.append(tmp_path / f"sim_{band}.fits")
        hdu.writeto(per_band[-1])
    images = band_images([cube, mef, *per_band], ["g", "r"])
    assert [img[:, 0, 0].tolist() for img in images] == [[1, 2], [10, 20], [100, 200]]


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")
def test_band_errors(tmp_path: Path) -> None:
    only_g = tmp_path / "g.fits"
    hdu = fits.PrimaryHDU(_plane(1))
    hdu.header["FILTER"] = "g"
    hdu.writeto(only_g)
    with pytest.raises(InputError, match=r"bands \['r'\] not found"):
        band_images([only_g], ["g", "r"])
    with pytest.raises(InputError, match="band 'g' again"):
        band_images([only_g, only_g], ["g", "r"])
    table = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="E", array=np.zeros(3))])]).writeto(table)
    with pytest.raises(InputError, match="no image HDU"):
        band_images([table], ["g"])
    with pytest.raises(InputError, match="no such FITS file"):
        band_images([tmp_path / "none.fits"], ["g"])
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"SIMPLE  = T" + b" " * 100)
    with pytest.raises(InputError, match=r"bad\.fits"):
        band_images([bad], ["g"])


def test_read_fits_patches_skips_blank(tmp_path: Path) -> None:
    data = np.full((1, 32, 32), np.nan, np.float32)
    data[0, 20:, 20:] = 5.0
    path = tmp_path / "mostly_nan.fits"
    fits.PrimaryHDU(data).writeto(path)
    patches = read_fits_patches([path], bands=["g"], patch=(16, 16), n=6, seed=1)
    assert patches.shape == (6, 1, 16, 16)
    assert all(np.isfinite(p).any() for p in patches)
    with pytest.raises(InputError, match="smaller than the patch"):
        read_fits_patches([path], bands=["g"], patch=(64, 64), n=1)
    fits.PrimaryHDU(np.full((32, 32), np.nan, np.float32)).writeto(tmp_path / "blank.fits")
    with pytest.raises(InputError, match="every patch is blank"):
        read_fits_patches([tmp_path / "blank.fits"], bands=["g"], patch=(8, 8), n=2)


def test_compare_measures() -> None:
    ref = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]])
    cand = np.array([[0.8, 0.2], [0.6, 0.4], [0.5, 0.5]])
    a = compare(ref, cand, kind=OutputKind.PROBABILITIES, label="x", tolerance=0.15)
    assert a.max_abs_error == pytest.approx(0.2)
    assert a.mean_abs_error == pytest.approx((0.1 * 2 + 0.2 * 2) / 6)
    assert a.argmax_agreement == pytest.approx(2 / 3)
    assert not a.ok
    assert "argmax agreement 0.6667" in a.describe()
    heat = compare(np.array([[[[0.4, 0.7]]]]), np.array([[[[0.6, 0.7]]]]),
                   kind=OutputKind.HEATMAP, label="h", tolerance=1.0)
    assert heat.threshold_agreement == 0.5
    assert heat.argmax_agreement is None
    with pytest.raises(ParityError, match="expected output shape"):
        compare(ref, cand[:2], kind=OutputKind.PROBABILITIES, label="x", tolerance=1)
