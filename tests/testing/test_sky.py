"""The sky simulator: scene truth vs pixels, window/stream agreement, FITS streaming."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnpipe.errors import ConfigError, InputError
from cnnpipe.testing._render import NOISE_BLOCK, block_normals
from cnnpipe.testing.fitswrite import ImageSpec, StreamingFitsWriter
from cnnpipe.testing.sky import (
    ARTEFACT,
    MORPH_CLASSES,
    NO_DATA,
    SKY_CLASSES,
    SkyCatalog,
    make_sky_catalog,
    parse_bands,
    render_sky_bands,
    render_sky_window,
    sky_header,
    sky_truth_columns,
    write_sky,
)

SIZE = 640


@pytest.fixture(scope="module")
def cat() -> SkyCatalog:
    # Sparse enough that many objects are isolated; bright enough to measure.
    return make_sky_catalog(SIZE, seed=11, bands="g,r,i", star_density=200, galaxy_density=200)


@pytest.fixture(scope="module")
def full(cat: SkyCatalog) -> tuple[np.ndarray, np.ndarray]:
    return render_sky_bands(cat, 0, 0, (SIZE, SIZE))


@pytest.fixture(scope="module")
def clean(cat: SkyCatalog) -> tuple[np.ndarray, np.ndarray]:
    return render_sky_bands(cat, 0, 0, (SIZE, SIZE), noise=False)


def _clear(cat: SkyCatalog) -> np.ndarray:
    """Objects whose stamp lies inside the image, away from gaps and artefacts."""
    b = cat.box
    clear = (b[:, 0] >= 0) & (b[:, 1] <= SIZE) & (b[:, 2] >= 0) & (b[:, 3] <= SIZE)
    for g in cat.gaps:
        clear &= ~((b[:, 0] < g[1]) & (b[:, 1] > g[0]) & (b[:, 2] < g[3]) & (b[:, 3] > g[2]))
    for bx in cat.bad_columns[:, 0]:
        clear &= ~((b[:, 2] <= bx) & (b[:, 3] > bx))
    cy, cx = cat.cosmic[:, 0], cat.cosmic[:, 1]
    for k in range(len(cat)):
        hit = (cy >= b[k, 0]) & (cy < b[k, 1]) & (cx >= b[k, 2]) & (cx < b[k, 3])
        clear[k] &= not hit.any()
    if cat.trail is not None:
        nx, ny, c = cat.trail[:3]
        d = np.stack([nx * b[:, 2 + i] + ny * b[:, j] - c for i in (0, 1) for j in (0, 1)], 1)
        clear &= np.all(d > 5, axis=1) | np.all(d < -5, axis=1)
    return clear


def _isolated(cat: SkyCatalog) -> np.ndarray:
    """Clear objects whose stamp overlaps no other object's stamp."""
    b = cat.box
    overlap = (
        (b[:, None, 0] < b[None, :, 1])
        & (b[:, None, 1] > b[None, :, 0])
        & (b[:, None, 2] < b[None, :, 3])
        & (b[:, None, 3] > b[None, :, 2])
    )
    return np.flatnonzero(_clear(cat) & (overlap.sum(axis=1) == 1))


def _alone_at_centre(cat: SkyCatalog) -> np.ndarray:
    """Clear objects whose centre pixel no other object's stamp covers."""
    b = cat.box
    iy, ix = np.rint(cat.y), np.rint(cat.x)
    cover = (
        (b[None, :, 0] <= iy[:, None])
        & (b[None, :, 1] > iy[:, None])
        & (b[None, :, 2] <= ix[:, None])
        & (b[None, :, 3] > ix[:, None])
    )
    return np.flatnonzero(_clear(cat) & (cover.sum(axis=1) == 1))


def test_classes() -> None:
    assert SKY_CLASSES == ("background", "star", "disk", "spheroid", "artefact")
    assert MORPH_CLASSES == ("star", "disk", "spheroid")
    assert SKY_CLASSES[ARTEFACT] == "artefact"


