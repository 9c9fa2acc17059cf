"""``cnnpipe simulate`` through click's CliRunner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from click.testing import CliRunner

from cnnpipe.cli import cli


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["simulate", *args])
    return result.exit_code, result.stdout, result.stderr


def test_sky_per_band_files_with_sip(tmp_path: Path) -> None:
    out = tmp_path / "field.fits"
    code, stdout, stderr = _run(
        str(out), "--kind", "sky", "--size", "300", "--bands", "g,r,i", "--sip", "--seed", "3"
    )
    assert code == 0, stderr
    names = [Path(line).name for line in stdout.split()]
    assert names == [
        "field_g.fits", "field_r.fits", "field_i.fits", "field.mask.fits",
        "field.truth.parquet",
    ]  # fmt: skip
    truth = pq.read_table(tmp_path / "field.truth.parquet").to_pydict()
    assert len(truth["id"]) > 0
    for band in "gri":
        with fits.open(tmp_path / f"field_{band}.fits") as hdul:
            hdr = hdul[0].header
            assert hdr["FILTER"] == band
            assert hdul[0].data.shape == (300, 300)
            assert hdul[0].data.dtype == np.dtype(">f4")
        wcs = WCS(hdr)
        assert wcs.has_celestial
        assert wcs.sip is not None
        world = wcs.pixel_to_world(np.array(truth["x"]), np.array(truth["y"]))
        sep = world.separation(SkyCoord(truth["ra"], truth["dec"], unit="deg"))
        assert sep.to_value("mas").max() < 1.0
    mask = fits.getdata(tmp_path / "field.mask.fits")
    assert mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1, 2, 3, 4, 255}
    image = fits.getdata(tmp_path / "field_r.fits")
    np.testing.assert_array_equal(np.isnan(image), mask == 255)


def test_sky_mef_with_fits_truth_is_deterministic(tmp_path: Path) -> None:
    paths = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.fits"
        truth = tmp_path / f"{name}.truth.fits"
        code, _, stderr = _run(
            str(out), "--size", "128", "--bands", "g,r", "--mef", "--truth", str(truth)
        )
        assert code == 0, stderr
        paths.append((out, tmp_path / f"{name}.mask.fits", truth))
    with fits.open(paths[0][0]) as hdul:
        assert [h.header.get("EXTNAME") for h in hdul[1:]] == ["g", "r"]
        assert [h.header["FILTER"] for h in hdul[1:]] == ["g", "r"]
        assert not np.array_equal(hdul[1].data, hdul[2].data, equal_nan=True)
    table = Table.read(paths[0][2])
    assert {"id", "x", "y", "ra", "dec", "kind", "class_id", "flux_g", "flux_r"} <= set(
        table.colnames
    )
    for a, b in zip(*paths):
        assert a.read_bytes() == b.read_bytes(), a.name
    code, _, _ = _run(str(tmp_path / "c.fits"), "--size", "128", "--bands", "g,r", "--mef",
                      "--seed", "1")  # fmt: skip
    assert code == 0
    assert (tmp_path / "c.fits").read_bytes() != paths[0][0].read_bytes()


def test_craters_with_dem(tmp_path: Path) -> None:
    out = tmp_path / "moon.fits"
    code, stdout, stderr = _run(
        str(out), "--kind", "craters", "--size", "200", "--dem", "--r-min", "4", "--r-max", "30"
    )
    assert code == 0, stderr
    assert [Path(p).name for p in stdout.split()] == [
        "moon.fits",
        "moon.mask.fits",
        "moon.truth.parquet",
    ]
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "DEM"]
        assert hdul[0].header["CTYPE1"] == "SELN-CAR"
        assert hdul[0].header["BODY"] == "MOON"
    truth = pq.read_table(tmp_path / "moon.truth.parquet")
    radius = truth["radius_px"].to_numpy()
    assert radius.min() >= 4.0
    assert radius.max() <= 30.0
    rim = fits.getdata(tmp_path / "moon.mask.fits")
    assert set(np.unique(rim)) == {0, 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bands", "g,,r"], "name 2 is ''"),
        (["--bands", "g,r,g"], "repeats ['g']"),
        (["--kind", "craters", "--bands", "g"], "Got --bands"),
        (["--kind", "sky", "--dem"], "Got --dem"),
        (["--size", "4"], "at least 16"),
        (["--seed", "-1"], "seed >= 0"),
    ],
)
def test_bad_options_give_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    code, stdout, stderr = _run(str(tmp_path / "x.fits"), *args)
    assert code == 2
    assert stderr.startswith("cnnpipe: error: Expected")
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert "Traceback" not in stderr
    assert not list(tmp_path.iterdir())


def test_unwritable_or_existing_output(tmp_path: Path) -> None:
    code, _, stderr = _run(str(tmp_path / "missing" / "x.fits"), "--size", "64")
    assert code == 2
    assert "Expected an existing folder" in stderr
    assert len(stderr.strip().splitlines()) == 1
    (tmp_path / "dir.fits").mkdir()
    code, _, stderr = _run(str(tmp_path / "dir.fits"), "--size", "64")
    assert code != 0
    assert "Traceback" not in stderr
    out = tmp_path / "x.fits"
    assert _run(str(out), "--size", "64")[0] == 0
    code, _, stderr = _run(str(out), "--size", "64")
    assert code == 2
    assert "--overwrite" in stderr
    assert _run(str(out), "--size", "64", "--overwrite")[0] == 0
