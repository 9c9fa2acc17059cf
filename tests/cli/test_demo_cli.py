"""``cnnpipe demo`` end to end on a small image (embedded cluster, bundled models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from cnnpipe.cli import cli


def test_demo_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "--out", str(out), "--size", "256",
                                   "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "segments found (truth)" in res.output
    assert "craters catalogued" in res.output
    assert "galaxy classifier at" in res.output
    for store, key, models in (("sky.zarr", "sky", ("demo_segment", "demo_galaxy")),
                               ("craters.zarr", "craters", ("demo_craters",))):
        root = zarr.open_group(str(out / store), mode="r")
        assert root.attrs["cnnpipe"]["status"] == "complete"
        for model in models:
            mask = np.asarray(zarr.open_array(str(out / store),
                                              path=f"images/{key}/{model}/mask")[...])
            assert mask.shape == (256, 256)
            assert (mask != 255).any()
    # crater statistics of the demo's crater field, with the CSFD plot
    plot = tmp_path / "sfd.png"
    res = CliRunner().invoke(cli, ["craters", str(out / "craters.zarr"), "--plot", str(plot),
                                   "--json"])
    assert res.exit_code == 0, res.output
    (stats,) = json.loads(res.output)
    assert stats["body"] == "MOON"
    assert stats["area_km2"] == pytest.approx(256 * 256 * 0.1**2)
    assert stats["n_craters"] > 20
    assert 0 < stats["age_gyr"] < 4.6
    assert stats["age_err_minus_gyr"] > 0
    assert plot.stat().st_size > 10_000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a sky store has no craters model: a one-line error
    res = CliRunner().invoke(cli, ["craters", str(out / "sky.zarr"), "--model", "demo_segment"])
    assert res.exit_code != 0
    assert "Expected a craters model" in res.output
    # a rerun with another seed replaces the outputs (never resumes stale results)
    before = np.asarray(zarr.open_array(str(out / "sky.zarr"),
                                        path="images/sky/demo_segment/prob")[...])
    again = CliRunner().invoke(cli, ["demo", "--out", str(out), "--size", "256",
                                     "--workers", "1", "--seed", "3"])
    assert again.exit_code == 0, again.output
    after = np.asarray(zarr.open_array(str(out / "sky.zarr"),
                                       path="images/sky/demo_segment/prob")[...])
    assert not np.array_equal(before, after, equal_nan=True)