def test_catalog_contents(cat: SkyCatalog) -> None:
    assert set(np.unique(cat.kind)) == {1, 2, 3}
    gal = cat.kind > 1
    assert np.all(np.abs(cat.sersic_n[cat.kind == 2] - 1.0) <= 0.3)
    assert np.all((cat.sersic_n[cat.kind == 3] >= 3.0) & (cat.sersic_n[cat.kind == 3] <= 5.0))
    assert np.all(np.isnan(cat.sersic_n[~gal]))
    assert np.all((cat.ellipticity >= 0) & (cat.ellipticity < 0.8))
    assert np.all((cat.x >= -0.5) & (cat.x < SIZE - 0.5))
    # colours: spheroids redder (i/g) than disks on average
    colour = cat.flux[:, 2] / cat.flux[:, 0]
    assert np.median(colour[cat.kind == 3]) > 1.5 * np.median(colour[cat.kind == 2])


def test_same_objects_whatever_the_bands(cat: SkyCatalog) -> None:
    one = make_sky_catalog(SIZE, seed=11, bands="r", star_density=200, galaxy_density=200)
    np.testing.assert_array_equal(one.x, cat.x)
    np.testing.assert_array_equal(one.flux[:, 0], cat.flux[:, 1])


def test_catalog_20000_is_fast() -> None:
    t0 = time.perf_counter()
    big = make_sky_catalog(20000, seed=1, bands="g,r,i")
    assert time.perf_counter() - t0 < 5.0
    assert 100_000 < len(big) < 150_000


def test_windows_equal_the_full_image(cat: SkyCatalog, full: tuple) -> None:
    images, mask = full
    for y0, x0, h, w in [(0, 0, 64, 64), (100, 37, 300, 250), (SIZE - 33, 500, 33, 140)]:
        win, wmask = render_sky_bands(cat, y0, x0, (h, w))
        np.testing.assert_array_equal(win, images[:, y0 : y0 + h, x0 : x0 + w])
        np.testing.assert_array_equal(wmask, mask[y0 : y0 + h, x0 : x0 + w])
        one, omask = render_sky_window(cat, y0, x0, (h, w), band="i")
        np.testing.assert_array_equal(one, images[2, y0 : y0 + h, x0 : x0 + w])
        np.testing.assert_array_equal(omask, wmask)


@settings(max_examples=20, deadline=None)
@given(
    y0=st.integers(0, 300),
    x0=st.integers(0, 300),
    h=st.integers(1, 200),
    w=st.integers(1, 200),
)
def test_block_normals_do_not_depend_on_the_window(y0: int, x0: int, h: int, w: int) -> None:
    big = block_normals((5, 1), 0, 0, (600, 600))
    np.testing.assert_array_equal(
        block_normals((5, 1), y0, x0, (h, w)), big[y0 : y0 + h, x0 : x0 + w]
    )
    assert NOISE_BLOCK == 128


def test_noise_statistics(cat: SkyCatalog, full: tuple, clean: tuple) -> None:
    resid = (full[0] - clean[0])[:, full[1] == 0]  # background pixels
    expect = cat.sky_sigma
    np.testing.assert_allclose(resid.std(axis=1), expect, rtol=0.05)
    assert np.all(np.abs(resid.mean(axis=1)) < 0.05 * expect)


def test_bright_stars_peak_at_truth(cat: SkyCatalog, full: tuple) -> None:
    images = full[0]
    stars = [k for k in _alone_at_centre(cat) if cat.kind[k] == 1 and cat.flux[k, 1] > 3000]
    assert len(stars) >= 5
    for k in stars:
        iy, ix = round(cat.y[k]), round(cat.x[k])
        cut = images[1, iy - 4 : iy + 5, ix - 4 : ix + 5]
        py, px = np.unravel_index(np.argmax(cut), cut.shape)
        assert abs(iy - 4 + py - cat.y[k]) <= 1.0
        assert abs(ix - 4 + px - cat.x[k]) <= 1.0


def test_mask_holds_the_class_at_isolated_centres(cat: SkyCatalog, full: tuple) -> None:
    mask = full[1]
    bright = [k for k in _alone_at_centre(cat) if cat.flux[k].sum() > 5000]
    assert len(bright) >= 10
    assert {int(cat.kind[k]) for k in bright} == {1, 2, 3}
    for k in bright:
        assert mask[round(cat.y[k]), round(cat.x[k])] == cat.kind[k], k


