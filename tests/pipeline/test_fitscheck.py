"""FITS structure and integrity checks: the header walk, DATASUM / CHECKSUM, streams."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from cnnpipe.errors import InputError
from cnnpipe.pipeline.fitscheck import ones_complement_sum, prescan
from cnnpipe.pipeline.sources import open_sources
from cnnpipe.testing import fitsfiles as ff

pytestmark = pytest.mark.filterwarnings("ignore::cnnpipe.pipeline.sources.NoWCSWarning")


def test_ones_complement_sum_folds_carries() -> None:
    assert ones_complement_sum(0) == 0
    assert ones_complement_sum(0xFFFFFFFF) == 0xFFFFFFFF
    assert ones_complement_sum(0x1_0000_0000) == 1  # end-around carry
    assert ones_complement_sum(0xFFFFFFFF + 0xFFFFFFFF) == 0xFFFFFFFF
    assert ones_complement_sum(3 * 2**64 + 5) == 8


def _hdus(tmp_path: Path) -> list[fits.hdu.base.ExtensionHDU]:
    image = ff.sky_image((40, 56), seed=3)
    raw = np.random.default_rng(0).integers(-500, 3000, (40, 56)).astype(np.int16)
    scaled = fits.ImageHDU(raw, name="SCALED")
    scaled.header["BSCALE"], scaled.header["BZERO"], scaled.header["BLANK"] = 0.5, 10.0, -1
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name="v", format="PJ()", array=np.array([[1, 2], [3]], dtype=object))],
        name="VLA")  # a heap: PCOUNT > 0
    return [fits.ImageHDU(image, header=ff.tan_header((40, 56)), name="SCI"), scaled, table,
            fits.CompImageHDU(raw, compression_type="RICE_1", name="TILES")]


def test_files_with_valid_checksums_are_accepted(tmp_path: Path) -> None:
    """No false refusals: astropy's checksums of plain, scaled, heap and tiled HDUs."""
    path = tmp_path / "summed.fits"
    fits.HDUList([fits.PrimaryHDU(), *_hdus(tmp_path)]).writeto(path, checksum=True)
    with fits.open(path, disable_image_compression=True) as hdul:  # astropy: all valid
        assert [h.verify_checksum() for h in hdul] == [1] * 5
        assert [h.verify_datasum() for h in hdul] == [1] * 5
    keys = [s.key for s in open_sources([str(path)])]
    assert keys == ["summed"]  # the SCI extension: the only one a spec without [..] takes
    assert [s.key for s in open_sources([f"{path}[TILES]"])] == ["summed_TILES"]
    assert [s.key for s in open_sources([f"{path}[SCALED]"])] == ["summed_SCALED"]
    packed = tmp_path / "summed.fits.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert [s.key for s in open_sources([str(packed)])] == ["summed"]


def test_checksums_are_checked_only_on_the_selected_hdus(tmp_path: Path) -> None:
    path = tmp_path / "two.fits"
    fits.HDUList([fits.PrimaryHDU(), *_hdus(tmp_path)[:2]]).writeto(path, checksum=True)
    raw = bytearray(path.read_bytes())
    with fits.open(path) as hdul:
        scaled = hdul.fileinfo(2)["datLoc"]
    raw[scaled + 10] ^= 0x01
    path.write_bytes(bytes(raw))
    assert [s.key for s in open_sources([f"{path}[SCI]"])] == ["two_SCI"]
    with pytest.raises(InputError, match=r"two.fits\[SCALED\]: expected the data to match "
                       r"DATASUM \d+. Got \d+; the file is corrupt"):
        open_sources([f"{path}[SCALED]"])


def _set(raw: bytearray, hdu_start: int, key: str, value: str) -> None:
    at = next(i for i in range(hdu_start, hdu_start + 2880 * 4, 80)
              if raw[i:i + 8] == key.ljust(8).encode())
    raw[at:at + 80] = f"{key:<8}= {value:>20}".ljust(80).encode()


@pytest.mark.parametrize(("value", "message"), [
    ("-40", r"\[4\]: expected NAXIS1 >= 0. Got -40"),
    (str(2**70), r"\[4\]: expected NAXIS between 0 and 999. Got 1180591620717411303424"),
])
def test_the_walk_reaches_later_hdus_past_groups_heaps_and_tiles(
    tmp_path: Path, value: str, message: str
) -> None:
    """The header walk sizes random groups, heaps and tiles right, to find HDU 4."""
    groups = fits.GroupsHDU(fits.GroupData(
        np.ones((3, 1, 2, 2), np.float32), parnames=["u"], pardata=[np.zeros(3, np.float32)],
        bitpix=-32))
    path = tmp_path / "walk.fits"
    hdus = _hdus(tmp_path)
    fits.HDUList([groups, hdus[2], hdus[3], hdus[1], hdus[0]]).writeto(path)
    prescan(str(path), "walk.fits")  # as written: nothing to say
    with fits.open(path) as hdul:
        start = hdul.fileinfo(4)["hdrLoc"]
    raw = bytearray(path.read_bytes())
    key = "NAXIS1" if value.startswith("-") else "NAXIS"
    _set(raw, start, key, value)
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=rf"^walk.fits{message}; the header is corrupt"):
        prescan(str(path), "walk.fits")


def test_a_compressed_stream_is_read_to_its_end(tmp_path: Path) -> None:
    path, _ = ff.write_gzip(tmp_path / "g.fits.gz")
    packed = bytearray(path.read_bytes())
    prescan(str(path), "g.fits.gz")
    packed[-8] ^= 0x01  # the CRC-32 of the stream's trailer
    path.write_bytes(bytes(packed))
    with pytest.raises(InputError, match=r"^g.fits.gz: expected an intact compressed stream. "
                       r"Got BadGzipFile: CRC check failed"):
        prescan(str(path), "g.fits.gz")
