"""CSFD plot (cnnpipe.plotting)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnpipe.errors import ConfigError
from cnnpipe.pipeline.chronology import fit_age, synthetic_population
from cnnpipe.plotting import plot_csfd

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_plot_with_fit_writes_a_png(tmp_path: Path) -> None:
    d = synthetic_population(3.5, 2e4, 0.5, 50.0, body="MOON", seed=2)
    fit = fit_age(d, 2e4, body="MOON", d_min_km=1.0, d_max_km=50.0)
    out = plot_csfd(d, 2e4, body="MOON", fit=fit, path=tmp_path / "csfd.png")
    assert out == tmp_path / "csfd.png"
    assert _png_size(out) == (720, 600)  # 6 x 5 in at 120 dpi
    assert 10_000 < out.stat().st_size < 500_000
    # the fitted isochron adds ink: the plot without it is a different image
    bare = plot_csfd(d, 2e4, body="MOON", path=tmp_path / "bare.png")
    assert bare.read_bytes() != out.read_bytes()


def test_plot_empty_and_mars_and_pdf(tmp_path: Path) -> None:
    out = plot_csfd(np.zeros(0), 10.0, body="MARS", path=tmp_path / "empty.png", dpi=50)
    assert _png_size(out) == (300, 250)
    d = synthetic_population(1.0, 1e5, 1.0, 20.0, body="MARS", seed=1)
    fit = fit_age(d, 1e5, body="MARS", d_min_km=1.0, d_max_km=20.0)
    pdf = plot_csfd(d, 1e5, body="MARS", fit=fit, path=tmp_path / "mars.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_fit_for_another_body_is_refused(tmp_path: Path) -> None:
    d = synthetic_population(1.0, 1e5, 1.0, 20.0, body="MARS", seed=1)
    fit = fit_age(d, 1e5, body="MARS", d_min_km=1.0)
    with pytest.raises(ConfigError, match="MOON"):
        plot_csfd(d, 1e5, body="MOON", fit=fit, path=tmp_path / "x.png")