def test_flux_of_isolated_objects(cat: SkyCatalog, full: tuple, clean: tuple) -> None:
    iso = _isolated(cat)
    assert len(iso) >= 20
    zs, rel = [], []
    for k in iso:
        y0, y1, x0, x1 = cat.box[k]
        npix = (y1 - y0) * (x1 - x0)
        for b in range(3):
            sky = cat.sky_level[b] * npix
            got = clean[0][b, y0:y1, x0:x1].sum(dtype=np.float64) - sky
            np.testing.assert_allclose(got, cat.flux[k, b], rtol=1e-3)
            noisy = full[0][b, y0:y1, x0:x1].sum(dtype=np.float64) - sky
            sigma_ap = np.sqrt(npix * cat.sky_sigma[b] ** 2 + cat.flux[k, b] / cat.gain)
            zs.append((noisy - cat.flux[k, b]) / sigma_ap)
            if cat.flux[k, b] > 40 * sigma_ap:
                rel.append(abs(noisy / cat.flux[k, b] - 1.0))
    zs_a = np.array(zs)
    assert np.all(np.abs(zs_a) < 5.0)  # the noise is what the model says it is
    assert 0.7 < zs_a.std() < 1.3
    assert len(rel) >= 3
    assert max(rel) < 0.1
    assert np.median(rel) < 0.03


def test_bands_differ_masks_do_not(cat: SkyCatalog, full: tuple) -> None:
    images = full[0]
    ok = np.isfinite(images[0])
    assert not np.allclose(images[0][ok], images[1][ok])
    assert not np.allclose(images[1][ok], images[2][ok])
    _, mask_g = render_sky_window(cat, 0, 0, (SIZE, SIZE), band="g")
    np.testing.assert_array_equal(mask_g, full[1])


def test_gaps_are_nan_and_masked_255(full: tuple) -> None:
    images, mask = full
    nan = np.isnan(images)
    assert nan.any()
    for b in range(3):
        np.testing.assert_array_equal(nan[b], mask == NO_DATA)
    # a full-height chip-gap strip
    gap_cols = np.flatnonzero((mask == NO_DATA).all(axis=0))
    assert 2 <= gap_cols.size <= 24
    assert np.all(np.diff(gap_cols) == 1)


def test_artefacts(cat: SkyCatalog, full: tuple) -> None:
    images, mask = full
    assert len(cat.bad_columns) >= 1
    for (bx, y0, y1, hot), level in zip(cat.bad_columns, cat.bad_level):
        col = mask[y0:y1, bx]
        rows = col != NO_DATA
        assert np.all(col[rows] == ARTEFACT)
        want = cat.sky_level + level * cat.sky_sigma if hot else np.zeros(3)
        got = images[:, y0:y1, bx][:, rows]
        np.testing.assert_allclose(got, np.broadcast_to(want[:, None], got.shape), rtol=1e-6)
    assert (mask == ARTEFACT).sum() > SIZE // 2  # columns + cosmic rays + trail


def test_seeded_determinism_and_seed_matters() -> None:
    a = render_sky_window(make_sky_catalog(200, seed=3), 0, 0, (200, 200))
    b = render_sky_window(make_sky_catalog(200, seed=3), 0, 0, (200, 200))
    c = render_sky_window(make_sky_catalog(200, seed=4), 0, 0, (200, 200))
    assert a[0].tobytes() == b[0].tobytes()
    assert a[1].tobytes() == b[1].tobytes()
    assert a[0].tobytes() != c[0].tobytes()


