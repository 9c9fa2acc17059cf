"""The run store (cnnpipe.pipeline.store): layout, ledger, identity, lock, header cards."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.wcs import WCS

from cnnpipe.errors import LockedError, StoreError
from cnnpipe.pipeline.store import (
    RUN_SCHEMA,
    RunStore,
    StoreLock,
    UnitState,
    identity_diff,
    identity_hash,
    lock_path,
    mark_unit,
    store_header,
    store_wcs,
    write_unit,
)
from cnnpipe.pipeline.wcsio import header_cards

IDENTITY = {"schema": RUN_SCHEMA, "tile": 32, "models": {"seg": {"sha256": "ab"}}}


def _store(tmp_path: Path, **kw: object) -> RunStore:
    store, resumed = RunStore.prepare(tmp_path / "out.zarr", identity=IDENTITY, overwrite=False)
    assert not resumed
    store.update_run(schema=RUN_SCHEMA, status="running", identity=IDENTITY,
                     identity_sha256=identity_hash(IDENTITY))
    store.create_image(
        "img", shape=(70, 50), tile=32, bands=("r",), header=(("OBJECT", "M31", "target"),),
        has_wcs=False,
        models=[("seg", 3, ("class", "y", "x"), ("a", "b", "c")),
                ("craters", 1, ("y", "x"), ("rim",))],
    )
    return store


def _zarr_json(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())


def test_layout_dimension_names_chunks_and_fill(tmp_path: Path) -> None:
    _store(tmp_path)
    base = tmp_path / "out.zarr" / "images" / "img"
    mask = _zarr_json(base / "seg" / "mask")
    prob = _zarr_json(base / "seg" / "prob")
    heat = _zarr_json(base / "craters" / "prob")
    tiles = _zarr_json(base / "seg" / "tiles")
    assert mask["dimension_names"] == ["y", "x"]
    assert mask["data_type"] == "uint8"
    assert mask["fill_value"] == 255
    assert mask["chunk_grid"]["configuration"]["chunk_shape"] == [32, 32]
    assert prob["dimension_names"] == ["class", "y", "x"]
    assert prob["shape"] == [3, 70, 50]
    assert prob["data_type"] == "float16"
    assert prob["chunk_grid"]["configuration"]["chunk_shape"] == [3, 32, 32]
    assert prob["fill_value"] == "NaN"
    assert heat["dimension_names"] == ["y", "x"]
    assert heat["shape"] == [70, 50]
    assert tiles["dimension_names"] == ["unit_y", "unit_x"]
    assert tiles["shape"] == [3, 2]
    assert tiles["fill_value"] == 0
    assert tiles["chunk_grid"]["configuration"]["chunk_shape"] == [1, 1]
    attrs = _zarr_json(base)["attributes"]
    assert attrs["shape"] == [70, 50]
    assert attrs["bands"] == ["r"]
    assert attrs["header"] == [["OBJECT", "M31", "target"]]


def test_unit_writes_touch_only_their_chunks_and_ledger(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = store.path
    mask = np.arange(32 * 18, dtype=np.uint8).reshape(32, 18)
    prob = np.full((3, 32, 18), 0.25, np.float16)
    write_unit(path, "img", "seg", y0=32, x0=32, mask=mask, prob=prob)
    mark_unit(path, "img", "seg", 1, 1, UnitState.DONE)
    mark_unit(path, "img", "seg", 2, 0, UnitState.BLANK)
    chunks = tmp_path / "out.zarr" / "images" / "img" / "seg" / "mask" / "c"
    assert sorted(str(p.relative_to(chunks)) for p in chunks.rglob("*") if p.is_file()) == [
        os.path.join("1", "1")
    ]
    m = zarr.open_array(path, path="images/img/seg/mask", mode="r")[...]
    assert (m[32:64, 32:50] == mask).all()
    assert (m[:32] == 255).all()
    assert (m[64:] == 255).all()
    p = zarr.open_array(path, path="images/img/seg/prob", mode="r")[...]
    assert np.isnan(p[:, :32]).all()
    assert (p[:, 32:64, 32:] == np.float16(0.25)).all()
    ledger = store.ledger("img", "seg")
    assert ledger.tolist() == [[0, 0], [0, 1], [2, 0]]
    assert store.ledger("img", "craters").tolist() == [[0, 0], [0, 0], [0, 0]]


def test_same_identity_resumes_other_identity_is_refused_overwrite_replaces(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    mark_unit(store.path, "img", "seg", 0, 0, UnitState.DONE)
    again, resumed = RunStore.prepare(store.path, identity=IDENTITY, overwrite=False)
    assert resumed
    again.create_image("img", shape=(70, 50), tile=32, bands=("r",), header=(), has_wcs=False,
                       models=[("seg", 3, ("class", "y", "x"), ("a", "b", "c"))])
    assert again.ledger("img", "seg")[0, 0] == UnitState.DONE, "resume keeps the ledger"
    other = {**IDENTITY, "tile": 64}
    with pytest.raises(StoreError, match=r"another configuration \(tile: store 32, now 64\)"
                       r".*--overwrite"):
        RunStore.prepare(store.path, identity=other, overwrite=False)
    fresh, resumed = RunStore.prepare(store.path, identity=other, overwrite=True)
    assert not resumed
    assert not (Path(store.path) / "images").exists()


def test_foreign_paths_are_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    (plain / "data.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a Zarr store"):
        RunStore.prepare(plain, identity=IDENTITY, overwrite=False)
    with pytest.raises(StoreError, match="refusing to delete"):
        RunStore.prepare(plain, identity=IDENTITY, overwrite=True)
    assert (plain / "data.txt").read_text() == "mine"
    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w").attrs["x"] = 1
    with pytest.raises(StoreError, match="not a cnnpipe run store"):
        RunStore.prepare(other, identity=IDENTITY, overwrite=False)


def test_identity_diff_and_hash_are_canonical() -> None:
    a = {"tile": 32, "models": {"seg": {"sha256": "ab"}}}
    b = {"models": {"seg": {"sha256": "cd"}}, "tile": 32}
    assert identity_hash(a) == identity_hash(dict(reversed(list(a.items()))))
    assert identity_hash(a) != identity_hash(b)
    assert identity_diff(a, b) == ["models.seg.sha256: store 'ab', now 'cd'"]


def test_lock_is_exclusive_and_names_its_owner(tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    first = StoreLock(out, run_id="run1")
    first.acquire()
    owner = json.loads(lock_path(out).read_text())
    assert owner["pid"] == os.getpid()
    assert owner["host"] == socket.gethostname()
    assert owner["run_id"] == "run1"
    assert owner["started"]
    with pytest.raises(LockedError, match=rf"locked by run run1 \(pid {os.getpid()} on host "
                       rf"{socket.gethostname()}"):
        StoreLock(out, run_id="run2").acquire()
    first.release()
    assert not lock_path(out).exists()
    with StoreLock(out, run_id="run3"):
        assert json.loads(lock_path(out).read_text())["run_id"] == "run3"
    assert not lock_path(out).exists()


def test_stale_lock_is_taken_over_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "out.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(out).write_text(json.dumps({
        "pid": dead.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00",
        "run_id": "old",
    }))
    with caplog.at_level(logging.WARNING, logger="cnnpipe.pipeline.store"):
        lock = StoreLock(out, run_id="new")
        lock.acquire()
    assert "stale lock of run old" in caplog.text
    assert json.loads(lock_path(out).read_text())["run_id"] == "new"
    lock.release()


def test_lock_of_another_host_is_respected(tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    lock_path(out).write_text(json.dumps({
        "pid": 1, "host": "elsewhere.example", "started": "t", "run_id": "far",
    }))
    with pytest.raises(LockedError, match=r"pid 1 on host elsewhere\.example.*delete "):
        StoreLock(out, run_id="me").acquire()
    assert json.loads(lock_path(out).read_text())["run_id"] == "far"


def test_header_cards_round_trip_the_wcs(tmp_path: Path) -> None:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.crpix = [40.5, 30.5]
    w.wcs.cd = [[-7e-5, 1e-6], [2e-6, 7e-5]]
    header = w.to_header()
    header["OBJECT"] = "COSMOS"
    header["EXPTIME"] = 30.0
    cards, _ = header_cards(header)
    store, _ = RunStore.prepare(tmp_path / "s.zarr", identity=IDENTITY, overwrite=False)
    store.create_image("img", shape=(60, 80), tile=32, bands=("r",), header=cards,
                       has_wcs=True, models=[])
    back = store_wcs(store.path, "img")
    assert back is not None
    pix = np.array([[0.0, 0.0], [79.0, 59.0], [12.3, 45.6]])
    np.testing.assert_allclose(back.wcs_pix2world(pix, 0), w.wcs_pix2world(pix, 0),
                               rtol=0, atol=1e-10)
    assert list(back.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
    h = store_header(store.path, "img")
    assert h["OBJECT"] == "COSMOS"
    assert h["EXPTIME"] == 30.0


def test_unit_writes_store_every_chunk_without_inspecting_it(tmp_path: Path) -> None:
    """A written unit's chunks are stored as given, even when they equal the fill value.

    Workers only write units that have data, so zarr's check for all-fill chunks (a
    NaN-aware comparison of the whole float16 chunk on zarr's one I/O thread) is pure
    cost; write_unit turns it off.  zarr.open_array ignores ``config`` for an existing
    array (zarr-python #2931), which left the check on; this catches that.
    """
    store = _store(tmp_path)
    mask = np.full((32, 32), 255, np.uint8)
    prob = np.full((3, 32, 32), np.nan, np.float16)
    write_unit(store.path, "img", "seg", y0=0, x0=0, mask=mask, prob=prob)
    base = tmp_path / "out.zarr" / "images" / "img" / "seg"
    assert (base / "mask" / "c" / "0" / "0").is_file()
    assert (base / "prob" / "c" / "0" / "0" / "0").is_file()


@pytest.mark.parametrize("leftover", ["empty dir", "empty group", "cut-short zarr.json",
                                      "zarr's temporary file"])
def test_a_store_left_unstarted_by_a_killed_run_is_created_anew(
    tmp_path: Path, leftover: str
) -> None:
    # a run killed between creating the directory / group and writing its run attributes
    out = tmp_path / "out.zarr"
    if leftover == "empty dir":
        out.mkdir()
    elif leftover == "empty group":
        zarr.open_group(str(out), mode="w-")
    elif leftover == "cut-short zarr.json":
        out.mkdir()
        (out / "zarr.json").write_text('{"zarr_format": 3, "node_ty')
    else:  # killed inside zarr's atomic write: its temporary file, no zarr.json
        out.mkdir()
        (out / f"zarr.{'0' * 32}.partial").write_text('{"zarr_format": 3')
    store, resumed = RunStore.prepare(out, identity=IDENTITY, overwrite=False)
    assert not resumed
    assert json.loads((out / "zarr.json").read_text())["node_type"] == "group"
    store.update_run(schema="cnnpipe.run/1", identity=IDENTITY)
    assert store.run_attrs()["identity"] == IDENTITY
