"""End-to-end runs with real components: FITS files, ONNX models, Dask clusters, Zarr.

One embedded-cluster run is the reference; the other runs go to a shared LocalCluster
through ``scheduler=`` (the ``--scheduler`` code path) or to real ``dask scheduler`` /
``dask worker`` processes, and must give byte-identical arrays.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import zarr
from astropy.io import fits
from astropy.wcs import WCS
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cnnpipe.errors import InputError, LockedError, StoreError, WorkerError
from cnnpipe.modelmeta import METADATA_KEY, ModelMeta, read_model_meta
from cnnpipe.normalise import normalise
from cnnpipe.pipeline.config import RunConfig, StoreMode
from cnnpipe.pipeline.heads import ClassifyHead, CratersHead, SegmentHead, argmax_classes
from cnnpipe.pipeline.plan import (
    MAX_AUTO_BATCH,
    PIXELS_PER_CALL,
    ImagePlan,
    infer_region,
    make_plan,
    read_window,
)
from cnnpipe.pipeline.runner import dry_run, prepare, run
from cnnpipe.pipeline.sources import open_sources
from cnnpipe.pipeline.store import lock_path, store_wcs
from cnnpipe.pipeline.worker import Lanes, infer_unit, worker_lanes
from cnnpipe.testing.onnx_models import (
    classify_model,
    craters_model,
    identity_model,
    segment_model,
)

SHAPE = (150, 170)  # even: the pooled segment model needs multiples of 2 for the reference
TILE, PATCH = 64, 40
MODELS = ("seg", "craters", "morph")


@dataclass(frozen=True)
class Data:
    root: Path
    image: Path
    pixels: np.ndarray
    models: dict[str, Path]

    def config(self, out: str | Path, **kw: object) -> RunConfig:
        base: dict[str, object] = {
            "inputs": (str(self.image),), "models": tuple(str(p) for p in self.models.values()),
            "out": str(out), "tile": TILE, "patch": PATCH, "batch": 3, "workers": 1,
            "threads": 1, "device": "cpu", "retries": 1,
        }
        base.update(kw)
        return RunConfig.from_dict(base)


def _wcs() -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.crpix = [85.5, 75.5]
    w.wcs.cdelt = [-5e-5, 5e-5]
    return w


def _sky(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    img = rng.normal(0.0, 0.3, shape)
    for _ in range(12):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        img += rng.uniform(1, 5) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / rng.uniform(4, 40))
    return img.astype(np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    root = tmp_path_factory.mktemp("run")
    img = _sky(SHAPE, 0)
    img[:TILE, :TILE] = np.nan  # unit (0, 0) has no data at all -> blank
    img[100, 100:103] = np.nan  # a few masked pixels inside a unit
    path = root / "survey.fits"
    fits.PrimaryHDU(img, header=_wcs().to_header()).writeto(path)
    models = {
        "seg": root / "seg.onnx", "craters": root / "craters.onnx", "morph": root / "morph.onnx",
    }
    segment_model(models["seg"])
    craters_model(models["craters"])
    classify_model(models["morph"], patch=16)
    return Data(root=root, image=path, pixels=img, models=models)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as lc:
        yield lc.scheduler_address


@pytest.fixture(scope="module")
def reference(data: Data) -> Path:
    """A complete run on the embedded cluster (no scheduler address)."""
    out = data.root / "reference.zarr"
    summary = run(data.config(out))
    assert summary.status == "complete"
    return out


def _arrays(path: Path) -> dict[str, bytes]:
    g = zarr.open_group(str(path), mode="r")
    out = {}
    for name in MODELS:
        for arr in ("mask", "prob", "tiles"):
            a = g[f"images/survey/{name}/{arr}"]
            out[f"{name}/{arr}"] = np.asarray(a[...]).tobytes()
    return out


def _attrs(path: Path) -> dict:
    return zarr.open_group(str(path), mode="r").attrs["cnnpipe"]


# -- the embedded run ------------------------------------------------------------------


def test_embedded_run_is_complete_with_blank_unit_and_metadata(data: Data, reference: Path) -> None:
    attrs = _attrs(reference)
    assert attrs["schema"] == "cnnpipe.run/1"
    assert attrs["status"] == "complete"
    assert attrs["finished"] >= attrs["started"]
    assert set(attrs["models"]) == set(MODELS)
    assert attrs["models"]["seg"]["metadata"]["task"] == "segment"
    assert len(attrs["models"]["seg"]["sha256"]) == 64
    assert attrs["inputs"]["survey"]["shape"] == list(SHAPE)
    assert attrs["inputs"]["survey"]["paths"] == [str(data.image)]
    assert attrs["config"]["tile"] == TILE
    assert attrs["summary"]["blank"] == 1
    assert attrs["summary"]["done"] == 8
    g = zarr.open_group(str(reference), mode="r")
    for name in MODELS:
        ledger = g[f"images/survey/{name}/tiles"][...]
        assert ledger.tolist() == [[2, 1, 1], [1, 1, 1], [1, 1, 1]]
        mask = g[f"images/survey/{name}/mask"][...]
        assert (mask[:TILE, :TILE] == 255).all()
        for arr in ("mask", "prob"):  # the fast codec on the write path of every unit
            (codec,) = g[f"images/survey/{name}/{arr}"].compressors
            assert (type(codec).__name__, codec.cname.value, codec.shuffle.value) == (
                "BloscCodec", "lz4", "shuffle")
        assert (mask[100, 100:103] == 255).all()
        assert (mask[TILE:, TILE:] != 255).sum() == (SHAPE[0] - TILE) * (SHAPE[1] - TILE) - 3
        assert not (reference / f"images/survey/{name}/mask/c/0/0").exists(), "blank: no chunk"
    prob = g["images/survey/seg/prob"][...]
    assert prob.dtype == np.float16
    assert prob.shape == (3, *SHAPE)
    assert np.isnan(prob[:, 100, 100:103]).all()
    sums = prob.astype(np.float32).sum(axis=0)
    have = np.isfinite(data.pixels)
    np.testing.assert_allclose(sums[have], 1.0, atol=3e-3)
    assert np.isnan(sums[~have]).all()
    heat = g["images/survey/craters/prob"][...]
    assert heat.shape == SHAPE
    # the mask is thresholded in float32, before the float16 cast of the heat map
    agree = (heat > 0.5) == (g["images/survey/craters/mask"][...] == 1)
    assert agree[have & (np.abs(heat.astype(np.float32) - 0.5) > 1e-3)].all()
    assert 0 < (heat[have] > 0.5).mean() < 1
    # dimension names straight from the Zarr v3 metadata (no xarray)
    meta = json.loads((reference / "images/survey/seg/prob/zarr.json").read_text())
    assert meta["dimension_names"] == ["class", "y", "x"]
    meta = json.loads((reference / "images/survey/craters/prob/zarr.json").read_text())
    assert meta["dimension_names"] == ["y", "x"]


def test_wcs_round_trips_through_the_store(data: Data, reference: Path) -> None:
    src = open_sources([str(data.image)])[0]
    w_src, w_store = src.wcs(), store_wcs(reference, "survey")
    assert w_src is not None
    assert w_store is not None
    pix = np.array([[0.0, 0.0], [169.0, 149.0], [33.3, 77.7]])
    np.testing.assert_allclose(w_store.wcs_pix2world(pix, 0), w_src.wcs_pix2world(pix, 0),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(w_store.wcs_pix2world(pix, 0), _wcs().wcs_pix2world(pix, 0),
                               rtol=0, atol=1e-12)


def _whole_image_seg(data: Data) -> tuple[np.ndarray, ModelMeta]:
    meta = read_model_meta(data.models["seg"])
    sess = ort.InferenceSession(str(data.models["seg"]), providers=["CPUExecutionProvider"])
    x = normalise(data.pixels[None, None], meta.normalisation)
    return sess.run(None, {"image": x})[0][0], meta


def test_tiled_output_equals_whole_image_output_in_the_interior(
    data: Data, reference: Path
) -> None:
    whole, meta = _whole_image_seg(data)  # (3, y, x) float32
    g = zarr.open_group(str(reference), mode="r")
    stored = g["images/survey/seg/prob"][...]
    mask = g["images/survey/seg/mask"][...]
    halo = meta.input.halo
    interior = np.zeros(SHAPE, bool)
    interior[halo:-halo, halo:-halo] = True
    interior &= np.isfinite(data.pixels)
    interior[:TILE, :TILE] = False  # the blank unit
    diff = np.abs(stored.astype(np.float32) - whole.astype(np.float16).astype(np.float32))
    assert diff[:, interior].max() <= 1e-3
    top2 = np.sort(whole, axis=0)[-2:]
    clear = interior & (top2[1] - top2[0] > 1e-5)
    assert clear.sum() > 0.9 * interior.sum()
    assert (mask[clear] == np.argmax(whole, axis=0)[clear]).all()
    # the tiles really are stitched from several shifted patches per unit
    assert prepare(data.config(reference)).plan.models[0].core == (22, 22)


def test_float32_unit_stitching_equals_whole_image_within_1e4(data: Data) -> None:
    whole, meta = _whole_image_seg(data)
    src = open_sources([str(data.image)])[0]
    plan = make_plan([("survey", SHAPE, 1)], [meta], tile=TILE, patch=PATCH, batch=4)
    g = plan.models[0]
    sess = ort.InferenceSession(str(data.models["seg"]), providers=["CPUExecutionProvider"])
    stitched = np.full(whole.shape, np.nan, np.float32)
    total = 0
    for unit in plan.images[0].units():
        ry0, ry1, rx0, rx1 = read_window(unit, [g])
        pix = src.read_window(ry0, ry1, rx0, rx1)
        acc, n = infer_unit(pix, (ry0, rx0), unit, meta, g,
                            lambda x: sess.run(None, {"image": x})[0], batch=4)
        total += n
        stitched[:, unit.y0:unit.y1, unit.x0:unit.x1] = acc
    assert total == plan.n_patches == (3 + 3 + 1) * (3 + 3 + 2)  # last units: 22, 42 px
    h = meta.input.halo
    np.testing.assert_allclose(stitched[:, h:-h, h:-h], whole[:, h:-h, h:-h], rtol=0, atol=1e-4)
    # at the image edges tiles see reflected pixels, the whole image zero padding
    assert np.isfinite(stitched).all()


def test_lanes_run_one_units_batches_side_by_side_with_the_same_result(data: Data) -> None:
    meta = read_model_meta(data.models["seg"])
    src = open_sources([str(data.image)])[0]
    plan = make_plan([("survey", SHAPE, 1)], [meta], tile=TILE, patch=PATCH, batch=4)
    g = plan.models[0]
    unit = next(u for u in plan.images[0].units() if u.uy == 1 and u.ux == 1)
    ry0, ry1, rx0, rx1 = read_window(unit, [g])
    pix = src.read_window(ry0, ry1, rx0, rx1)
    sess = ort.InferenceSession(str(data.models["seg"]), providers=["CPUExecutionProvider"])
    both = threading.Barrier(2, timeout=3)
    calls: list[int] = []

    def run_pair(x: np.ndarray) -> np.ndarray:
        calls.append(1)
        if len(calls) <= 2:
            both.wait()  # the unit's first two calls must be in flight together
        return np.asarray(sess.run(None, {"image": x})[0])

    alone, n = infer_unit(pix, (ry0, rx0), unit, meta, g,
                          lambda x: np.asarray(sess.run(None, {"image": x})[0]), batch=4)
    assert n > 8  # several batches of 4
    shared, _ = infer_unit(pix, (ry0, rx0), unit, meta, g, run_pair, batch=4, lanes=Lanes(2))
    assert np.array_equal(shared, alone)
    calls.clear()
    both.reset()
    with pytest.raises(threading.BrokenBarrierError):  # one after another: never two at once
        infer_unit(pix, (ry0, rx0), unit, meta, g, run_pair, batch=4)


def test_lanes_keep_order_and_pass_a_failure_on() -> None:
    lanes = Lanes(3)
    xs = [np.full(2, i, np.float32) for i in range(20)]
    assert [int(y[0]) for y in lanes.map(lambda x: x * 2, xs)] == list(range(0, 40, 2))

    def fails_at_5(x: np.ndarray) -> np.ndarray:
        if x[0] == 5:
            raise ValueError("bad batch")
        return x

    with pytest.raises(ValueError, match="bad batch"):
        list(lanes.map(fails_at_5, xs))
    assert len(list(lanes.map(lambda x: x, xs))) == 20  # still usable


def test_lanes_are_as_wide_as_the_workers_threads() -> None:
    from distributed import Client, LocalCluster

    def width() -> int | None:
        lanes = worker_lanes()
        return None if lanes is None else lanes.width

    assert width() is None  # not in a Dask task
    for threads, want in ((1, None), (2, 2), (3, 3)):
        with LocalCluster(n_workers=1, threads_per_worker=threads, processes=False,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            assert client.submit(width, pure=False).result() == want


def test_a_run_feeds_every_unit_to_lanes_as_wide_as_its_threads(
    data: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cnnpipe.pipeline import worker

    widths: list[int | None] = []
    real = worker.infer_unit

    def spy(*args: Any, **kw: Any) -> Any:
        widths.append(None if kw["lanes"] is None else kw["lanes"].width)
        return real(*args, **kw)

    monkeypatch.setattr(worker, "infer_unit", spy)  # one worker: in this process
    run(data.config(tmp_path / "two.zarr", workers=1, threads=2, ort_threads=1))
    assert widths
    assert set(widths) == {2}
    widths.clear()
    run(data.config(tmp_path / "one.zarr", workers=1, threads=1, ort_threads=1))
    assert set(widths) == {None}


def test_classify_windows_are_painted_with_their_class(data: Data, reference: Path) -> None:
    meta = read_model_meta(data.models["morph"])
    sess = ort.InferenceSession(str(data.models["morph"]), providers=["CPUExecutionProvider"])
    g = zarr.open_group(str(reference), mode="r")
    mask = g["images/survey/morph/mask"][...]
    prob = g["images/survey/morph/prob"][...]
    for wy, wx in [(4, 4), (5, 7), (8, 9), (6, 3)]:  # windows in units with data
        win = data.pixels[wy * 16:(wy + 1) * 16, wx * 16:(wx + 1) * 16]
        p = sess.run(None, {"image": normalise(win[None, None], meta.normalisation)})[0][0]
        block = mask[wy * 16:(wy + 1) * 16, wx * 16:(wx + 1) * 16]
        good = np.isfinite(win)
        assert (block[good] == np.argmax(p)).all()
        np.testing.assert_allclose(
            prob[:, wy * 16 + 3, wx * 16 + 5].astype(np.float32), p, atol=1e-3
        )


# -- other clusters give the same bytes ------------------------------------------------


def test_shared_cluster_via_scheduler_address_gives_identical_store(
    data: Data, reference: Path, cluster: str, tmp_path: Path
) -> None:
    out = tmp_path / "shared.zarr"
    summary = run(data.config(out, scheduler=cluster, batch=5))  # batch: output-neutral
    assert summary.status == "complete"
    assert summary.done == 8
    assert summary.blank == 1
    assert _arrays(out) == _arrays(reference)


@pytest.fixture
def dask_processes(real_dask: Callable[..., str]) -> str:
    """A real ``dask scheduler`` and ``dask worker`` on 127.0.0.1 (tests/pipeline/conftest)."""
    return real_dask(nworkers=1)


def test_real_dask_scheduler_and_worker_give_identical_store(
    data: Data, reference: Path, dask_processes: str, tmp_path: Path
) -> None:
    out = tmp_path / "remote.zarr"
    summary = run(data.config(out, scheduler=dask_processes, workers=None, threads=None))
    assert summary.status == "complete"
    assert _arrays(out) == _arrays(reference)


# -- resume, refusal, overwrite, locks ---------------------------------------------------


def test_interrupted_run_resumes_only_pending_units_to_an_identical_store(
    data: Data, reference: Path, cluster: str, tmp_path: Path
) -> None:
    out = tmp_path / "resume.zarr"
    first = run(data.config(out, scheduler=cluster), stop_after=2)
    assert first.status == "running"
    assert first.pending > 0
    ledger = zarr.open_group(str(out), mode="r")["images/survey/seg/tiles"][...]
    done_before = int((ledger != 0).sum())
    assert done_before == first.done + first.blank >= 2
    assert _attrs(out)["status"] == "running"
    second = run(data.config(out, scheduler=cluster))
    assert second.status == "complete"
    assert second.skipped == done_before
    assert second.done + second.blank == 9 - done_before
    assert _attrs(out)["status"] == "complete"
    assert _arrays(out) == _arrays(reference)
    third = run(data.config(out, scheduler=cluster))  # nothing left: no cluster work
    assert (third.done, third.blank, third.skipped) == (0, 0, 9)


def test_store_of_another_configuration_is_refused_unless_overwrite(
    data: Data, reference: Path, cluster: str, tmp_path: Path
) -> None:
    out = tmp_path / "other.zarr"
    shutil.copytree(reference, out)
    before = _arrays(out)
    with pytest.raises(StoreError, match=r"another configuration \(.*tile: store 64, now 32.*"
                       r"--overwrite"):
        run(data.config(out, scheduler=cluster, tile=32))
    assert _arrays(out) == before
    assert _attrs(out)["status"] == "complete"
    # only the patch differs (e.g. a store begun before --patch auto was the default):
    # the error says which --patch resumes it, and that one does
    with pytest.raises(StoreError, match=rf"geometry\.seg\.core: .*It was made with --patch "
                       rf"{PATCH}: rerun with --patch {PATCH} to resume it\. Use --overwrite"):
        run(data.config(out, scheduler=cluster, patch="auto"))
    assert run(data.config(out, scheduler=cluster, patch=PATCH)).skipped == 9
    summary = run(data.config(out, scheduler=cluster, tile=32, mode=StoreMode.OVERWRITE))
    assert summary.status == "complete"
    assert summary.units == 5 * 6
    g = zarr.open_group(str(out), mode="r")
    assert g["images/survey/seg/tiles"].shape == (5, 6)
    assert _attrs(out)["config"]["tile"] == 32


def test_locked_store_is_refused_naming_the_owner(data: Data, tmp_path: Path) -> None:
    out = tmp_path / "locked.zarr"
    lock_path(out).write_text(json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(), "started": "now", "run_id": "busy",
    }))
    with pytest.raises(LockedError, match=rf"pid {os.getpid()} on host {socket.gethostname()}"):
        run(data.config(out))
    assert not out.exists()


def test_stale_lock_is_taken_over(
    data: Data, cluster: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "stale.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(out).write_text(json.dumps({
        "pid": dead.pid, "host": socket.gethostname(), "started": "then", "run_id": "gone",
    }))
    with caplog.at_level(logging.WARNING):
        summary = run(data.config(out, scheduler=cluster, models=(str(data.models["craters"]),)))
    assert summary.status == "complete"
    assert "stale lock of run gone" in caplog.text
    assert not lock_path(out).exists()


def test_a_run_waits_on_its_own_client_not_dasks_default_one(
    data: Data, cluster: str, tmp_path: Path
) -> None:
    """Runs side by side in one process (``cnnpipe nightly``) each have a client; the one
    made last is Dask's default.  Waiting on results through the default client's event
    loop hung a run forever once the other run had closed its client."""
    import threading

    from distributed import Client

    from cnnpipe.pipeline.execute import run_units
    from cnnpipe.pipeline.runner import _tasks
    from cnnpipe.pipeline.store import RunStore
    from cnnpipe.pipeline.worker import SessionSpec

    cfg = data.config(tmp_path / "own.zarr", scheduler=cluster,
                      models=(str(data.models["craters"]),))
    run(cfg, stop_after=1)  # a store and a ledger to run the remaining units against
    prep = prepare(cfg)
    store, _ = RunStore.prepare(cfg.out, identity=prep.identity, overwrite=False)
    pending = {s.key: store.ledger(s.key, prep.jobs[0].name)[None] == 0 for s in prep.sources}
    tasks = list(_tasks(prep, store, pending, SessionSpec()))
    assert tasks
    results: list[Any] = []
    with Client(cluster) as mine:
        other = Client(cluster)  # Dask's default client from now on

        def lazily() -> Any:  # run_units takes its first task after it began waiting
            other.close()  # the other run ends first
            yield from tasks

        worker = threading.Thread(target=lambda: results.extend(
            run_units(mine, lazily(), run_id="own", retries=0)), daemon=True)
        worker.start()
        worker.join(timeout=60)
    assert not worker.is_alive(), "run_units waited on another client's event loop"
    assert len(results) == len(tasks)


# -- failures and checks before work -----------------------------------------------------


def test_unit_that_keeps_failing_fails_the_run(data: Data, cluster: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    segment_model(bad, pooled=False, name="bad")
    model = onnx.load(str(bad))
    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    meta["output"]["classes"] = ["a", "b", "c", "d"]  # the graph gives 3
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    onnx.save(model, str(bad))
    out = tmp_path / "failed.zarr"
    with pytest.raises(WorkerError, match=r"image survey unit \(\d, \d\) \[y .*\] failed after 2 "
                       r"attempt\(s\): Model 'bad': expected output of shape \(n, 4, y, x\)"):
        run(data.config(out, scheduler=cluster, models=(str(bad),)))
    attrs = _attrs(out)
    assert attrs["status"] == "failed"
    assert "failed after 2 attempt(s)" in attrs["error"]
    assert not lock_path(out).exists()


def test_model_bands_are_checked_before_any_work(data: Data, tmp_path: Path) -> None:
    two = tmp_path / "two.onnx"
    segment_model(two, bands=("g", "r"), name="two")
    out = tmp_path / "never.zarr"
    with pytest.raises(InputError, match=r"model two \(.*two\.onnx\) needs bands g,r; got one "
                       r"single-band image"):
        run(data.config(out, models=(str(two),)))
    assert not out.exists()
    assert not lock_path(out).exists()


def test_bands_select_channels_by_name_and_identity_stitches_back(
    data: Data, cluster: str, tmp_path: Path
) -> None:
    g_img = _sky((70, 90), 1)
    r_img = _sky((70, 90), 2)
    r_img[3, 4] = np.nan
    for name, img in (("g", g_img), ("r", r_img)):
        fits.PrimaryHDU(img, header=_wcs().to_header()).writeto(tmp_path / f"field_{name}.fits")
    id_r, id_g = tmp_path / "id_r.onnx", tmp_path / "id_g.onnx"
    identity_model(id_r, band="r", name="id_r")
    identity_model(id_g, band="g", name="id_g")
    two = tmp_path / "two.onnx"
    segment_model(two, bands=("g", "r"), name="two")
    out = tmp_path / "bands.zarr"
    cfg = RunConfig(
        band_files=(("r", str(tmp_path / "field_r.fits")), ("g", str(tmp_path / "field_g.fits"))),
        models=(str(id_r), str(two), str(id_g)), out=str(out), tile=32, patch=24,
        scheduler=cluster, device="cpu",
    )
    summary = run(cfg)
    assert summary.status == "complete"
    assert summary.units == 3 * 3
    g = zarr.open_group(str(out), mode="r")
    key = next(iter(g["images"].group_keys()))
    got_r = g[f"images/{key}/id_r/prob"][...]
    got_g = g[f"images/{key}/id_g/prob"][...]
    assert np.array_equal(got_r, r_img.astype(np.float16), equal_nan=True)
    assert np.array_equal(got_g, g_img.astype(np.float16), equal_nan=True)
    assert g[f"images/{key}/id_r/mask"][3, 4] == 255
    assert g[f"images/{key}/id_g/mask"][3, 4] != 255
    assert g[f"images/{key}"].attrs["bands"] == ["r", "g"]


def test_dry_run_describes_without_touching_anything(data: Data, tmp_path: Path) -> None:
    out = tmp_path / "dry.zarr"
    lines = dry_run(data.config(out))
    text = "\n".join(lines)
    assert "work units: 9 (tile 64x64)" in text
    assert "tasks: 9" in text
    assert "expected memory per worker:" in text
    assert "model seg: conv patches 34x34, halo 6, core 22x22, context 1, batch 3" in text
    assert not out.exists()
    # auto (the default): per model, the patch that covers a 64 unit with the fewest
    # pixels (one 76x76 patch: 64 + 2 x halo 6) and a batch filling PIXELS_PER_CALL
    auto = "\n".join(dry_run(data.config(out, patch="auto", batch="auto")))
    assert f"model seg: conv patches 76x76, halo 6, core 64x64, context 1, batch " \
        f"{PIXELS_PER_CALL // 76**2}" in auto
    assert "model morph: window patches 16x16, halo 0, core 16x16, context 24, batch " \
        f"{MAX_AUTO_BATCH}" in auto


def test_workers_run_each_model_in_its_own_batch_size(
    data: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cnnpipe.pipeline import worker

    seen: dict[str, set[int]] = {}
    real = worker.infer_unit

    def spy(*args: Any, **kw: Any) -> Any:
        seen.setdefault(args[3].name, set()).add(kw["batch"])
        return real(*args, **kw)

    monkeypatch.setattr(worker, "infer_unit", spy)  # one worker: in this process
    cfg = data.config(tmp_path / "auto.zarr", batch="auto")
    assert cfg.batch is None
    run(cfg)
    want = {j.name: {j.geometry.batch} for j in prepare(cfg).jobs}
    # patch 34 is given, batch auto: PIXELS_PER_CALL // 34² = 1133 patches, capped
    assert want["seg"] == {MAX_AUTO_BATCH}
    assert seen == want
    seen.clear()
    run(data.config(tmp_path / "five.zarr", batch=5))
    assert seen == {"seg": {5}, "craters": {5}, "morph": {5}}


# -- pure pieces: stitching and heads ----------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.integers(5, 90), st.integers(5, 90), st.sampled_from([1, 2, 4]), st.integers(0, 3),
    st.integers(1, 20), st.integers(1, 5),
)
# a 1-pixel last unit whose own patch would start before the unit's read window (the
# test ran the unit instead of its inference region; CI's hypothesis run found it)
@example(5, 33, 4, 0, 20, 1)
def test_identity_stitches_back_to_its_input(
    ny: int, nx: int, multiple: int, halo_units: int, extra: int, batch: int
) -> None:
    meta = ModelMeta.from_dict({
        "name": "ident", "task": "craters", "bands": ["r"],
        "input": {"name": "image", "patch": None, "multiple": multiple,
                  "halo": halo_units * multiple},
        "output": {"name": "heat", "kind": "heatmap", "classes": ["v"]},
    })
    img = np.random.default_rng(ny * nx).normal(size=(1, ny, nx)).astype(np.float32)
    tile = 8 * multiple
    plan = make_plan([("k", (ny, nx), 1)], [meta], tile=tile,
                     patch=2 * halo_units * multiple + multiple * extra, batch=batch)
    g = plan.models[0]
    out = np.full((ny, nx), np.nan, np.float32)
    for unit in ImagePlan(key="k", shape=(ny, nx), tile=tile).units():
        ry0, ry1, rx0, rx1 = read_window(unit, [g])
        iy = np.clip(np.arange(ry0, ry1), 0, ny - 1)
        ix = np.clip(np.arange(rx0, rx1), 0, nx - 1)
        pix = img[:, iy][:, :, ix]
        # as the worker does: a craters model runs over its inference region (the unit
        # ± its context), the unit is cut out of that
        region = infer_region(g, unit)
        acc, _ = infer_unit(pix, (ry0, rx0), region, meta, g, lambda x: x, batch=batch,
                            fixed_batch=batch > 2)
        out[unit.y0:unit.y1, unit.x0:unit.x1] = acc[0, unit.y0 - region.y0:unit.y1 - region.y0,
                                                    unit.x0 - region.x0:unit.x1 - region.x0]
    assert np.array_equal(out, img[0])


def _meta(task: str, kind: str, classes: list[str], **kw: object) -> ModelMeta:
    d: dict[str, object] = {
        "name": "h", "task": task, "bands": ["r"],
        "input": {"name": "x", "patch": [4, 4] if task == "classify" else None},
        "output": {"name": "y", "kind": kind, "classes": classes},
    }
    d.update(kw)
    return ModelMeta.from_dict(d)


def test_heads_activate_and_finish() -> None:
    seg = SegmentHead(_meta("segment", "logits", ["a", "b"]))
    p = seg.activate(np.array([[[[0.0]], [[np.log(3.0)]]]], np.float32))
    np.testing.assert_allclose(p[0, :, 0, 0], [0.25, 0.75], rtol=1e-6)
    acc = np.array([[[0.2, 0.9]], [[0.8, 0.1]]], np.float32)
    mask, prob = seg.finish(acc, np.array([[False, True]]))
    assert mask.tolist() == [[1, 255]]
    assert prob.dtype == np.float16
    assert np.isnan(prob[:, 0, 1]).all()
    assert prob[1, 0, 0] == np.float16(0.8)

    cr = CratersHead(_meta("craters", "logits", ["rim"], postprocess={"threshold": 0.7}))
    heat = cr.activate(np.array([[[[0.0, 10.0]]]], np.float32))
    np.testing.assert_allclose(heat[0, 0, 0], [0.5, 1.0], atol=1e-4)
    mask, prob = cr.finish(np.array([[[0.69, 0.71, 0.9]]], np.float32),
                           np.array([[False, False, True]]))
    assert mask.tolist() == [[0, 1, 255]]
    assert prob.shape == (1, 3)
    assert np.isnan(prob[0, 2])

    cl = ClassifyHead(_meta("classify", "probabilities", ["x", "y", "z"]))
    probs = cl.activate(np.array([[0.1, 0.7, 0.2]], np.float32))
    acc = cl.new((3, 5))
    cl.place(acc, probs[0], src=(slice(None), slice(None)), dst=(slice(0, 3), slice(1, 4)))
    mask, _ = cl.finish(acc, ~np.isfinite(acc[0]))
    assert mask.tolist() == [[255, 1, 1, 1, 255]] * 3


def test_gpu_requested_without_cuda_is_refused_before_the_store(
    data: Data, tmp_path: Path
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    from cnnpipe.errors import ConfigError

    out = tmp_path / "gpu.zarr"
    with pytest.raises(ConfigError, match=r"--device gpu, but onnxruntime here has no "
                       r"CUDAExecutionProvider .* use --device cpu"):
        run(replace(data.config(out), device="gpu"))  # type: ignore[arg-type]
    assert not out.exists()


def test_config_round_trips_and_validates() -> None:
    cfg = RunConfig(inputs=("a.fits",), models=("m.onnx",), out="o.zarr",
                    band_files=(("g", "g.fits"),), hdu="2", tile=1024, device="gpu",
                    tensorrt=True, mode="overwrite")
    assert cfg.hdu == 2
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    from cnnpipe.errors import ConfigError

    with pytest.raises(ConfigError, match="--tensorrt with --device gpu or auto"):
        RunConfig(inputs=("a",), models=("m",), out="o", device="cpu", tensorrt=True)
    with pytest.raises(ConfigError, match=r"Unknown run settings \['tiles'\]"):
        RunConfig.from_dict({"inputs": ["a"], "models": ["m"], "out": "o", "tiles": 3})
    with pytest.raises(ConfigError, match="--batch to be a positive integer or 'auto'"):
        RunConfig(inputs=("a",), models=("m",), out="o", batch=0)
    with pytest.raises(ConfigError, match=r"--patch to be a positive integer or 'auto'\. Got"):
        RunConfig(inputs=("a",), models=("m",), out="o", patch="big")  # type: ignore[arg-type]
    # auto (None) is the default; "auto" from TOML/JSON means the same and is written back
    auto = RunConfig(inputs=("a",), models=("m",), out="o", patch="auto")  # type: ignore[arg-type]
    assert (auto.patch, auto.batch) == (None, None)
    assert auto == RunConfig(inputs=("a",), models=("m",), out="o")
    assert (auto.to_dict()["patch"], auto.to_dict()["batch"]) == ("auto", "auto")
    assert RunConfig.from_dict(auto.to_dict()) == auto
    fixed = RunConfig(inputs=("a",), models=("m",), out="o", patch=512, batch=4)
    assert RunConfig.from_dict(fixed.to_dict()) == fixed


# -- device selection (no GPU here: a stand-in client answers what workers would) --------


class _FakeClient:
    def __init__(self, providers: list[str], resources: dict[str, float], probe: str = "ok"):
        self.providers, self.resources, self.probe = providers, resources, probe

    def scheduler_info(self, n_workers: int = 5) -> dict:
        return {"workers": {"tcp://w1": {"resources": self.resources}}}

    def run(self, fn: object, *args: object) -> dict:
        if getattr(fn, "__name__", "") == "_available":
            return {"tcp://w1": self.providers}
        if self.probe != "ok":
            raise WorkerError(self.probe)
        return {"tcp://w1": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def test_device_selection_never_falls_back_silently(caplog: pytest.LogCaptureFixture) -> None:
    from cnnpipe.errors import ConfigError
    from cnnpipe.pipeline.execute import cluster_plan, device_spec

    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    base = RunConfig(inputs=("a",), models=("m",), out="o", scheduler="tcp://s:1")
    plan = cluster_plan(base)
    models = [("m.onnx", "sha")]

    def spec(client: _FakeClient, **kw: object) -> tuple:
        return device_spec(client, replace(base, **kw), plan, models)  # type: ignore[arg-type]

    s, res = spec(_FakeClient(["CPUExecutionProvider"], {}), device="auto")
    assert s.device == "cpu"
    assert res is None
    s, res = spec(_FakeClient(cuda, {"GPU": 1}), device="auto")
    assert s.device == "gpu"
    assert res == {"GPU": 1}
    s, res = spec(_FakeClient(cuda, {"GPU": 1}), device="cpu")
    assert s.device == "cpu"
    assert res is None
    with pytest.raises(ConfigError, match=r"worker tcp://w1 has no CUDAExecutionProvider"):
        spec(_FakeClient(["CPUExecutionProvider"], {"GPU": 1}), device="gpu")
    with pytest.raises(ConfigError, match=r"declares no GPU resource.*--resources GPU=1"):
        spec(_FakeClient(cuda, {}), device="gpu")
    with pytest.raises(ConfigError, match=r"--tensorrt, but .* no TensorrtExecutionProvider"):
        spec(_FakeClient(cuda, {"GPU": 1}), device="gpu", tensorrt=True)
    with pytest.raises(WorkerError, match="CUDA is not active"):
        spec(_FakeClient(cuda, {"GPU": 1}, probe="CUDA is not active"), device="gpu")
    with caplog.at_level(logging.WARNING):
        s, res = spec(_FakeClient(cuda, {"GPU": 1}, probe="CUDA is not active"), device="auto")
    assert s.device == "cpu"
    assert res is None
    assert "running on CPU" in caplog.text


def test_cluster_sizing_keeps_threads_within_cores() -> None:
    from cnnpipe.pipeline.execute import cluster_plan

    cfg = RunConfig(inputs=("a",), models=("m",), out="o")
    for cores in (1, 2, 8, 16, 64):
        cp = cluster_plan(cfg, cores=cores)
        assert cp.workers * cp.threads * cp.ort_threads <= cores
    layout = {c: (p.workers, p.threads, p.ort_threads)
              for c in (1, 2, 16) for p in [cluster_plan(cfg, cores=c)]}
    assert layout == {1: (1, 1, 1), 2: (1, 2, 1), 16: (4, 2, 2)}  # two units in flight
    cp = cluster_plan(replace(cfg, workers=3, threads=2), cores=16)
    assert (cp.workers, cp.threads, cp.ort_threads) == (3, 2, 2)
    assert cluster_plan(cfg, cores=16, gpu=True).workers == 1


def test_fewer_units_than_threads_get_wider_inference_streams() -> None:
    """A frame-sized image (or the rest of a resumed run) must not leave cores idle."""
    from cnnpipe.pipeline.execute import cluster_plan

    cfg = RunConfig(inputs=("a",), models=("m",), out="o")

    def layout(c: RunConfig = cfg, **kw: Any) -> tuple[int, int, int]:
        p = cluster_plan(c, **kw)
        return p.workers, p.threads, p.ort_threads

    assert layout(cores=2, units=1) == (1, 1, 2)
    assert layout(cores=16, units=1) == (1, 1, 16)
    assert layout(cores=16, units=3) == (1, 3, 5)
    assert layout(cores=16, units=8) == (4, 2, 2)  # enough units: the default layout
    assert layout(cores=16, units=500) == (4, 2, 2)
    assert layout(cores=2, units=0) == (1, 2, 1)
    # the user's layout and GPU runs are left as they are
    assert layout(replace(cfg, threads=2), cores=2, units=1) == (1, 2, 1)
    assert layout(replace(cfg, ort_threads=1), cores=2, units=1) == (1, 2, 1)
    assert layout(cores=16, units=1, gpu=True) == (1, 1, 16)
    assert cluster_plan(cfg, cores=16, units=1, gpu=True).gpu


def test_run_sizes_the_embedded_cluster_by_the_units_left(
    data: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cnnpipe.pipeline.runner as runner_mod

    seen: list[int | None] = []
    real = runner_mod.cluster_plan

    def spy(config: RunConfig, **kw: Any) -> Any:
        if "gpu" in kw:  # the run's own call, not dry_run's
            seen.append(kw.get("units"))
        return real(config, **kw)

    monkeypatch.setattr(runner_mod, "cluster_plan", spy)
    out = tmp_path / "o.zarr"
    cfg = data.config(out, models=(str(data.models["seg"]),), workers=None, threads=None)
    n_units = prepare(cfg).plan.n_units
    first = run(cfg, stop_after=2)
    run(cfg)
    assert 0 < first.pending < n_units
    assert seen == [n_units, first.pending]
    lines = dry_run(replace(cfg, tile=256))  # one unit
    assert any("embedded cluster: 1 worker(s) x 1 thread(s)" in ln for ln in lines), lines


@pytest.mark.gpu
def test_gpu_run_matches_cpu_run(data: Data, reference: Path, tmp_path: Path) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA onnxruntime here")
    out = tmp_path / "gpu.zarr"
    summary = run(replace(data.config(out), device="gpu"))  # type: ignore[arg-type]
    assert summary.status == "complete"
    a = zarr.open_group(str(out), mode="r")["images/survey/seg/prob"][...].astype(np.float32)
    b = zarr.open_group(str(reference), mode="r")["images/survey/seg/prob"][...]
    np.testing.assert_allclose(a, b.astype(np.float32), atol=2e-3)


# -- progress -----------------------------------------------------------------------------


def test_progress_reporters(caplog: pytest.LogCaptureFixture) -> None:
    import io

    from rich.console import Console

    from cnnpipe.pipeline.progress import LogReporter, RichReporter
    from cnnpipe.pipeline.store import UnitState
    from cnnpipe.pipeline.worker import UnitResult

    r = UnitResult(key="k", uy=0, ux=0, state=UnitState.DONE, models=("m",), pixels=2_000_000)
    with caplog.at_level(logging.INFO, logger="cnnpipe.run"):
        rep = LogReporter(every_s=3600, every_units=2)
        rep.start(total=5, skipped=1)
        for _ in range(3):
            rep.advance(r)
        rep.close()
    lines = [m for m in caplog.messages if m.startswith("units")]
    assert "work units: 4 to run, 1 already done" in caplog.messages
    assert lines[0].startswith("units 2/4,")
    assert lines[1].startswith("units 3/4,")
    assert "Mpix/s, ETA" in lines[0]
    buf = io.StringIO()
    bar = RichReporter(Console(file=buf, force_terminal=True, width=100))
    bar.start(total=4, skipped=0)
    for _ in range(4):
        bar.advance(r)
    bar.close()
    assert "4/4" in buf.getvalue()
    assert "Mpix/s" in buf.getvalue()


def test_replaced_input_of_the_same_shape_is_not_resumed(
    data: Data, cluster: str, tmp_path: Path
) -> None:
    # Regression: the identity held the path and shape only, so a rerun over a new image
    # written to the same path "resumed" and kept the old image's results as complete.
    image = tmp_path / "night.fits"
    shutil.copy(data.image, image)
    out = tmp_path / "night.zarr"
    models = (str(data.models["craters"]),)
    assert run(data.config(out, scheduler=cluster, inputs=(str(image),),
                           models=models)).status == "complete"
    fits.PrimaryHDU(_sky(SHAPE, 1), header=_wcs().to_header()).writeto(image, overwrite=True)
    with pytest.raises(StoreError, match=r"another configuration.*fingerprints"):
        run(data.config(out, scheduler=cluster, inputs=(str(image),), models=models))


def test_every_fits_flavour_gives_the_same_store_as_plain_float32(
    cluster: str, tmp_path: Path
) -> None:
    """Plain, MEF, Rice/GZIP/HCOMPRESS/PLIO tile compression, .fits.gz, BSCALE/BZERO and
    BLANK inputs holding the same pixels give byte-identical outputs in one run."""
    import gzip

    rng = np.random.default_rng(3)
    counts = rng.integers(1, 3000, size=SHAPE).astype(np.int16)
    blank_at = (37, 41)
    header = _wcs().to_header()
    plain = counts.astype(np.float32)
    plain[blank_at] = np.nan
    files = {"plain": tmp_path / "plain.fits"}
    fits.PrimaryHDU(plain, header=header).writeto(files["plain"])
    with_blank = counts.copy()
    with_blank[blank_at] = -32768
    scaled = fits.PrimaryHDU(with_blank, header=header)
    scaled.header["BLANK"] = -32768
    files["blank"] = tmp_path / "blank.fits"
    scaled.writeto(files["blank"])
    # uint16 on disk: int16 with BZERO=32768, and a BSCALE that keeps values exact
    u = (counts.astype(np.int32) * 2 - 32768 + 100).astype(np.int16)
    u[blank_at] = 7
    bz = fits.PrimaryHDU(u, header=header, do_not_scale_image_data=True)
    bz.header["BSCALE"] = 0.5
    bz.header["BZERO"] = 16384 - 50
    bz.header["BLANK"] = 7
    files["bscale"] = tmp_path / "bscale.fits"
    bz.writeto(files["bscale"])
    plio = counts.copy()
    plio[blank_at] = 0  # PLIO takes 0..2**24 only; BLANK=0 is astropy's blind spot too
    for ctype in ("RICE_1", "GZIP_2", "HCOMPRESS_1", "PLIO_1"):
        name = ctype.split("_")[0].lower()
        files[name] = tmp_path / f"{name}.fits"
        data = plio if ctype == "PLIO_1" else with_blank
        comp = fits.CompImageHDU(data, header=header, compression_type=ctype,
                                 tile_shape=(32, 32))
        comp.header["BLANK"] = 0 if ctype == "PLIO_1" else -32768
        fits.HDUList([fits.PrimaryHDU(), comp]).writeto(files[name])
    files["mef"] = tmp_path / "mef.fits"
    fits.HDUList([fits.PrimaryHDU(),
                  fits.ImageHDU(plain, header=header, name="SCI")]).writeto(files["mef"])
    files["gz"] = tmp_path / "gz.fits.gz"
    with gzip.open(files["gz"], "wb") as f:
        fits.PrimaryHDU(plain, header=header).writeto(f)
    model = tmp_path / "craters.onnx"
    craters_model(model)
    out = tmp_path / "flavours.zarr"
    config = RunConfig.from_dict({
        "inputs": tuple(str(p) for p in files.values()), "models": (str(model),),
        "out": str(out), "tile": TILE, "patch": PATCH, "batch": 3, "workers": 1,
        "threads": 1, "device": "cpu", "scheduler": cluster,
    })
    assert run(config).status == "complete"
    root = zarr.open_group(str(out), mode="r")
    keys = sorted(root["images"].group_keys())
    assert len(keys) == len(files)
    ref_prob = np.asarray(root["images/plain/craters/prob"][...])
    ref_mask = np.asarray(root["images/plain/craters/mask"][...])
    assert ref_mask[blank_at] == 255
    assert np.isfinite(ref_prob).sum() == ref_prob.size - 1
    for key in keys:
        prob = np.asarray(root[f"images/{key}/craters/prob"][...])
        mask = np.asarray(root[f"images/{key}/craters/mask"][...])
        np.testing.assert_array_equal(mask, ref_mask, err_msg=key)
        np.testing.assert_array_equal(prob, ref_prob, err_msg=key)


@pytest.mark.parametrize("classes", [1, 2, 5, 12])
def test_argmax_classes_equals_numpy_argmax_with_ties_and_nan(classes: int) -> None:
    rng = np.random.default_rng(classes)
    # coarse values: many ties, which must go to the first class as np.argmax does
    acc = rng.integers(0, 4, (classes, 64, 48)).astype(np.float32)
    acc[rng.integers(classes), rng.random((64, 48)) < 0.05] = np.nan
    acc[:, 0, 0] = np.nan
    want = np.argmax(acc, axis=0).astype(np.uint8)
    got = argmax_classes(acc)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_a_slow_class_softmax_is_named_with_the_fix(
    data: Data, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A segmenter ending in Softmax(axis=1) gets a warning naming the re-export; the
    same model written by `cnnpipe export --from-onnx` (softmax rewritten) and the
    classifier (softmax over its last axis) do not."""
    from cnnpipe.export.annotate import annotate_onnx
    from cnnpipe.export.request import ExportRequest

    seg = str(data.models["seg"])
    with caplog.at_level(logging.WARNING, logger="cnnpipe.run"):
        prepare(data.config(tmp_path / "a.zarr", models=(seg, str(data.models["morph"]))))
    slow = [m for m in caplog.messages if "Softmax over the class axis" in m]
    assert len(slow) == 1
    assert slow[0].startswith(f"{seg}: ")
    assert f"--from-onnx {seg} --out NEW.onnx" in slow[0]
    fast = tmp_path / "fast.onnx"
    annotate_onnx(ExportRequest(from_onnx=data.models["seg"], out=fast, task="segment",
                                bands=("r",), classes=("background", "star", "galaxy")),
                  log=lambda _: None)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cnnpipe.run"):
        prepare(data.config(tmp_path / "b.zarr", models=(str(fast),)))
    assert not [m for m in caplog.messages if "Softmax" in m]
