"""``cnnpipe run`` on the command line (CliRunner; real FITS, ONNX, Dask and Zarr)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.io import fits
from astropy.wcs import WCS
from click.testing import CliRunner

from cnnpipe.cli import cli
from cnnpipe.pipeline.config import RunConfig
from cnnpipe.pipeline.execute import cluster_plan
from cnnpipe.pipeline.store import lock_path
from cnnpipe.testing.onnx_models import craters_model, segment_model


def _wcs_header() -> fits.Header:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [10.0, -5.0]
    w.wcs.crpix = [48.5, 40.5]
    w.wcs.cdelt = [-1e-4, 1e-4]
    return w.to_header()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    img = np.random.default_rng(3).normal(size=(80, 96)).astype(np.float32)
    fits.PrimaryHDU(img, header=_wcs_header()).writeto(root / "sky.fits")
    segment_model(root / "seg.onnx")
    craters_model(root / "craters.onnx")
    segment_model(root / "two.onnx", bands=("g", "r"), name="two")
    return {"root": root, "image": root / "sky.fits", "seg": root / "seg.onnx",
            "craters": root / "craters.onnx", "two": root / "two.onnx"}


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as lc:
        yield lc.scheduler_address


def _invoke(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _base(files: dict[str, Path], out: Path, tile: str = "32", patch: str = "24") -> list[str]:
    return ["run", str(files["image"]), "--model", str(files["seg"]), "--model",
            str(files["craters"]), "--out", str(out), "--tile", tile, "--patch", patch,
            "--device", "cpu"]


def test_run_embedded_then_resume_prints_summary(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    res = _invoke(*_base(files, out), "--workers", "1", "--threads", "1")
    assert res.exit_code == 0, res.output
    assert f"store: {out} (status complete" in res.output
    assert "units: 9 (9 done, 0 blank, 0 already done)" in res.output
    assert "Mpix/s" in res.output
    attrs = zarr.open_group(str(out), mode="r").attrs["cnnpipe"]
    assert attrs["status"] == "complete"
    assert set(attrs["models"]) == {"seg", "craters"}
    res = _invoke(*_base(files, out), "--resume")
    assert res.exit_code == 0
    assert "units: 9 (0 done, 0 blank, 9 already done)" in res.output


def test_dry_run(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "dry.zarr"
    res = _invoke(*_base(files, out), "--dry-run")
    assert res.exit_code == 0
    assert "work units: 9 (tile 32x32)" in res.output
    assert "tasks: 9" in res.output
    assert "expected memory per worker" in res.output
    assert "model seg: conv patches 24x24, halo 6, core 12x12" in res.output
    assert not out.exists()
    auto = _invoke(*_base(files, out, patch="auto"), "--dry-run")
    assert auto.exit_code == 0, auto.output
    assert "model seg: conv patches 44x44, halo 6, core 32x32" in auto.output  # one a unit
    for flag, bad in (("--patch", "0"), ("--batch", "many")):
        res = CliRunner().invoke(cli, [*_base(files, out), flag, bad, "--dry-run"])
        assert res.exit_code == 2
        assert f"Expected 'auto' or an integer >= 1. Got {bad!r}." in res.output


def test_errors_are_one_line_with_exit_codes(
    files: dict[str, Path], tmp_path: Path, scheduler: str
) -> None:
    runner = CliRunner()
    out = tmp_path / "e.zarr"
    # a model whose bands do not fit: exit 1, one line naming both sides, no store
    res = runner.invoke(cli, ["run", str(files["image"]), "--model", str(files["two"]),
                              "--out", str(out)])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cnnpipe: error: ")
    assert "needs bands g,r" in lines[0]
    assert str(files["two"]) in lines[0]  # both sides: the model file and the image
    assert "sky.fits" in lines[0]
    assert not out.exists()
    # a setting that does not fit a model: ConfigError, exit 2
    res = runner.invoke(cli, _base(files, out, tile="33"))
    assert res.exit_code == 2
    assert "Got --tile 33; use --tile 34" in res.stderr
    # a store of another configuration: refused, exit 1, the fix named
    assert runner.invoke(cli, [*_base(files, out), "--scheduler", scheduler]).exit_code == 0
    res = runner.invoke(cli, [*_base(files, out, tile="16"), "--scheduler", scheduler])
    assert res.exit_code == 1
    assert "another configuration" in res.stderr
    assert "--overwrite" in res.stderr
    res = runner.invoke(cli, [*_base(files, out, tile="16"), "--scheduler", scheduler,
                              "--overwrite"])
    assert res.exit_code == 0, res.stderr
    assert "units: 30 (30 done" in res.output
    # a locked store
    lock_path(out).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                          "started": "now", "run_id": "x"}))
    res = runner.invoke(cli, [*_base(files, out), "--scheduler", scheduler])
    assert res.exit_code == 1
    assert f"pid {os.getpid()} on host" in res.stderr
    lock_path(out).unlink()
    # a malformed --band is a usage error
    res = runner.invoke(cli, ["run", "--band", "g", "--model", "m.onnx", "--out", str(out)])
    assert res.exit_code == 2
    assert "Expected NAME=FILE" in res.output + res.stderr


@pytest.mark.slow
def test_killed_run_resumes_and_takes_over_the_stale_lock(
    files: dict[str, Path], tmp_path: Path
) -> None:
    big = tmp_path / "big.fits"
    fits.PrimaryHDU(
        np.random.default_rng(4).normal(size=(512, 512)).astype(np.float32), header=_wcs_header()
    ).writeto(big)
    out = tmp_path / "killed.zarr"
    args = ["run", str(big), "--model", str(files["seg"]), "--out", str(out), "--tile", "16",
            "--patch", "24", "--device", "cpu", "--workers", "1", "--threads", "1"]
    exe = [sys.executable, "-m", "cnnpipe"]
    proc = subprocess.Popen([*exe, *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            try:
                done = int((zarr.open_group(str(out), mode="r")["images/big/seg/tiles"][...]
                            != 0).sum())
            except Exception:
                continue
            if done >= 20:
                break
        assert proc.poll() is None, "the run should still be running"
        assert done >= 20, "the run should be killed mid-way"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its local cluster, all at once
        proc.wait()
    assert lock_path(out).exists(), "a killed run leaves its lock"
    ledger = zarr.open_group(str(out), mode="r")["images/big/seg/tiles"][...]
    before = int((ledger != 0).sum())
    assert 0 < before < 32 * 32
    res = subprocess.run([*exe, *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "stale lock" in res.stderr
    assert f"units: 1024 ({1024 - before} done, 0 blank, {before} already done)" in res.stdout
    full = tmp_path / "full.zarr"
    args[args.index(str(out))] = str(full)
    assert subprocess.run([*exe, *args], capture_output=True, timeout=300).returncode == 0
    a = zarr.open_group(str(out), mode="r")
    b = zarr.open_group(str(full), mode="r")
    for name in ("mask", "prob", "tiles"):
        assert np.array_equal(a[f"images/big/seg/{name}"][...], b[f"images/big/seg/{name}"][...],
                              equal_nan=True)
    # the same catalog rows, none twice (fragments of re-run units replace, never add)
    from cnnpipe.pipeline.catalogs import read_catalog_columns

    _, got, got_attrs = read_catalog_columns(out, "seg")
    _, want, want_attrs = read_catalog_columns(full, "seg")
    assert got_attrs["n_rows"] == want_attrs["n_rows"] > 0
    for column, values in want.items():
        np.testing.assert_array_equal(got[column], values, err_msg=column)
    rows = list(zip(got["x"].tolist(), got["y"].tolist(), got["area_px"].tolist()))
    assert len(rows) == len(set(rows))


def test_help_states_the_cluster_layout_defaults_cluster_plan_uses() -> None:
    # the help said "--threads [default: 1]" while a CPU run has used 2 threads a worker
    help_text = " ".join(str(_invoke("run", "--help").output).split())  # type: ignore[attr-defined]
    cfg = RunConfig(inputs=("a.fits",), models=("m.onnx",), out="o.zarr")
    cpu, gpu = cluster_plan(cfg, cores=16), cluster_plan(cfg, cores=16, gpu=True)
    assert (cpu.workers, gpu.workers) == (16 // 4, 1)
    assert "[default: cores // 4, at least 1, on a CPU; 1 on a GPU]" in help_text
    assert f"[default: {cpu.threads} on a CPU, {gpu.threads} on a GPU;" in help_text
    assert cpu.ort_threads == 16 // (cpu.workers * cpu.threads)
    assert "[default: cores // (workers x threads);" in help_text
    few = cluster_plan(cfg, cores=16, units=1)
    assert (few.workers, few.threads) == (1, 1)


def test_a_bundled_models_name_works_as_model(files: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnpipe.models import demo_model_paths
    from cnnpipe.pipeline.runner import prepare

    out = tmp_path / "out.zarr"
    res = _invoke("run", str(files["image"]), "--model", "demo_segment", "--out", str(out),
                  "--device", "cpu", "--dry-run")
    assert res.exit_code == 0, res.output
    cfg = RunConfig(inputs=(str(files["image"]),), models=("demo_segment",), out=str(out))
    (job,) = prepare(cfg).jobs
    assert job.path == str(demo_model_paths()["demo_segment"])
    # a file of that name in the working directory wins over the bundled model
    monkeypatch.chdir(files["root"])
    os.symlink(files["seg"], files["root"] / "demo_segment")
    try:
        (job,) = prepare(cfg).jobs
        assert job.path == str(files["root"] / "demo_segment")
        assert job.meta.name == "seg"
    finally:
        os.unlink(files["root"] / "demo_segment")
    res = CliRunner().invoke(cli, ["run", str(files["image"]), "--model", "demo_sgment",
                                   "--out", str(out), "--dry-run"])
    assert res.exit_code != 0
    assert "demo_sgment: no such model file, nor a bundled model" in res.output
    assert "demo_segment" in res.output
