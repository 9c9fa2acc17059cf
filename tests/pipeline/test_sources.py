"""FITS sources: validation, window reading in every pixel format, edges, WCS, pickling."""

from __future__ import annotations

import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnpipe.errors import ConfigError, InputError
from cnnpipe.pipeline.sources import (
    REFLECT_MODE,
    HDURef,
    NoWCSWarning,
    Source,
    clear_cache,
    open_sources,
    parse_hdu_selector,
    parse_spec,
    reflect_indices,
)
from cnnpipe.testing import fitsfiles as ff

pytestmark = pytest.mark.filterwarnings("ignore::cnnpipe.pipeline.sources.NoWCSWarning")

ASTROPY_DATA = Path(fits.__file__).parent / "tests" / "data"


def one(spec: str | Path, **kwargs: object) -> Source:
    sources = open_sources([str(spec)], **kwargs)  # type: ignore[arg-type]
    assert len(sources) == 1
    return sources[0]


def full(source: Source) -> np.ndarray:
    return source.read_window(0, source.shape[0], 0, source.shape[1])


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal values and equal NaN positions, float32 native-endian."""
    assert actual.dtype == np.float32
    assert actual.dtype.isnative
    np.testing.assert_array_equal(actual, expected)  # NaN == NaN here


# --------------------------------------------------------------------------- pixels


@pytest.mark.parametrize("dtype", [">f4", "<f4", ">f8"])
def test_plain_float_window_equals_getdata(tmp_path: Path, dtype: str) -> None:
    path, expected = ff.write_float(tmp_path / "p.fits", dtype=dtype, n_bad=6)
    src = one(path)
    assert src.shape == expected.shape == (48, 64)
    assert src.key == "p"
    window = src.read_window(5, 30, 7, 50)
    assert window.shape == (1, 25, 43)
    assert_same(window[0], expected[5:30, 7:50])
    reference = fits.getdata(path).astype(np.float32)[5:30, 7:50]
    finite = np.isfinite(reference)
    np.testing.assert_array_equal(window[0][finite], reference[finite])
    # NaN, +inf and -inf all come back as NaN.
    assert np.isnan(full(src)).sum() == 6
    assert not np.isinf(full(src)).any()


@pytest.mark.parametrize(
    ("bitpix", "blank"),
    [(16, -32768), (16, 0), (16, None), (16, 7), (32, 0), (32, -1), (8, 255)],
)
def test_scaled_integers_and_blank(tmp_path: Path, bitpix: int, blank: int | None) -> None:
    path, expected = ff.write_scaled_int(tmp_path / "s.fits", bitpix=bitpix, blank=blank)
    window = one(path).read_window(0, 40, 0, 56)[0]
    assert_same(window, expected)
    n_nan = int(np.isnan(window).sum())
    assert n_nan == (0 if blank is None else 9)
    reference = fits.getdata(path)
    blanks = np.isnan(window)
    np.testing.assert_array_equal(window[~blanks], reference[~blanks].astype(np.float32))
    if blank == 0:
        # astropy 8 leaves BLANK=0 pixels at BZERO; cnnpipe masks them.
        assert np.all(reference[blanks] == 100.0)


def test_unsigned_16_bit_via_bzero(tmp_path: Path) -> None:
    raw = np.arange(-32768, 32768, 64, dtype=np.int16).reshape(32, 32)
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BZERO"] = 32768
    hdu.header["BSCALE"] = 1
    hdu.writeto(tmp_path / "u.fits")
    reference = fits.getdata(tmp_path / "u.fits")
    assert reference.dtype == np.uint16
    assert_same(full(one(tmp_path / "u.fits"))[0], reference.astype(np.float32))


@pytest.mark.parametrize("compression", ff.COMPRESSIONS)
@pytest.mark.parametrize("blank", [None, 0])
def test_tile_compressed_integers(tmp_path: Path, compression: str, blank: int | None) -> None:
    path, expected = ff.write_compressed(
        tmp_path / "c.fits", compression=compression, blank=blank, tile_shape=(8, 16)
    )
    src = one(path)
    assert src.refs[0].hdu == 1
    assert src.key == "c"
    assert_same(src.read_window(3, 37, 5, 50)[0], expected[3:37, 5:50])
    reference = fits.getdata(path, 1).astype(np.float32)
    keep = ~np.isnan(expected)
    np.testing.assert_array_equal(full(src)[0][keep], reference[keep])
    assert int((~keep).sum()) == (0 if blank is None else 5)
    cards = {k for k, _, _ in src.header}
    assert not cards & {"ZIMAGE", "ZCMPTYPE", "ZBITPIX", "BITPIX", "NAXIS", "BSCALE", "BLANK"}


def test_tile_compressed_quantized_float_keeps_nan(tmp_path: Path) -> None:
    path, expected = ff.write_compressed(
        tmp_path / "q.fits", integer=False, tile_shape=(16, 16), n_blank=7
    )
    src = one(path)
    assert int(np.isnan(expected).sum()) == 7
    for y0, y1, x0, x1 in [(0, 40, 0, 56), (15, 17, 15, 33), (39, 40, 0, 56)]:
        assert_same(src.read_window(y0, y1, x0, x1)[0], expected[y0:y1, x0:x1])


def test_gzip_file(tmp_path: Path) -> None:
    path, expected = ff.write_gzip(tmp_path / "g.fits.gz")
    src = one(path)
    assert src.key == "g"
    assert_same(src.read_window(2, 40, 3, 60)[0], expected[2:40, 3:60])
    assert_same(src.read_window(0, 48, 0, 64)[0], expected)  # from the process cache


def test_file_rewritten_between_reads_is_reread(tmp_path: Path) -> None:
    path, first = ff.write_float(tmp_path / "r.fits", seed=1, wcs=False)
    src = one(path)
    assert_same(full(src)[0], first)
    _, second = ff.write_float(tmp_path / "r.fits", seed=2, wcs=False)
    st_ = path.stat()
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))
    assert_same(full(src)[0], second)
    clear_cache()
    assert_same(full(src)[0], second)


def test_threads_share_compressed_handle(tmp_path: Path) -> None:
    path, expected = ff.write_compressed(tmp_path / "t.fits", shape=(64, 64), tile_shape=(16, 16))
    src = one(path)
    windows = [(y, y + 20, x, x + 30) for y in range(0, 44, 11) for x in range(0, 34, 17)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda w: src.read_window(*w), windows))
    for (y0, y1, x0, x1), got in zip(windows, results):
        assert_same(got[0], expected[y0:y1, x0:x1])


# --------------------------------------------------------------------------- edges


def test_reflect_indices_matches_numpy_symmetric() -> None:
    assert REFLECT_MODE == "symmetric"
    for n in (1, 2, 5):
        padded = np.pad(np.arange(n), (13, 17), mode="symmetric")
        np.testing.assert_array_equal(reflect_indices(np.arange(-13, n + 17), n), padded)


def test_edge_windows_reflect(tmp_path: Path) -> None:
    path, expected = ff.write_float(tmp_path / "e.fits", shape=(20, 30), n_bad=4, wcs=False)
    src = one(path)
    pad = 70  # more than the image on every side: the mirror repeats
    padded = np.pad(expected, pad, mode="symmetric")
    for y0, y1, x0, x1 in [
        (-5, 10, -3, 12),
        (15, 26, 25, 37),
        (-70, 90, -70, 100),
        (-1, 1, 29, 31),
    ]:
        got = src.read_window(y0, y1, x0, x1)[0]
        assert_same(got, padded[y0 + pad : y1 + pad, x0 + pad : x1 + pad])
    # The mirror repeats the edge pixel: row -1 is row 0.
    assert_same(src.read_window(-1, 0, 0, 30)[0, 0], expected[0])


def test_edge_windows_reflect_compressed(tmp_path: Path) -> None:
    path, expected = ff.write_compressed(tmp_path / "c.fits", shape=(24, 40), tile_shape=(8, 8))
    src = one(path)
    padded = np.pad(expected, 10, mode="symmetric")
    got = src.read_window(-10, 14, 30, 50)[0]
    assert_same(got, padded[0:24, 40:60])


@pytest.fixture(scope="module")
def plain_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Source, np.ndarray]:
    path, expected = ff.write_float(
        tmp_path_factory.mktemp("prop") / "h.fits", shape=(23, 37), n_bad=5, wcs=False, seed=3
    )
    return one(path), expected


@settings(max_examples=60, deadline=None)
@given(
    y0=st.integers(-60, 40),
    x0=st.integers(-80, 60),
    h=st.integers(1, 90),
    w=st.integers(1, 110),
)
def test_property_window_equals_numpy_reflect_padding(
    plain_file: tuple[Source, np.ndarray], y0: int, x0: int, h: int, w: int
) -> None:
    src, expected = plain_file
    pad = 200
    padded = np.pad(expected, pad, mode=REFLECT_MODE)  # type: ignore[call-overload]
    got = src.read_window(y0, y0 + h, x0, x0 + w)
    assert_same(got[0], padded[y0 + pad : y0 + h + pad, x0 + pad : x0 + w + pad])


def test_empty_window_is_an_error(tmp_path: Path) -> None:
    src = one(ff.write_float(tmp_path / "p.fits")[0])
    with pytest.raises(ValueError, match="non-empty window"):
        src.read_window(5, 5, 0, 10)


# --------------------------------------------------------------------------- specs, HDUs


def test_parse_spec() -> None:
    assert parse_spec("survey.fits") == ("survey.fits", None)
    assert parse_spec("survey.fits[SCI,2]") == ("survey.fits", ("SCI", 2))
    assert parse_spec("survey.fits[sci, 2]") == ("survey.fits", ("SCI", 2))
    assert parse_spec("survey.fits[SCI]") == ("survey.fits", ("SCI", None))
    assert parse_spec("dir/x.fits.gz[3]") == ("dir/x.fits.gz", 3)
    assert parse_hdu_selector(2) == 2
    assert parse_hdu_selector("1") == 1
    with pytest.raises(InputError, match=r"x.fits\[1:10,1:10\]: cannot parse"):
        parse_spec("x.fits[1:10,1:10]")
    with pytest.raises(ConfigError):
        parse_hdu_selector(-1)


def test_file_name_with_brackets_is_taken_literally(tmp_path: Path) -> None:
    path, expected = ff.write_float(tmp_path / "odd[1].fits", wcs=False)
    assert parse_spec(str(path)) == (str(path), None)
    src = one(path)
    assert src.key == "odd_1"
    assert_same(full(src)[0], expected)


def test_mef_expands_to_sci_extensions(tmp_path: Path) -> None:
    path, expected = ff.write_mef(tmp_path / "m.fits", n_sci=3, err_dq=True)
    sources = open_sources([str(path)])
    assert [s.key for s in sources] == ["m_SCI_1", "m_SCI_2", "m_SCI_3"]
    assert [s.refs[0] for s in sources] == [
        HDURef(str(path), 1 + 3 * k, "SCI", k + 1) for k in range(3)
    ]
    for src, exp in zip(sources, expected):
        assert src.has_wcs
        assert_same(full(src)[0], exp)


def test_mef_without_sci_takes_every_image_extension(tmp_path: Path) -> None:
    path, expected = ff.write_mef(tmp_path / "m.fits", n_sci=2, extname="CCD")
    sources = open_sources([str(path)])
    assert [s.key for s in sources] == ["m_CCD_1", "m_CCD_2"]
    assert_same(full(sources[1])[0], expected[1])


def test_hdu_selection(tmp_path: Path) -> None:
    path, expected = ff.write_mef(tmp_path / "m.fits", n_sci=3, err_dq=True)
    by_name = one(f"{path}[SCI,2]")
    assert by_name.key == "m_SCI_2"
    assert by_name.refs[0].hdu == 4
    assert_same(full(by_name)[0], expected[1])
    by_index = one(f"{path}[7]")
    assert (by_index.key, by_index.refs[0].extver) == ("m_SCI_3", 3)
    assert one(path, hdu="SCI,1").refs[0].hdu == 1
    assert one(path, hdu=4).refs[0].hdu == 4
    assert [s.refs[0].hdu for s in open_sources([f"{path}[SCI]"])] == [1, 4, 7]
    # The spec's own selector wins over --hdu.
    assert one(f"{path}[SCI,3]", hdu="SCI,1").refs[0].hdu == 7
    with pytest.raises(InputError, match=r"m.fits\[SCI,9\]: no HDU"):
        open_sources([f"{path}[SCI,9]"])
    with pytest.raises(InputError, match=r"m.fits\[12\]: no such HDU"):
        open_sources([f"{path}[12]"])
    with pytest.raises(InputError, match=r"m.fits\[0\]: expected a 2-D image HDU. Got an HDU"):
        open_sources([f"{path}[0]"])
    assert one(f"{path}[DQ,2]").refs[0].hdu == 6


def test_keys_are_unique_and_safe(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    p1, _ = ff.write_float(tmp_path / "a" / "x y+1.fits", wcs=False)
    p2, _ = ff.write_float(tmp_path / "b" / "x y+1.fits", wcs=False)
    keys = [s.key for s in open_sources([str(p1), str(p2)])]
    assert keys == ["x_y_1", "x_y_1_2"]


def test_astropy_packaged_files() -> None:
    hst = ASTROPY_DATA / "o4sp040b0_raw.fits"
    comp = ASTROPY_DATA / "comp.fits"
    if not (hst.exists() and comp.exists()):
        pytest.skip("astropy's test data are not installed")
    sources = open_sources([str(hst)])  # SCI,1 and SCI,2; ERR/DQ are empty
    assert [s.key for s in sources] == ["o4sp040b0_raw_SCI_1", "o4sp040b0_raw_SCI_2"]
    reference = fits.getdata(hst, "SCI", 2)
    assert reference.dtype == np.uint16
    assert_same(full(sources[1])[0], reference.astype(np.float32))
    src = one(comp)
    assert src.has_wcs
    assert_same(
        src.read_window(10, 250, 20, 400)[0],
        fits.getdata(comp, 1)[10:250, 20:400].astype(np.float32),
    )
    scale = ASTROPY_DATA / "scale.fits"
    assert_same(full(one(scale))[0], fits.getdata(scale).astype(np.float32))
    with pytest.raises(
        InputError, match=r"arange.fits\[0\]: expected a 2-D image HDU. Got NAXIS=3"
    ):
        open_sources([str(ASTROPY_DATA / "arange.fits")])
    with pytest.raises(InputError, match=r"stddata.fits: expected at least one image HDU"):
        open_sources([str(ASTROPY_DATA / "stddata.fits")])


# --------------------------------------------------------------------------- bad input


def _error(spec: str | Path, **kwargs: object) -> str:
    with pytest.raises(InputError) as info:
        open_sources([str(spec)], **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_inputs_get_one_line_errors(tmp_path: Path) -> None:
    assert _error(tmp_path / "missing.fits").startswith(f"{tmp_path}/missing.fits: no such file")
    message = _error(ff.write_cube(tmp_path / "cube.fits"))
    assert message.startswith(f"{tmp_path}/cube.fits[0]: expected a 2-D image HDU. Got NAXIS=3")
    assert "choose a plane" in message
    message = _error(f"{ff.write_table(tmp_path / 'cat.fits')}[1]")
    assert "cat.fits[CATALOG]: expected a 2-D image HDU. Got a table (BinTableHDU)" in message
    message = _error(ff.write_table(tmp_path / "cat2.fits"))
    assert "cat2.fits: expected at least one image HDU with data" in message
    message = _error(f"{ff.write_empty(tmp_path / 'empty.fits')}[0]")
    assert "empty.fits[0]: expected a 2-D image HDU. Got an HDU without pixels" in message
    assert "empty.fits: expected at least one image HDU" in _error(tmp_path / "empty.fits")
    assert "truncated.fits: the file is truncated" in _error(
        ff.write_truncated(tmp_path / "truncated.fits")
    )
    assert "junk.fits: not a readable FITS file" in _error(
        ff.write_not_fits(tmp_path / "junk.fits")
    )
    (tmp_path / "zero.fits").write_bytes(b"")
    assert "zero.fits: not a readable FITS file" in _error(tmp_path / "zero.fits")


def test_truncated_compressed_and_mef(tmp_path: Path) -> None:
    path, _ = ff.write_compressed(tmp_path / "tc.fits", shape=(200, 200), tile_shape=(20, 200))
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 3000)
    assert "tc.fits: the file is truncated" in _error(path)
    path, _ = ff.write_mef(tmp_path / "tm.fits")
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 2000)
    assert "tm.fits: the file is truncated" in _error(path)


def test_specs_and_bands_are_exclusive(tmp_path: Path) -> None:
    path, _ = ff.write_float(tmp_path / "p.fits")
    with pytest.raises(ConfigError, match="not both"):
        open_sources([str(path)], bands={"g": str(path)})
    with pytest.raises(ConfigError, match="No input images"):
        open_sources([])


# --------------------------------------------------------------------------- bands


def test_multiband_stacks_in_model_order(tmp_path: Path) -> None:
    files = ff.write_bands(tmp_path, ("g", "r", "i"))
    bands = {"r": str(files["r"][0]), "i": str(files["i"][0]), "g": str(files["g"][0])}
    src = one_multi(bands, model_bands=("g", "r", "i"))
    assert src.bands == ("g", "r", "i")
    assert src.key == "field"
    assert [Path(r.path).name for r in src.refs] == ["field_g.fits", "field_r.fits", "field_i.fits"]
    window = src.read_window(-3, 20, 10, 52)
    assert window.shape == (3, 23, 42)
    for c, band in enumerate(("g", "r", "i")):
        padded = np.pad(files[band][1], 20, mode="symmetric")
        assert_same(window[c], padded[17:40, 30:72])
    unordered = one_multi(bands)
    assert unordered.bands == ("r", "i", "g")


def one_multi(bands: dict[str, str], **kwargs: object) -> Source:
    sources = open_sources([], bands=bands, **kwargs)  # type: ignore[arg-type]
    assert len(sources) == 1
    return sources[0]


def test_multiband_missing_model_band(tmp_path: Path) -> None:
    files = ff.write_bands(tmp_path, ("g", "r"))
    with pytest.raises(InputError, match="model needs bands g,r,i; got g,r"):
        open_sources([], bands={b: str(p) for b, (p, _) in files.items()}, model_bands="gri")
    single, _ = files["g"]
    with pytest.raises(InputError, match="model needs bands g,r,i; got one single-band image"):
        open_sources([str(single)], model_bands=("g", "r", "i"))
    assert one(single, model_bands=("r",)).bands == ("r",)


def test_multiband_grid_mismatch(tmp_path: Path) -> None:
    files = ff.write_bands(tmp_path, ("g", "r"), shapes={"r": (40, 50)})
    with pytest.raises(
        InputError, match=r"field_r.fits\[0\]: band images must share one pixel grid"
    ):
        open_sources([], bands={b: str(p) for b, (p, _) in files.items()})
    files = ff.write_bands(tmp_path, ("g", "r"), shifts={"r": (2.0, 0.0)})
    with pytest.raises(InputError) as info:
        open_sources([], bands={b: str(p) for b, (p, _) in files.items()})
    assert "field_r.fits[0]" in str(info.value)
    assert "field_g.fits[0]" in str(info.value)
    assert "differs" in str(info.value)
    files = ff.write_bands(tmp_path, ("g", "r"), shifts={"r": (0.01, 0.0)})
    assert one_multi({b: str(p) for b, (p, _) in files.items()}).bands == ("g", "r")


# --------------------------------------------------------------------------- WCS, pickling


@pytest.mark.parametrize("sip", [False, True])
def test_wcs_round_trips_through_header_cards(tmp_path: Path, sip: bool) -> None:
    path, _ = ff.write_float(tmp_path / "w.fits", sip=sip, shape=(60, 80))
    src = one(path)
    assert src.has_wcs
    rebuilt = src.wcs()
    assert rebuilt is not None
    original = WCS(fits.getheader(path))
    assert (rebuilt.sip is not None) == sip
    yy, xx = np.mgrid[-5:65:7, -5:85:9]
    pix = np.column_stack([xx.ravel(), yy.ravel()]).astype(float)
    np.testing.assert_allclose(
        rebuilt.all_pix2world(pix, 0), original.all_pix2world(pix, 0), rtol=0, atol=1e-12
    )
    if sip:
        # The SIP terms matter: the linear part alone is off by a measurable amount.
        linear = original.deepcopy()
        linear.sip = None
        offset = np.abs(linear.wcs_pix2world(pix, 0) - original.all_pix2world(pix, 0)).max()
        assert offset > 0.1 * 0.25 / 3600  # > 0.1 pixel
    keywords = {k for k, _, _ in src.header}
    assert "OBJECT" in keywords
    assert not keywords & {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND"}


def test_missing_wcs_warns_and_runs_in_pixels(tmp_path: Path) -> None:
    path, _ = ff.write_float(tmp_path / "nowcs.fits", wcs=False)
    with pytest.warns(
        NoWCSWarning, match=r"nowcs.fits\[0\]: no usable celestial WCS .*runs in pixel coordinates"
    ):
        src = one(path)
    assert not src.has_wcs
    assert src.wcs() is None


def test_broken_wcs_warns(tmp_path: Path) -> None:
    header = ff.tan_header((48, 64))
    header["CTYPE1"] = "RA---XYZ"
    header["CTYPE2"] = "DEC--XYZ"
    path, _ = ff.write_float(tmp_path / "broken.fits", header=header)
    with pytest.warns(NoWCSWarning, match="astropy cannot parse it"):
        src = one(path)
    assert not src.has_wcs


def test_lookup_table_distortion_dropped_with_warning(tmp_path: Path) -> None:
    header = ff.tan_header((48, 64))
    header["CPDIS1"] = "LOOKUP"
    header["DP1"] = "EXTVER: 1"
    header["D2IMDIS1"] = "LOOKUP"
    path, _ = ff.write_float(tmp_path / "dist.fits", header=header)
    with pytest.warns(UserWarning, match="lookup-table distortions"):
        src = one(path)
    assert src.has_wcs
    assert not {k for k, _, _ in src.header} & {"CPDIS1", "DP1.EXTVER", "D2IMDIS1"}


def test_source_pickles_and_reads_the_same(tmp_path: Path) -> None:
    files = ff.write_bands(tmp_path, ("g", "r"))
    src = one_multi({b: str(p) for b, (p, _) in files.items()})
    blob = pickle.dumps(src)
    assert len(blob) < 8000
    clone = pickle.loads(blob)
    assert clone == src
    assert_same(clone.read_window(-2, 30, 5, 60), src.read_window(-2, 30, 5, 60))
    comp, _ = ff.write_compressed(tmp_path / "c.fits")
    csrc = one(comp)
    csrc.read_window(0, 4, 0, 4)  # opens the cached handle; the pickle must not carry it
    assert_same(pickle.loads(pickle.dumps(csrc)).read_window(0, 40, 0, 56), full(csrc))


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise RuntimeError("no RssFile")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_reading_a_whole_image_does_not_map_it_into_memory(tmp_path: Path) -> None:
    # Regression: windows were slices of a memmap, so every page read stayed mapped and
    # counted in the worker's resident memory: peak RSS grew with the image size.
    path = tmp_path / "big.fits"
    data = np.arange(2048 * 4096, dtype=np.float32).reshape(2048, 4096)  # 32 MiB
    fits.PrimaryHDU(data).writeto(path)
    (src,) = open_sources([str(path)])
    before = _rss_file_kib()
    for y0 in range(0, 2048, 256):
        win = src.read_window(y0, y0 + 256, 100, 3000)
        np.testing.assert_array_equal(win[0], data[y0:y0 + 256, 100:3000])
    grown_mib = (_rss_file_kib() - before) / 1024
    assert grown_mib < 8, f"file-backed RSS grew by {grown_mib:.0f} MiB"
    clear_cache()