@pytest.mark.parametrize("sip", [False, True])
def test_truth_radec_follow_the_wcs(sip: bool) -> None:
    cat = make_sky_catalog(1000, seed=5, sip=sip, rotation=12.0)
    hdr = sky_header(cat)
    hdr = fits.Header.fromstring(hdr.tostring())  # through the FITS text
    wcs = WCS(hdr)
    assert wcs.has_celestial
    assert wcs.wcs.ctype[0].startswith("RA---TAN")
    assert wcs.wcs.ctype[1].startswith("DEC--TAN")
    assert (wcs.sip is not None) is sip
    cols = sky_truth_columns(cat)
    world = wcs.pixel_to_world(cols["x"], cols["y"])
    sep = world.separation(type(world)(cols["ra"], cols["dec"], unit="deg", frame="icrs")).to_value(
        "mas"
    )
    assert sep.max() < 1.0
    # the centre pixel is at (ra0, dec0); SIP moves the corners by about 2 px
    centre = wcs.pixel_to_world(499.5, 499.5)
    assert abs(centre.ra.deg - 150.1) < 1e-9
    assert abs(centre.dec.deg - 2.2) < 1e-9
    plain = WCS(sky_header(make_sky_catalog(1000, seed=5, rotation=12.0)))
    shift = world[np.argmax(cols["x"] + cols["y"])].separation(
        plain.pixel_to_world(cols["x"].max(), cols["y"].max())
    )
    if sip:
        assert shift.to_value("arcsec") > 0.05


def test_parse_bands() -> None:
    assert parse_bands("g, r,i") == ("g", "r", "i")
    assert parse_bands(["u", "F150W"]) == ("u", "F150W")
    for bad in ["g,,r", "", "g,r,g", "g,G", "g r", "x" * 17]:
        with pytest.raises(ConfigError, match="Expected"):
            parse_bands(bad)


def test_window_outside_the_image(cat: SkyCatalog) -> None:
    with pytest.raises(InputError, match="inside the 640x640 image"):
        render_sky_window(cat, SIZE - 10, 0, (20, 20))
    with pytest.raises(InputError, match="band among"):
        render_sky_window(cat, 0, 0, (20, 20), band="z")


# -- streaming FITS ------------------------------------------------------------------


def test_streaming_writer_layout(tmp_path: Path) -> None:
    path = tmp_path / "x.fits"
    a = np.arange(70 * 33, dtype=np.float32).reshape(70, 33) - 500.0
    m = (np.arange(70 * 33) % 256).astype(np.uint8).reshape(70, 33)
    cards = fits.Header()
    cards["EXTNAME"] = "A"
    cards["NAXIS1"] = 999  # structural cards in `cards` are ignored
    specs = [
        ImageSpec(shape=()),
        ImageSpec(shape=(70, 33), cards=cards),
        ImageSpec(shape=(70, 33), dtype=np.dtype(np.uint8)),
    ]
    with StreamingFitsWriter(path, specs) as out:
        for y0 in (64, 0, 32):  # any order
            out.write_rows(2, y0, m[y0 : y0 + 32])
            out.write_rows(1, y0, a[y0 : y0 + 32])
        assert not path.exists()
    assert path.stat().st_size % 2880 == 0
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert [h.name for h in hdul] == ["PRIMARY", "A", ""]
        assert hdul[0].data is None
        assert hdul[0].header["EXTEND"] is True
        np.testing.assert_array_equal(hdul[1].data, a)
        assert hdul[2].header["BITPIX"] == 8
        np.testing.assert_array_equal(hdul[2].data, m)


def test_streaming_writer_refuses_incomplete_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "y.fits"
    out = StreamingFitsWriter(path, [ImageSpec(shape=(10, 4))])
    with pytest.raises(InputError, match="rows of shape"):
        out.write_rows(0, 0, np.zeros((2, 5)))
    with pytest.raises(InputError, match="rows within"):
        out.write_rows(0, 9, np.zeros((2, 4)))
    out.write_rows(0, 0, np.zeros((5, 4)))
    with pytest.raises(InputError, match="incomplete"):
        out.close()
    assert not path.exists()
    assert not list(tmp_path.iterdir())
    path.write_bytes(b"x")
    with pytest.raises(ConfigError, match="overwrite"):
        StreamingFitsWriter(path, [ImageSpec(shape=(10, 4))])


