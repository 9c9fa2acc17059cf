"""The crater simulator: size distribution, crater profile, rims, overprinting, files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy.optimize import brentq

from cnnpipe.errors import ConfigError
from cnnpipe.testing._render import CRATER_EJECTA_EXTENT
from cnnpipe.testing.craters import (
    CRATER_CLASSES,
    CraterCatalog,
    crater_header,
    crater_truth_columns,
    make_crater_catalog,
    render_crater_dem,
    render_crater_layers,
    render_crater_window,
    write_craters,
)


def _slope_mle(r: np.ndarray, lo: float, hi: float) -> float:
    """Maximum-likelihood slope of a power law N(>r) ∝ r^-a truncated to [lo, hi]."""
    s = np.log(r / lo).mean()
    ln = np.log(lo / hi)

    def score(a: float) -> float:
        t = (lo / hi) ** a
        return 1.0 / a + t * ln / (1.0 - t) - s

    return float(brentq(score, 0.05, 20.0))


@pytest.mark.parametrize(("slope", "lo", "hi"), [(2.0, 3.0, 60.0), (2.7, 5.0, 40.0)])
def test_radii_follow_the_power_law(slope: float, lo: float, hi: float) -> None:
    cat = make_crater_catalog(20000, seed=4, n_craters=100_000, r_min=lo, r_max=hi, slope=slope)
    assert cat.radius.min() >= lo
    assert cat.radius.max() <= hi
    assert abs(_slope_mle(cat.radius, lo, hi) - slope) < 0.03
    # and the cumulative counts: N(>2 lo) / N(>lo) = (2^-a - t) / (1 - t), t = (lo/hi)^a
    t = (lo / hi) ** slope
    frac = (cat.radius > 2 * lo).mean()
    assert abs(frac - (2.0**-slope - t) / (1.0 - t)) < 0.005


def test_default_number_of_craters_matches_the_coverage() -> None:
    cat = make_crater_catalog(2000, seed=1, coverage=0.5)
    area = np.pi * (cat.radius**2).sum() / 2000**2
    assert 0.4 < area < 0.6


def _single(size: int = 160, radius: float = 20.0) -> CraterCatalog:
    """A field with one crater whose ejecta lie wholly inside the image."""
    margin = CRATER_EJECTA_EXTENT * radius + 2
    for seed in range(50):
        cat = make_crater_catalog(
            size, seed=seed, n_craters=1, r_min=radius, r_max=radius + 1e-6, noise=0.0
        )
        if margin < cat.x[0] < size - margin and margin < cat.y[0] < size - margin:
            return cat
    raise AssertionError("no seed put the crater inside")


def test_single_crater_profile_rim_and_shading() -> None:
    cat = _single(size=160, radius=20.0)
    image, mask, dem = render_crater_layers(cat, 0, 0, (160, 160))
    yy, xx = np.mgrid[0:160, 0:160]
    r = np.hypot(yy - cat.y[0], xx - cat.x[0])
    R, hw = cat.radius[0], cat.rim_halfwidth
    # the rim mask is exactly the annulus |r - R| <= hw
    np.testing.assert_array_equal(mask, (np.abs(r - R) <= hw).astype(np.uint8))
    assert set(np.unique(mask)) == {0, 1}
    # ... and its radial profile peaks at R
    bins = np.arange(0, 60)
    idx = np.digitize(r.ravel(), bins) - 1
    prof_mask = np.bincount(idx, weights=mask.ravel()) / np.bincount(idx)
    prof_dem = np.bincount(idx, weights=dem.ravel()) / np.bincount(idx)
    assert abs(bins[np.argmax(prof_mask)] + 0.5 - R) <= 1.0
    assert abs(bins[np.argmax(prof_dem)] + 0.5 - R) <= 1.0  # rim crest
    # bowl: depth/diameter ~ 0.2 below the pre-existing surface
    c = (round(cat.y[0]), round(cat.x[0]))
    assert dem[c] == pytest.approx(cat.base_m[0] - cat.depth_m[0], rel=0.02, abs=10.0)
    diam_m = 2 * R * cat.pixscale_km * 1000
    assert 0.15 < cat.depth_m[0] / diam_m < 0.23
    # Sun in the west (azimuth 270): the inner wall facing east (x < cx) is darker
    bowl = r < 0.7 * R
    assert image[bowl & (xx < cat.x[0])].mean() < 0.5 * image[bowl & (xx > cat.x[0])].mean()
    # far from the crater the ground is flat-ish: reflectance ~ albedo
    far = r > CRATER_EJECTA_EXTENT * R + 2
    assert abs(np.median(image[far]) - cat.albedo) < 0.1 * cat.albedo


@pytest.fixture(scope="module")
def field() -> CraterCatalog:
    return make_crater_catalog(300, seed=8, coverage=1.0, r_min=3.0, r_max=40.0)


def test_visibility_and_base_match_brute_force(field: CraterCatalog) -> None:
    x, y, r, hw = field.x, field.y, field.radius, field.rim_halfwidth
    n = len(field)
    assert n > 300
    phi = np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)
    for k in range(n):
        px, py = x[k] + r[k] * np.cos(phi), y[k] + r[k] * np.sin(phi)
        later = slice(k + 1, n)
        d2 = (px[:, None] - x[None, later]) ** 2 + (py[:, None] - y[None, later]) ** 2
        erased = (d2 < (r[later] - hw)[None, :] ** 2).any(axis=1)
        assert field.rim_visible[k] == pytest.approx(1.0 - erased.mean()), k
    assert 0 < (~field.visible).sum() < n // 2
    assert field.visible.sum() > n // 2


def test_overprinting_erases_rims(field: CraterCatalog) -> None:
    _, mask = render_crater_window(field, 0, 0, (300, 300))
    yy, xx = np.mgrid[0:300, 0:300]
    on_rim: dict[bool, list[float]] = {True: [], False: []}
    for k in range(len(field)):
        ring = np.abs(np.hypot(yy - field.y[k], xx - field.x[k]) - field.radius[k]) <= 0.5
        if ring.sum() < 10:
            continue
        if field.rim_visible[k] == 1.0:
            on_rim[True].append(mask[ring].mean())
        elif field.rim_visible[k] == 0.0:
            on_rim[False].append(mask[ring].mean())
    assert min(on_rim[True]) > 0.85  # later craters' rims may cross, never erase it
    assert np.mean(on_rim[False]) < 0.3  # only other rims crossing remain


def test_windows_equal_the_full_image(field: CraterCatalog) -> None:
    image, mask, dem = render_crater_layers(field, 0, 0, (300, 300))
    for y0, x0, h, w in [(0, 0, 50, 70), (123, 7, 150, 200), (299, 299, 1, 1)]:
        wi, wm, wd = render_crater_layers(field, y0, x0, (h, w))
        np.testing.assert_array_equal(wi, image[y0 : y0 + h, x0 : x0 + w])
        np.testing.assert_array_equal(wm, mask[y0 : y0 + h, x0 : x0 + w])
        np.testing.assert_array_equal(wd, dem[y0 : y0 + h, x0 : x0 + w])
    np.testing.assert_array_equal(render_crater_dem(field, 10, 20, (5, 6)), dem[10:15, 20:26])
    noisy, _ = render_crater_window(field, 0, 0, (300, 300))
    clean, _ = render_crater_window(field, 0, 0, (300, 300), noise=False)
    resid = noisy - clean
    assert resid.std() == pytest.approx(field.noise * field.albedo, rel=0.05)


def test_wcs_and_truth_coordinates(field: CraterCatalog) -> None:
    hdr = fits.Header.fromstring(crater_header(field).tostring())
    wcs = WCS(hdr)
    assert wcs.has_celestial
    assert list(wcs.wcs.ctype) == ["SELN-CAR", "SELT-CAR"]
    assert hdr["BODY"] == "MOON"
    assert hdr["BODYRAD"] == pytest.approx(1737.4)
    assert hdr["A_RADIUS"] == pytest.approx(1737400.0)
    cols = crater_truth_columns(field)
    lon, lat = wcs.all_pix2world(cols["x"], cols["y"], 0)
    assert np.max(np.abs(lon - cols["lon"])) * 3.6e6 < 1.0  # mas
    assert np.max(np.abs(lat - cols["lat"])) * 3.6e6 < 1.0
    # the map scale: 100 px along the equator is 100 * PIXSCALE km on the body
    (l0, l1), (b0, b1) = wcs.all_pix2world([99.5, 199.5], [149.5, 149.5], 0)
    assert np.deg2rad(l1 - l0) * hdr["BODYRAD"] == pytest.approx(100 * hdr["PIXSCALE"])
    assert b0 == pytest.approx(field.lat0)  # the centre row is at lat0 ...
    assert l0 + l1 == pytest.approx(2 * field.lon0)  # ... the centre column at lon0
    assert wcs.all_pix2world(0.0, 200.0, 0)[1] > b0  # latitude grows with y
    np.testing.assert_allclose(cols["diameter_km"], 2 * cols["radius_px"] * hdr["PIXSCALE"])
    assert CRATER_CLASSES == ("background", "rim")


def test_written_files(tmp_path: Path, field: CraterCatalog) -> None:
    files = write_craters(field, tmp_path / "moon.fits", dem=True, strip_rows=64)
    assert files.mask == tmp_path / "moon.mask.fits"
    assert files.truth == tmp_path / "moon.truth.parquet"
    image, mask, dem = render_crater_layers(field, 0, 0, (300, 300))
    with fits.open(files.images[0]) as hdul:
        hdul.verify("exception")
        assert [h.name for h in hdul] == ["PRIMARY", "DEM"]
        np.testing.assert_array_equal(hdul[0].data, image)
        np.testing.assert_array_equal(hdul["DEM"].data, dem)
        assert hdul["DEM"].header["BUNIT"] == "m"
        assert hdul[0].header["PIXSCALE"] == field.pixscale_km
    with fits.open(files.mask) as hdul:
        np.testing.assert_array_equal(hdul[0].data, mask)
        assert hdul[0].header["CTYPE1"] == "SELN-CAR"
    table = pq.read_table(files.truth)
    assert table.column_names == [
        "id", "x", "y", "radius_px", "lon", "lat", "diameter_km", "depth_m", "visible",
        "rim_visible_frac",
    ]  # fmt: skip
    np.testing.assert_array_equal(table["radius_px"].to_numpy(), field.radius)
    np.testing.assert_array_equal(table["visible"].to_numpy(), field.visible)
    # same seed, same bytes
    again = write_craters(
        make_crater_catalog(300, seed=8, coverage=1.0, r_min=3.0, r_max=40.0),
        tmp_path / "again.fits", dem=True, strip_rows=100,
    )  # fmt: skip
    for a, b in zip(files.all, again.all):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="r_min < r_max"):
        make_crater_catalog(100, r_min=10, r_max=5)
    with pytest.raises(ConfigError, match="body among"):
        make_crater_catalog(100, body="PLUTO")
    with pytest.raises(ConfigError, match="at least 16"):
        make_crater_catalog(8)


@pytest.mark.slow
def test_catalog_20000_is_fast_enough() -> None:
    t0 = time.perf_counter()
    cat = make_crater_catalog(20000, seed=1)
    assert time.perf_counter() - t0 < 60.0
    assert len(cat) > 1_000_000
