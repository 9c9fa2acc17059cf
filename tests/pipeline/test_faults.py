"""Faults during a run: a worker killed mid-run, and an output file system that fills up.

Both must end in a store identical to a clean run: masks and probabilities bit for bit,
ledger all done, the same catalog rows (none twice).  The worker kill runs on real
``dask scheduler`` / ``dask worker`` processes; the full disk is a small tmpfs mounted by
the test (root only, skipped elsewhere).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from cnnpipe.cli import cli
from cnnpipe.pipeline.catalogs import read_catalog_columns
from cnnpipe.pipeline.config import RunConfig
from cnnpipe.pipeline.runner import RunSummary, run
from cnnpipe.pipeline.store import lock_path
from cnnpipe.testing import fitsfiles as ff
from cnnpipe.testing.onnx_models import craters_model, segment_model

MODELS = ("seg", "craters")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    image, _ = ff.write_float(root / "field.fits", shape=(160, 160), n_bad=20)
    seg, craters = root / "seg.onnx", root / "craters.onnx"
    segment_model(seg)
    craters_model(craters, r_max=6.0)
    return {"root": root, "image": image, "seg": seg, "craters": craters}


def _config(inputs: dict[str, Path], out: Path, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {
        "inputs": (str(inputs["image"]),), "models": (str(inputs["seg"]), str(inputs["craters"])),
        "out": str(out), "tile": 16, "patch": 24, "batch": 4, "device": "cpu", "retries": 1,
        "workers": 1, "threads": 1,
    }
    base.update(kw)
    return RunConfig.from_dict(base)


@pytest.fixture(scope="module")
def clean(inputs: dict[str, Path]) -> Path:
    """The reference: one uninterrupted run on the embedded cluster."""
    out = inputs["root"] / "clean.zarr"
    assert run(_config(inputs, out)).status == "complete"
    return out


def _ledgers(store: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(store), mode="r")
    return {m: np.asarray(g[f"images/field/{m}/tiles"][...]) for m in MODELS}


def assert_same_store(store: Path, reference: Path) -> None:
    """Arrays bit for bit, every unit done or blank, catalogs with the same rows."""
    a, b = zarr.open_group(str(store), mode="r"), zarr.open_group(str(reference), mode="r")
    assert a.attrs["cnnpipe"]["status"] == "complete"
    for model in MODELS:
        for name in ("mask", "prob", "tiles"):
            got = np.asarray(a[f"images/field/{model}/{name}"][...])
            want = np.asarray(b[f"images/field/{model}/{name}"][...])
            assert got.tobytes() == want.tobytes(), f"{model}/{name}"
        assert set(np.unique(_ledgers(store)[model])) <= {1, 2}
        _, got_cols, got_attrs = read_catalog_columns(store, model)
        _, want_cols, want_attrs = read_catalog_columns(reference, model)
        assert got_attrs["n_rows"] == want_attrs["n_rows"]
        assert model != "seg" or want_attrs["n_rows"] > 0, "a catalog worth comparing"
        assert sorted(got_cols) == sorted(want_cols)
        for column, values in want_cols.items():
            if values.dtype.kind == "f":
                np.testing.assert_array_equal(got_cols[column], values, err_msg=column)
            else:
                assert got_cols[column].tolist() == values.tolist(), column
        rows = list(zip(*(got_cols[c].tolist() for c in ("image", "x", "y"))))
        assert len(rows) == len(set(rows)), f"duplicate {model} catalog rows"
    assert a.attrs["cnnpipe"]["catalogs"] == b.attrs["cnnpipe"]["catalogs"]


# -- a worker process killed mid-run -----------------------------------------------------


def test_worker_killed_mid_run_gives_the_clean_store(
    inputs: dict[str, Path], clean: Path, real_dask: Callable[..., str], tmp_path: Path
) -> None:
    from distributed import Client

    address = real_dask(nworkers=2)
    out = tmp_path / "chaos.zarr"
    outcome: list[RunSummary | BaseException] = []

    def work() -> None:
        try:
            outcome.append(run(_config(inputs, out, scheduler=address, workers=None,
                                       threads=None)))
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=work)
    with Client(address, timeout="30s") as client:
        pids: dict[str, int] = client.run(os.getpid)
        thread.start()
        victim, done = None, 0
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.05)
            try:
                done = int(sum((v != 0).sum() for v in _ledgers(out).values()))
            except Exception:  # the store is not there yet
                continue
            busy = [w for w, keys in client.processing().items() if keys]
            if done >= 20 and busy:
                victim = busy[0]
        assert victim is not None, "no worker was busy mid-run"
        os.kill(pids[victim], signal.SIGKILL)
        thread.join(timeout=180)
        assert not thread.is_alive()
        after: dict[str, int] = client.run(os.getpid)
    assert pids[victim] not in after.values(), "the killed worker is gone"
    (summary,) = outcome
    assert isinstance(summary, RunSummary), summary
    assert summary.status == "complete"
    total = 2 * 10 * 10
    assert 20 <= done < total, "killed mid-run"
    assert_same_store(out, clean)
    assert not lock_path(out).exists()


# -- the output file system fills up -----------------------------------------------------


def _mount(point: Path, size: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                   check=True, capture_output=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (about a quarter of the store's ~1,060 files, one 4 KiB page each at
    least) mounted for this test (root only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    point = tmp_path / "small"
    point.mkdir()
    try:
        _mount(point, "1m")
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


def test_full_disk_fails_cleanly_and_the_rerun_completes(
    inputs: dict[str, Path], clean: Path, small_fs: Path
) -> None:
    out = small_fs / "field.zarr"
    args = ["run", str(inputs["image"]), "--model", str(inputs["seg"]), "--model",
            str(inputs["craters"]), "--out", str(out), "--tile", "16", "--patch", "24",
            "--batch", "4", "--device", "cpu", "--retries", "1", "--workers", "1",
            "--threads", "1"]
    first = CliRunner().invoke(cli, args)
    assert isinstance(first.exception, SystemExit), first.exception
    assert first.exit_code == 1, first.output
    assert "Traceback" not in first.output
    (line,) = first.stderr.strip().splitlines()
    assert line.startswith("cnnpipe: error: ")
    assert f"{out}: cannot write" in line
    assert "No space left on device" in line
    assert "run the same command again to resume" in line
    status = zarr.open_group(str(out), mode="r").attrs["cnnpipe"]["status"]
    assert status in ("running", "failed"), "never complete"
    ledgers = _ledgers(out)
    both_done = int(np.logical_and.reduce([v == 1 for v in ledgers.values()]).sum())
    assert 0 < both_done < 100, "the disk filled up mid-run"
    assert not lock_path(out).exists()

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "status complete" in second.stdout
    # only the unfinished units ran again
    assert f"units: 100 ({100 - both_done} done, 0 blank, {both_done} already done)" in (
        second.stdout)
    assert_same_store(out, clean)