def test_streamed_file_equals_the_in_memory_render(tmp_path: Path) -> None:
    cat = make_sky_catalog(3000, seed=2, galaxy_density=120, star_density=40)
    files = write_sky(cat, tmp_path / "s.fits", strip_rows=256)
    image, mask = render_sky_window(cat, 0, 0, (3000, 3000))
    with fits.open(files.images[0], memmap=True) as hdul:
        np.testing.assert_array_equal(hdul[0].data, image)
    with fits.open(files.mask) as hdul:
        np.testing.assert_array_equal(hdul[0].data, mask)
        assert hdul[0].header["CLASS4"] == "artefact"
        assert hdul[0].header["NODATA"] == 255


def test_mef_layout_and_truth(tmp_path: Path) -> None:
    cat = make_sky_catalog(200, seed=9, bands="g,r,i")
    files = write_sky(cat, tmp_path / "m.fits", mef=True, strip_rows=64)
    assert files.images == (tmp_path / "m.fits",)
    images, mask = render_sky_bands(cat, 0, 0, (200, 200))
    with fits.open(files.images[0]) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "g", "r", "i"]
        assert hdul[0].data is None
        for i, band in enumerate("gri"):
            hdr = hdul[i + 1].header
            assert hdr["EXTNAME"] == band
            assert hdr["FILTER"] == band
            assert WCS(hdr).has_celestial
            np.testing.assert_array_equal(hdul[i + 1].data, images[i])
    with fits.open(files.mask) as hdul:
        np.testing.assert_array_equal(hdul[0].data, mask)
    table = pq.read_table(files.truth)
    assert table.column_names == [
        "id", "x", "y", "ra", "dec", "kind", "class_id", "flux_g", "flux_r", "flux_i",
        "r_eff", "sersic_n", "ellipticity", "theta",
    ]  # fmt: skip
    assert table.num_rows == len(cat)
    assert set(table["kind"].to_pylist()) <= set(MORPH_CLASSES)
    np.testing.assert_array_equal(table["flux_r"].to_numpy(), cat.flux[:, 1])
    assert table.schema.field("x").metadata[b"unit"] == b"pix"


def test_per_band_files(tmp_path: Path) -> None:
    cat = make_sky_catalog(100, seed=9, bands="g,r")
    files = write_sky(cat, tmp_path / "p.fits", truth=tmp_path / "t.fits")
    assert files.images == (tmp_path / "p_g.fits", tmp_path / "p_r.fits")
    assert files.mask == tmp_path / "p.mask.fits"
    for path, band in zip(files.images, "gr"):
        assert fits.getheader(path)["FILTER"] == band
    with fits.open(files.truth) as hdul:
        assert hdul[1].columns["x"].unit == "pix"
        np.testing.assert_array_equal(hdul[1].data["x"], cat.x)
    with pytest.raises(ConfigError, match="overwrite"):
        write_sky(cat, tmp_path / "p.fits", truth=tmp_path / "t.fits")


@pytest.mark.slow
def test_4000_sky_renders_well_under_a_minute() -> None:
    cat = make_sky_catalog(4000, seed=1, bands="r")
    t0 = time.perf_counter()
    render_sky_window(cat, 0, 0, (4000, 4000))
    assert time.perf_counter() - t0 < 30.0


@pytest.mark.slow
def test_streaming_memory_stays_bounded(tmp_path: Path) -> None:
    size = 12000  # 549 MiB of float32 pixels
    script = textwrap.dedent(
        f"""
        import resource, sys
        import astropy.table, pyarrow.parquet  # imported by write_sky; not pixel memory
        from cnnpipe.testing.sky import make_sky_catalog, sky_truth_columns, write_sky
        cat = make_sky_catalog({size}, seed=1)
        sky_truth_columns(cat)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        write_sky(cat, sys.argv[1], strip_rows=256)
        print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    out = tmp_path / "big.fits"
    res = subprocess.run(
        [sys.executable, "-c", script, str(out)], capture_output=True, text=True, check=True
    )
    before_mb, peak_mb = (int(v) / 1024 for v in res.stdout.split()[-2:])
    image_mb = size * size * 4 / 2**20
    assert out.stat().st_size > size * size * 4
    # a strip of 256 rows x 12000 px is ~12 MiB (we see ~8 strips); the image is 549 MiB
    assert peak_mb - before_mb < 0.3 * image_mb, (before_mb, peak_mb, image_mb)
