"""Science heads end to end: catalog fragments, merge, world coordinates, exports.

Real FITS files, ONNX models, a Dask cluster (1 worker, 1 thread) and Zarr stores.  The
segment model is per-pixel (:func:`level_model`), so its class mask is the thresholded
image whatever the tiling, and the segment catalog can be checked exactly.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import tracemalloc
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
import zarr.api.asynchronous
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from click.testing import CliRunner
from scipy import ndimage
from zarr.core.sync import sync

from cnnpipe.cli import cli
from cnnpipe.errors import InputError, StoreError
from cnnpipe.modelmeta import ModelMeta, read_model_meta
from cnnpipe.normalise import normalise
from cnnpipe.pipeline import catalogs
from cnnpipe.pipeline.catalogs import (
    build_catalog,
    merge_catalogs,
    read_catalog_columns,
    read_fragment,
)
from cnnpipe.pipeline.config import RunConfig
from cnnpipe.pipeline.exports import FORMATS, catalog_table, format_for, write_mask_fits
from cnnpipe.pipeline.heads import ClassifyHead, CratersHead, UnitView
from cnnpipe.pipeline.plan import Unit
from cnnpipe.pipeline.positions import read_catalog
from cnnpipe.pipeline.runner import prepare, run
from cnnpipe.pipeline.store import store_wcs
from cnnpipe.pipeline.worker import UnitTask, process_unit
from cnnpipe.testing.fitsfiles import tan_header
from cnnpipe.testing.onnx_models import classify_model, identity_model, level_model

SHAPE = (96, 112)
TILE = 32
LEVELS = (1.0, 5.0)
#: (y, x, amplitude, sigma): blobs across unit borders, at a corner, at the left edge,
#: next to masked pixels, and in unit interiors
BLOBS = [(32.2, 40.4, 12.0, 2.0), (50.0, 63.7, 10.0, 2.5), (64.3, 31.8, 8.0, 2.0),
         (20.0, 90.0, 9.0, 1.5), (75.0, 100.0, 7.0, 2.0), (48.0, 1.5, 10.0, 1.8),
         (85.0, 55.0, 6.0, 1.5)]
NAN_BOX = (slice(72, 75), slice(104, 107))
EDGE_BLOB, MASKED_BLOB = 5, 4
RINGS = [(32.3, 40.0, 12.0), (70.0, 64.6, 9.0), (20.0, 100.0, 6.0), (80.0, 20.0, 15.0)]
RING_SHAPE = (96, 128)
WINDOW = 24
PIXSCALE_KM = 0.1
MAS = 1.0 / 3.6e6


@dataclass(frozen=True)
class Runs:
    root: Path
    image: Path
    pixels: np.ndarray
    models: dict[str, Path]
    stores: dict[str, Path]
    catalogs: dict[str, Path]
    positions: np.ndarray  # (n, 2) x, y of the input catalog (0-based)
    inside: np.ndarray  # which input positions are on the image


def _sky() -> np.ndarray:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    img = rng.normal(0.0, 0.05, SHAPE)
    for y, x, a, s in BLOBS:
        img += a * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * s**2))
    img = img.astype(np.float32)
    img[NAN_BOX] = np.nan
    return img


def _rings() -> np.ndarray:
    yy, xx = np.mgrid[: RING_SHAPE[0], : RING_SHAPE[1]]
    heat = np.zeros(RING_SHAPE, np.float32)
    for y, x, r in RINGS:
        heat = np.maximum(heat, np.exp(-(np.hypot(yy - y, xx - x) - r) ** 2 / 2.0))
    return heat


def _moon_header() -> fits.Header:
    ny, nx = RING_SHAPE
    deg = float(np.rad2deg(PIXSCALE_KM / 1737.4))
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "SELN-CAR", "SELT-CAR"
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["CRPIX1"], h["CRPIX2"] = (nx + 1) / 2, (ny + 1) / 2
    h["CRVAL1"], h["CRVAL2"] = 23.5, 0.0
    h["CDELT1"], h["CDELT2"] = deg, deg
    h["A_RADIUS"] = 1737.4e3
    h["BODYRAD"] = 1737.4
    h["PIXSCALE"] = PIXSCALE_KM
    return h


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as lc:
        yield lc.scheduler_address


def _write_catalogs(root: Path, wcs: WCS) -> tuple[dict[str, Path], np.ndarray, np.ndarray]:
    """One set of positions as FITS (RA/DEC), CSV (x/y, 1-based) and Parquet (raj2000)."""
    xy = np.array([[40.4, 32.2], [63.7, 50.0], [90.0, 20.0], [100.0, 75.0], [1.5, 48.0],
                   [55.0, 85.0], [-30.0, 10.0], [56.0, 110.0], [111.4, 95.4]])
    inside = np.array([True] * 6 + [False, False, True])
    ids = np.arange(101, 101 + len(xy))
    ra, dec = wcs.all_pix2world(xy[:, 0], xy[:, 1], 0)
    paths = {"fits": root / "pos.fits", "csv": root / "pos.csv", "parquet": root / "pos.parquet"}
    Table({"ID": ids, "RA": ra * u.deg, "DEC": dec * u.deg}).write(paths["fits"])
    Table({"id": ids, "x": xy[:, 0] + 1, "y": xy[:, 1] + 1}).write(paths["csv"],
                                                                   format="ascii.csv")
    pq.write_table(pa.table({"source_id": ids, "RAJ2000": ra, "DEJ2000": dec}),
                   paths["parquet"])
    return paths, xy, inside


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, cluster: str) -> Runs:
    root = tmp_path_factory.mktemp("catalogs")
    img = _sky()
    header = tan_header(SHAPE, sip=True)
    image = root / "sky.fits"
    fits.PrimaryHDU(img, header=header).writeto(image)
    rings = root / "rings.fits"
    fits.PrimaryHDU(_rings(), header=_moon_header()).writeto(rings)
    models = {"levels": root / "levels.onnx", "morph": root / "morph.onnx",
              "rim": root / "rim.onnx", "never": root / "never.onnx",
              "wide": root / "wide.onnx"}
    level_model(models["levels"], levels=LEVELS)
    level_model(models["never"], levels=(100.0, 200.0), name="never")
    classify_model(models["morph"], patch=16)
    classify_model(models["wide"], patch=WINDOW, name="wide")
    identity_model(models["rim"], name="rim", r_max=20)
    cats, xy, inside = _write_catalogs(root, WCS(header))
    stores: dict[str, Path] = {}

    def go(name: str, **kw: object) -> None:
        cfg: dict[str, object] = {
            "inputs": (str(image),), "models": (str(models["levels"]), str(models["morph"])),
            "out": str(root / f"{name}.zarr"), "tile": TILE, "patch": 64, "batch": 4,
            "device": "cpu", "scheduler": cluster, "retries": 0,
        }
        cfg.update(kw)
        assert run(RunConfig.from_dict(cfg)).status == "complete"
        stores[name] = root / f"{name}.zarr"

    go("tiled")
    go("whole", tile=1024)
    for fmt, path in cats.items():
        go(f"cat_{fmt}", models=(str(models["morph"]),), catalog=str(path),
           catalog_origin=1 if fmt == "csv" else 0)
    # windows of 24 px: some cross the 40 px units' borders, the last column of windows
    # reaches beyond the image (x 96..120 of 112) and one of them holds the NaN box
    go("windows", models=(str(models["wide"]),), catalog="windows", tile=40)
    go("windows_whole", models=(str(models["wide"]),), catalog="windows", tile=1024)
    go("craters", inputs=(str(rings),), models=(str(models["rim"]),))
    off = root / "off.csv"
    off.write_text("x,y\n-50,-50\n300,20\n")
    go("empty", models=(str(models["never"]), str(models["morph"])), catalog=str(off),
       inputs=(str(rings),))
    return Runs(root=root, image=image, pixels=img, models=models, stores=stores,
                catalogs=cats, positions=xy, inside=inside)


def _cat(store: Path, model: str) -> dict[str, np.ndarray]:
    return read_catalog_columns(store, model)[1]


# -- segment ----------------------------------------------------------------------------


def _reference_segments(mask: np.ndarray) -> list[tuple]:
    near = ndimage.binary_dilation(mask == 255, structure=np.ones((3, 3), bool))
    rows = []
    for c in (1, 2):
        lab, n = ndimage.label(mask == c, structure=np.ones((3, 3), bool))
        for k, (sy, sx) in enumerate(ndimage.find_objects(lab), start=1):
            yy, xx = np.nonzero(lab == k)
            edge = sy.start == 0 or sx.start == 0 or sy.stop == SHAPE[0] or sx.stop == SHAPE[1]
            flags = int(near[yy, xx].any()) | (2 if edge else 0)
            rows.append((c, yy.size, xx.mean(), yy.mean(), sy.start, sy.stop - 1, sx.start,
                         sx.stop - 1, flags))
    return sorted(rows)


def _segment_rows(c: dict[str, np.ndarray]) -> list[tuple]:
    return sorted(zip(c["class_id"].tolist(), c["area_px"].tolist(), c["x"].tolist(),
                      c["y"].tolist(), c["bbox_ymin"].tolist(), c["bbox_ymax"].tolist(),
                      c["bbox_xmin"].tolist(), c["bbox_xmax"].tolist(), c["flags"].tolist()))


def test_segment_catalog_joins_units_exactly_like_whole_image_labelling(runs: Runs) -> None:
    tiled, whole = _cat(runs.stores["tiled"], "levels"), _cat(runs.stores["whole"], "levels")
    mask = zarr.open_group(str(runs.stores["tiled"]), mode="r")["images/sky/levels/mask"][...]
    expected = np.digitize(runs.pixels, LEVELS).astype(np.uint8)
    expected[~np.isfinite(runs.pixels)] = 255
    assert np.array_equal(mask, expected)
    ref = _reference_segments(mask)
    assert len(ref) >= 10
    assert _segment_rows(tiled) == ref
    assert _segment_rows(whole) == ref
    # same rows in the same order, tile 32 or one unit for the image
    for name in tiled:
        if name.startswith("p_"):
            np.testing.assert_allclose(tiled[name], whole[name], rtol=1e-12)
        else:
            assert np.array_equal(tiled[name], whole[name]), name
    # segments really straddle unit borders (up to 4 units at a corner)
    spans = (tiled["bbox_ymin"] // TILE != tiled["bbox_ymax"] // TILE) & (
        tiled["bbox_xmin"] // TILE != tiled["bbox_xmax"] // TILE)
    assert spans.sum() >= 2
    assert (tiled["class"] == np.array(["background", "level1", "level2"])[tiled["class_id"]]).all()
    # the mean probability of its own class is high in a per-pixel thresholding model
    own = np.choose(tiled["class_id"], [tiled["p_background"], tiled["p_level1"],
                                        tiled["p_level2"]])
    assert (own > 0.5).all()
    np.testing.assert_allclose(tiled["p_background"] + tiled["p_level1"] + tiled["p_level2"],
                               1.0, atol=1e-6)
    # area on the sky: the local pixel solid angle at the centroid (strong SIP terms here)
    w = WCS(fits.getheader(runs.image))
    x, y, h = tiled["x"], tiled["y"], 1e-3
    (r0, d0), (r1, d1), (r2, d2) = (w.all_pix2world(x + a, y + b, 0)
                                    for a, b in ((0, 0), (h, 0), (0, h)))
    cosd = np.cos(np.deg2rad(d0))
    sr = np.abs((r1 - r0) * cosd * (d2 - d0) - (r2 - r0) * cosd * (d1 - d0)) / h**2
    np.testing.assert_allclose(tiled["area_arcsec2"], tiled["area_px"] * sr * 3600**2,
                               rtol=1e-3)
    assert 0.02 < (tiled["area_arcsec2"] / tiled["area_px"]).min() < 0.0625 < \
        (tiled["area_arcsec2"] / tiled["area_px"]).max() < 0.2
    by_blob = {b: np.argmin(np.hypot(tiled["x"] - BLOBS[b][1], tiled["y"] - BLOBS[b][0])
                            + 1e3 * (tiled["class_id"] != 2)) for b in range(len(BLOBS))}
    assert tiled["flags"][by_blob[EDGE_BLOB]] & 2
    assert tiled["flags"][by_blob[0]] == 0


def test_world_columns_equal_astropy_all_pix2world_with_sip(runs: Runs) -> None:
    wcs = WCS(fits.getheader(runs.image))
    assert wcs.sip is not None
    for model in ("levels", "morph"):
        c = _cat(runs.stores["tiled"], model)
        ra, dec = wcs.all_pix2world(c["x"], c["y"], 0)
        assert len(ra) > 5
        assert np.abs((c["ra"] - ra) * np.cos(np.deg2rad(dec))).max() < MAS
        assert np.abs(c["dec"] - dec).max() < MAS
        assert set(c["image"]) == {"sky"}
        assert set(c["model"]) == {model}
    store = runs.stores["tiled"]
    g = zarr.open_group(str(store), mode="r")["catalogs/levels"]
    attrs = g.attrs.asdict()
    assert attrs["model"] == "levels"
    assert attrs["task"] == "segment"
    assert attrs["n_rows"] == g["x"].shape[0]
    assert [s["name"] for s in attrs["schema"]][:5] == ["image", "x", "y", "ra", "dec"]
    assert g["x"].attrs["unit"] == "pix"
    assert "0-based pixel, numpy / astropy pixel_to_world convention" in \
        g["x"].attrs["description"]
    assert g["ra"].attrs["unit"] == "deg"
    assert "2 = touches the image edge" in g["flags"].attrs["description"]
    meta = json.loads((store / "catalogs/levels/area_px/zarr.json").read_text())
    assert meta["dimension_names"] == ["row"]


def test_merge_in_slices_equals_merge_whole_and_shares_constant_strings(
    runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "tiled.zarr"
    shutil.copytree(runs.stores["tiled"], store)
    metas = [read_model_meta(runs.models[m]) for m in ("levels", "morph")]
    whole = {m.name: _cat(store, m.name) for m in metas}
    schema, columns = build_catalog(str(store), metas[0], ["sky"])
    assert len(columns["x"]) > 5
    # every row of a column refers to one string object (np.full made one copy a row)
    assert len({id(v) for v in columns["image"]}) == 1
    assert len({id(v) for v in columns["model"]}) == 1
    # slices of 3 rows for the world scales and string chunks: the same catalog
    monkeypatch.setattr(catalogs, "_SCALE_ROWS", 3)
    monkeypatch.setattr(catalogs, "_ROW_CHUNK", 4)
    merge_catalogs(str(store), metas, ["sky"])
    for m in metas:
        got = _cat(store, m.name)
        assert zarr.open_array(str(store), path=f"catalogs/{m.name}/image",
                               mode="r").chunks == (4,)
        for name, want in whole[m.name].items():
            if want.dtype == object:
                assert got[name].tolist() == want.tolist(), name
            else:
                np.testing.assert_array_equal(got[name], want, err_msg=name)


def test_string_columns_are_written_a_chunk_at_a_time(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    n = 200_000
    names = ("image", "model", "class")
    columns = []
    for name in names:
        values = np.empty(n, dtype=object)
        values.fill(f"a survey {name} key")
        columns.append((name, values, {"unit": ""}))
    columns.append(("x", np.arange(n, dtype=np.float64), {"unit": "pix"}))
    zarr.open_group(str(tmp_path / "c.zarr"), mode="w")
    monkeypatch.setattr(catalogs, "_ROW_CHUNK", 1 << 15)
    tracemalloc.start()
    try:
        async def write() -> None:
            g = await zarr.api.asynchronous.open_group(store=str(tmp_path / "c.zarr"),
                                                        mode="r+")
            await catalogs._write_columns(g, columns)

        sync(write())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a whole string column at once took ~200 bytes a row (a Python string for every
    # value); the three string columns' chunks at once ~100
    assert peak < 60 * n, f"{peak / n:.0f} bytes a row"
    for name in names:
        back = zarr.open_array(str(tmp_path / "c.zarr"), path=name, mode="r")
        assert back.chunks == (1 << 15,)
        assert set(np.asarray(back[...]).tolist()) == {f"a survey {name} key"}
        assert back.attrs["unit"] == ""
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "c.zarr"), path="x")[...],
                                  np.arange(n))


# -- classify ---------------------------------------------------------------------------


def _nearest(c: dict[str, np.ndarray], x: float, y: float) -> tuple[int, float]:
    d = np.hypot(c["x"] - x, c["y"] - y)
    return int(np.argmin(d)), float(d.min())


def test_classify_without_catalog_detects_each_source_once(runs: Runs) -> None:
    tiled, whole = _cat(runs.stores["tiled"], "morph"), _cat(runs.stores["whole"], "morph")
    assert len(tiled["x"]) == len(whole["x"]) == len(BLOBS)
    for y, x, _, _ in BLOBS:  # three of them straddle unit borders of the tiled run
        near = np.hypot(tiled["x"] - x, tiled["y"] - y) < 1.5
        assert near.sum() == 1
    np.testing.assert_allclose(tiled["x"], whole["x"], atol=0.05)
    np.testing.assert_allclose(tiled["y"], whole["y"], atol=0.05)
    assert tiled["id"].tolist() == list(range(len(BLOBS)))
    assert (np.diff(tiled["y"]) >= 0).all()
    probs = np.stack([tiled["p_smooth"], tiled["p_featured"]], axis=1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (tiled["class_id"] == probs.argmax(axis=1)).all()
    edge, _ = _nearest(tiled, BLOBS[EDGE_BLOB][1], BLOBS[EDGE_BLOB][0])
    masked, _ = _nearest(tiled, BLOBS[MASKED_BLOB][1], BLOBS[MASKED_BLOB][0])
    assert tiled["flags"][edge] == 2
    assert tiled["flags"][masked] == 1
    assert sorted(tiled["flags"].tolist()).count(0) == len(BLOBS) - 2


def test_classify_at_catalog_positions_from_fits_csv_and_parquet(runs: Runs) -> None:
    meta = read_model_meta(runs.models["morph"])
    sess = ort.InferenceSession(str(runs.models["morph"]), providers=["CPUExecutionProvider"])
    want_x, want_y = runs.positions[runs.inside].T
    first = None
    for fmt in ("fits", "csv", "parquet"):
        c = _cat(runs.stores[f"cat_{fmt}"], "morph")
        assert c["id"].tolist() == (101 + np.flatnonzero(runs.inside)).tolist(), fmt
        np.testing.assert_allclose(c["x"], want_x, atol=1e-6)
        np.testing.assert_allclose(c["y"], want_y, atol=1e-6)
        probs = np.stack([c["p_smooth"], c["p_featured"]], axis=1)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
        # flags: (1.5, 48) and (111.4, 95.4) reach beyond the image, (100, 75) masked
        assert c["flags"].tolist() == [0, 0, 0, 1, 2, 0, 2], fmt
        # an interior source: the model run by hand on its 16x16 cutout
        cut = runs.pixels[32 - 8:32 + 8, 40 - 8:40 + 8][None, None]
        p = sess.run(None, {"image": normalise(cut, meta.normalisation)})[0][0]
        np.testing.assert_allclose(probs[0], p, atol=1e-5)
        if first is None:
            first = probs
        np.testing.assert_allclose(probs, first, atol=1e-6)


def test_classify_windows_catalog_has_each_window_once_with_its_probabilities(
    runs: Runs,
) -> None:
    meta = read_model_meta(runs.models["wide"])
    sess = ort.InferenceSession(str(runs.models["wide"]), providers=["CPUExecutionProvider"])
    c = _cat(runs.stores["windows"], "wide")
    nwy, nwx = -(-SHAPE[0] // WINDOW), -(-SHAPE[1] // WINDOW)  # 4 x 5 windows
    ky, kx = np.divmod(np.arange(nwy * nwx), nwx)
    assert c["id"].tolist() == list(range(nwy * nwx))  # windows crossing units: once
    np.testing.assert_array_equal(c["x"], kx * WINDOW + (WINDOW - 1) / 2)
    np.testing.assert_array_equal(c["y"], ky * WINDOW + (WINDOW - 1) / 2)
    flags = np.where(kx == nwx - 1, 2, 0)  # beyond the image's right edge
    flags[(ky == 3) & (kx == 4)] |= 1  # the NaN box at y 72..74, x 104..106
    assert c["flags"].tolist() == flags.tolist()
    probs = np.stack([c["p_smooth"], c["p_featured"]], axis=1)
    for k in np.flatnonzero(kx < nwx - 1):  # whole windows: the model run by hand
        win = runs.pixels[ky[k] * WINDOW:(ky[k] + 1) * WINDOW, kx[k] * WINDOW:(kx[k] + 1) * WINDOW]
        if np.isfinite(win).all():
            p = sess.run(None, {"image": normalise(win[None, None], meta.normalisation)})[0][0]
            np.testing.assert_allclose(probs[k], p, atol=1e-6)
    assert (c["class_id"] == probs.argmax(axis=1)).all()
    ra, dec = WCS(fits.getheader(runs.image)).all_pix2world(c["x"], c["y"], 0)
    np.testing.assert_allclose(c["ra"], ra, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c["dec"], dec, rtol=0, atol=1e-12)
    whole = _cat(runs.stores["windows_whole"], "wide")  # one unit: the same catalog
    for name in c:
        if name.startswith("p_"):
            np.testing.assert_allclose(c[name], whole[name], atol=1e-6)
        else:
            assert np.array_equal(c[name], whole[name]), name
    # the class map painted by the same windows
    mask = zarr.open_group(str(runs.stores["windows"]), mode="r")["images/sky/wide/mask"][...]
    assert (mask[ky * WINDOW, kx * WINDOW] == c["class_id"]).all()
    # the mode is part of the store's configuration: sources are not resumed into it
    with pytest.raises(StoreError, match="another configuration"):
        run(RunConfig.from_dict({
            "inputs": (str(runs.image),), "models": (str(runs.models["wide"]),),
            "out": str(runs.stores["windows"]), "tile": 40, "patch": 64, "batch": 4,
            "device": "cpu", "retries": 0, "workers": 1, "threads": 1,
        }))


def _window_view(unit: Unit, pixels: np.ndarray, origin: tuple[int, int],
                 probs: dict[tuple[int, int], tuple[float, float]]) -> UnitView:
    """A unit's view with each window's probabilities painted over its part of the unit."""
    acc = np.full((2, *unit.shape), np.nan, np.float32)
    for (ky, kx), p in probs.items():
        ys = slice(max(ky * 4, unit.y0) - unit.y0, min(ky * 4 + 4, unit.y1) - unit.y0)
        xs = slice(max(kx * 4, unit.x0) - unit.x0, min(kx * 4 + 4, unit.x1) - unit.x0)
        acc[:, ys, xs] = np.asarray(p, np.float32)[:, None, None]
    return UnitView(unit=unit, image_shape=(10, 11), region=unit, acc=acc,
                    mask=np.zeros(unit.shape, np.uint8), pixels=pixels, origin=origin,
                    windows=True)


def test_windows_without_data_have_no_row_and_units_share_crossing_windows(
    tmp_path: Path,
) -> None:
    head = ClassifyHead(classify_model(tmp_path / "m.onnx", patch=4))
    # a 10 x 11 image of 4 x 4 windows (3 a row: the last reaches beyond x = 10); two
    # units of 6 x 6 / 6 x 5 pixels side by side, so the windows at x 4..7 cross them
    img = np.ones((1, 10, 12), np.float32)
    img[:, 0:4, 0:4] = np.nan  # window (0, 0) has no data at all
    img[0, 5, 9] = np.nan  # window (1, 2) has one pixel without data
    a = head.catalog(_window_view(Unit(0, 0, 0, 6, 0, 6), img[:, 0:8, 0:8], (0, 0), {
        (0, 0): (0.5, 0.5), (0, 1): (0.9, 0.1), (1, 0): (0.8, 0.2), (1, 1): (0.7, 0.3)}))
    b = head.catalog(_window_view(Unit(0, 1, 0, 6, 6, 11), img[:, 0:8, 4:12], (0, 4), {
        (0, 1): (0.6, 0.4), (0, 2): (0.2, 0.8), (1, 1): (0.7, 0.3), (1, 2): (0.1, 0.9)}))
    assert a["window"].tolist() == [1, 3, 4]  # (0, 0): no row
    assert b["window"].tolist() == [1, 2, 4, 5]
    assert b["flags"].tolist() == [0, 2, 0, 3]  # edge; edge + masked
    rows = head.merge({(0, 0): a, (0, 1): b}, image_shape=(10, 11))
    assert rows["id"].tolist() == [1, 2, 3, 4, 5]
    assert rows["x"].tolist() == [5.5, 9.5, 1.5, 5.5, 9.5]
    assert rows["y"].tolist() == [1.5, 1.5, 5.5, 5.5, 5.5]
    assert rows["flags"].tolist() == [0, 2, 0, 0, 3]
    # a window in both units' fragments: the first unit's row
    np.testing.assert_allclose(rows["p_smooth"], [0.9, 0.2, 0.8, 0.7, 0.1], atol=1e-7)
    assert rows["class"].tolist() == ["smooth", "featured", "smooth", "smooth", "featured"]


def test_input_catalog_columns_and_errors(runs: Runs, tmp_path: Path) -> None:
    cat = read_catalog(runs.catalogs["parquet"])
    assert cat.sky
    assert cat.ids[0] == 101
    cat = read_catalog(runs.catalogs["csv"], origin=1)
    assert not cat.sky
    np.testing.assert_allclose(cat.a, runs.positions[:, 0])
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=r"no position columns\. Expected ra/dec"):
        read_catalog(bad)
    with pytest.raises(InputError, match="unknown catalog format"):
        read_catalog(tmp_path / "pos.dat")


# -- craters -----------------------------------------------------------------------------


def test_craters_straddling_unit_borders_appear_once_with_lon_lat_and_km(runs: Runs) -> None:
    c = _cat(runs.stores["craters"], "rim")
    assert "ra" not in c
    assert len(c["x"]) == len(RINGS)
    for y, x, r in RINGS:
        k, d = _nearest(c, x, y)
        assert d < 0.3
        assert abs(c["radius_px"][k] - r) < 0.3
    np.testing.assert_allclose(c["diameter_km"], 2 * c["radius_px"] * PIXSCALE_KM)
    assert np.isnan(c["diameter_arcsec"]).all()
    lon, lat = WCS(_moon_header()).all_pix2world(c["x"], c["y"], 0)
    np.testing.assert_allclose(c["lon"], lon, atol=1e-9)
    np.testing.assert_allclose(c["lat"], lat, atol=1e-9)
    assert c["flags"].tolist() == [0] * len(RINGS)  # all rims inside, no masked pixels


def test_crater_merge_removes_duplicates_from_neighbouring_units() -> None:
    head = CratersHead(ModelMeta.from_dict({
        "name": "c", "task": "craters", "bands": ["r"], "input": {"name": "x"},
        "output": {"name": "y", "kind": "heatmap", "classes": ["rim"]},
    }))
    # one crater seen from both sides of a unit border, and another one
    a = {"x": np.array([31.6, 10.0]), "y": np.array([20.0, 10.0]),
         "radius_px": np.array([12.0, 5.0]), "score": np.array([0.9, 0.8]),
         "flags": np.array([0, 0], np.uint8)}
    b = {"x": np.array([32.2]), "y": np.array([20.1]), "radius_px": np.array([12.2]),
         "score": np.array([0.95]), "flags": np.array([1], np.uint8)}
    rows = head.merge({(0, 0): a, (0, 1): b}, image_shape=(64, 64))
    assert rows["x"].tolist() == [10.0, 32.2]
    assert rows["flags"].tolist() == [0, 1]
    assert np.isnan(rows["diameter_km"]).all()


# -- fragments, reruns, empty catalogs ------------------------------------------------------


def test_rerunning_a_unit_overwrites_its_fragment_and_merge_is_idempotent(
    runs: Runs, tmp_path: Path, cluster: str
) -> None:
    out = tmp_path / "again.zarr"
    shutil.copytree(runs.stores["tiled"], out)
    before = {m: _cat(out, m) for m in ("levels", "morph")}
    frag = read_fragment(str(out), "sky", "levels", 1, 1)
    cfg = RunConfig(inputs=(str(runs.image),), models=(str(runs.models["levels"]),
                    str(runs.models["morph"])), out=str(out), tile=TILE, patch=64,
                    device="cpu", scheduler=cluster)
    prep = prepare(cfg)
    task = UnitTask(store=str(out), source=prep.sources[0], unit=prep.plan.images[0].unit(1, 1),
                    models=prep.jobs, channels=prep.channels["sky"])
    process_unit(task)
    process_unit(task)
    again = read_fragment(str(out), "sky", "levels", 1, 1)
    assert sorted(again) == sorted(frag)
    for name in frag:
        assert np.array_equal(again[name], frag[name]), name
    merge_catalogs(str(out), [j.meta for j in prep.jobs], ["sky"])
    summary = run(cfg)  # complete already: no work, the merge runs again
    assert (summary.done, summary.skipped) == (0, 12)
    for m, cols in before.items():
        now = _cat(out, m)
        assert sorted(now) == sorted(cols)
        for name in cols:
            assert np.array_equal(now[name], cols[name]), (m, name)


def test_nothing_found_is_an_empty_catalog_with_the_full_schema(runs: Runs) -> None:
    store = runs.stores["empty"]
    for model, like in (("never", "levels"), ("morph", "morph")):
        schema, cols, attrs = read_catalog_columns(store, model)
        _, full, full_attrs = read_catalog_columns(runs.stores["tiled"], like)
        assert attrs["n_rows"] == 0
        assert all(v.shape == (0,) for v in cols.values())
        # the ring image has a body-fixed WCS: lon/lat instead of ra/dec
        assert [c.name for c in schema] == [
            {"ra": "lon", "dec": "lat"}.get(n, n) for n in full]
        g = zarr.open_group(str(store), mode="r")[f"catalogs/{model}"]
        assert g["x"].attrs["unit"] == "pix"
    table = catalog_table(store, "never")
    assert len(table) == 0
    assert table["area_arcsec2"].unit == u.arcsec**2


# -- exports ----------------------------------------------------------------------------


def test_catalog_export_round_trips_in_all_formats(runs: Runs, tmp_path: Path) -> None:
    store = runs.stores["tiled"]
    want = _cat(store, "levels")
    schema = read_catalog_columns(store, "levels")[0]
    runner = CliRunner()
    for fmt, name in (("parquet", "c.parquet"), ("fits", "c.fits"), ("votable", "c.xml"),
                      ("ecsv", "c.ecsv"), ("csv", "c.csv")):
        path = tmp_path / name
        res = runner.invoke(cli, ["catalog", str(store), "--model", "levels", "--format", fmt,
                                  "-o", str(path)])
        assert res.exit_code == 0, res.output
        assert f"{len(want['x'])} rows" in res.output
        if fmt == "parquet":
            t = pq.read_table(path)
            for c in schema:
                f = t.schema.field(c.name)
                assert f.metadata[b"unit"].decode() == c.unit
                assert f.metadata[b"description"].decode() == c.description
                got = t.column(c.name).to_numpy(zero_copy_only=False)
                assert np.array_equal(got.astype(want[c.name].dtype), want[c.name]), c.name
        with warnings.catch_warnings():  # astropy reads every export by its suffix alone
            warnings.simplefilter("error")
            t = Table.read(path)
        assert t.colnames == [c.name for c in schema]
        for c in schema:
            if c.unit and fmt != "csv":
                assert u.Unit(t[c.name].unit) == u.Unit(c.unit), (fmt, c.name)
            got = np.asarray(t[c.name])
            if c.dtype == "str":
                assert got.astype(str).tolist() == want[c.name].astype(str).tolist()
            else:
                np.testing.assert_array_equal(got, want[c.name], err_msg=f"{fmt} {c.name}")
        if fmt == "fits":
            assert fits.getheader(path, 1)["TCOMM2"].startswith("centroid column")
        elif fmt == "csv":  # plain: one line of names, then rows, as csv/pandas read it
            with open(path, newline="") as f:
                lines = list(csv.reader(f))
            assert lines[0] == [c.name for c in schema]
            assert len(lines) == 1 + len(want["x"])
        else:
            assert " ".join(t["x"].description.split()) == schema[1].description
    # a run that is not complete is refused, unless asked for
    half = tmp_path / "half.zarr"
    shutil.copytree(store, half)
    g = zarr.open_group(str(half), mode="r+")
    g.attrs["cnnpipe"] = {**g.attrs["cnnpipe"], "status": "running"}
    res = runner.invoke(cli, ["catalog", str(half), "--model", "levels", "-o",
                              str(tmp_path / "h.csv")])
    assert res.exit_code == 1
    assert "not complete (status running)" in res.output
    assert "--allow-incomplete" in res.output
    res = runner.invoke(cli, ["catalog", str(half), "--model", "levels", "-o",
                              str(tmp_path / "h.csv"), "--allow-incomplete"])
    assert res.exit_code == 0, res.output
    assert len(Table.read(tmp_path / "h.csv")) == len(want["x"])
    with pytest.raises(StoreError, match="has no model 'nope'"):
        catalog_table(store, "nope")


def test_catalog_command_offers_every_export_format() -> None:
    from cnnpipe.commands.catalog import command

    fmt = next(p for p in command.params if p.name == "fmt")
    assert list(fmt.type.choices) == list(FORMATS)  # type: ignore[attr-defined]
    assert format_for("c.ecsv", None) == "ecsv"
    assert format_for("c.CSV", None) == "csv"


def test_mask_fits_passes_fitsverify_and_keeps_the_wcs(runs: Runs, tmp_path: Path) -> None:
    store = runs.stores["tiled"]
    path = tmp_path / "mask.fits"
    res = CliRunner().invoke(cli, ["mask", str(store), "--model", "levels", "--fits", str(path)])
    assert res.exit_code == 0, res.output
    streamed = write_mask_fits(store, "levels", tmp_path / "strips.fits", strip_bytes=1000)
    mask = zarr.open_group(str(store), mode="r")["images/sky/levels/mask"][...]
    for p in (path, Path(streamed)):
        with fits.open(p, do_not_scale_image_data=True) as hdul:
            assert len(hdul) == 1
            h, data = hdul[0].header, hdul[0].data
            assert h["BITPIX"] == 8
            assert h["BLANK"] == 255
            assert h["CLASS2"] == "level2"
            assert data.dtype == np.uint8
            assert np.array_equal(data, mask)
    w_file, w_store = WCS(fits.getheader(path)), store_wcs(store, "sky")
    assert w_file.sip is not None
    gx, gy = np.meshgrid(np.linspace(0, SHAPE[1] - 1, 7), np.linspace(0, SHAPE[0] - 1, 7))
    np.testing.assert_allclose(w_file.all_pix2world(gx.ravel(), gy.ravel(), 0),
                               w_store.all_pix2world(gx.ravel(), gy.ravel(), 0),
                               rtol=0, atol=1e-12)
    if shutil.which("fitsverify") is None:
        pytest.skip("fitsverify not installed (Debian package fitsverify)")
    out = subprocess.run(["fitsverify", "-e", str(path)], capture_output=True, text=True)
    assert "0 error" in out.stdout, out.stdout
    assert out.returncode == 0, out.stdout


def test_fragment_is_one_array_and_round_trips(tmp_path: Path) -> None:
    from cnnpipe.pipeline.catalogs import write_fragment

    store = str(tmp_path / "f.zarr")
    zarr.open_group(store, mode="w")
    frag = {"x": np.array([1.5, 2.5]), "id": np.array([3, 4], np.int64),
            "name": np.array(["a", "bé"], dtype=object), "empty": np.zeros(0, np.uint8),
            "edge_top": np.arange(7, dtype=np.int64)}
    write_fragment(store, "k", "m", 0, 1, frag)
    node = zarr.open(store, path="images/k/m/fragments/0_1", mode="r")
    assert isinstance(node, zarr.Array)
    assert node.attrs["n_rows"] == 2
    folder = tmp_path / "f.zarr" / "images/k/m/fragments/0_1"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert len(files) == 2  # zarr.json + one chunk, whatever the number of columns
    back = read_fragment(store, "k", "m", 0, 1)
    assert sorted(back) == sorted(frag)
    for name, v in frag.items():
        assert back[name].dtype == v.dtype, name
        assert back[name].tolist() == v.tolist(), name
    write_fragment(store, "k", "m", 0, 1, {"x": np.array([9.0])})  # a retry replaces
    assert list(read_fragment(store, "k", "m", 0, 1)) == ["x"]


def test_fragment_of_the_group_layout_still_reads(tmp_path: Path) -> None:
    store = str(tmp_path / "old.zarr")
    g = zarr.open_group(store, mode="w").require_group("images/k/m/fragments/2_3")
    g.create_array("x", shape=(2,), dtype="float64")[:] = [1.0, 2.0]
    assert read_fragment(store, "k", "m", 2, 3)["x"].tolist() == [1.0, 2.0]
