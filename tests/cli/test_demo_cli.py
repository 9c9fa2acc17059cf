"""``cnnpipe demo`` end to end on a small image (embedded cluster, bundled models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from click.testing import CliRunner

from cnnpipe.cli import cli


def test_demo_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "--out", str(out), "--size", "256",
                                   "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "segments found (truth)" in res.output
    assert "crater rim pixels found" in res.output
    for store, key, models in (("sky.zarr", "sky", ("demo_segment", "demo_galaxy")),
                               ("craters.zarr", "craters", ("demo_craters",))):
        root = zarr.open_group(str(out / store), mode="r")
        assert root.attrs["cnnpipe"]["status"] == "complete"
        for model in models:
            mask = np.asarray(zarr.open_array(str(out / store),
                                              path=f"images/{key}/{model}/mask")[...])
            assert mask.shape == (256, 256)
            assert (mask != 255).any()
    # a rerun with another seed replaces the outputs (never resumes stale results)
    before = np.asarray(zarr.open_array(str(out / "sky.zarr"),
                                        path="images/sky/demo_segment/prob")[...])
    again = CliRunner().invoke(cli, ["demo", "--out", str(out), "--size", "256",
                                     "--workers", "1", "--seed", "3"])
    assert again.exit_code == 0, again.output
    after = np.asarray(zarr.open_array(str(out / "sky.zarr"),
                                       path="images/sky/demo_segment/prob")[...])
    assert not np.array_equal(before, after, equal_nan=True)
