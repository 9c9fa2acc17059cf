"""Fixtures for cnnpipe.export: a small seeded FITS image and tiny exported models.

Exports take seconds each, so the four reference architectures are exported once per
session with tiny widths and shared by the tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

BANDS = ("g", "r")

#: tiny options per architecture (the defaults are larger but still < 5 MB)
TINY = {
    "galaxy_cnn": {"width": 4, "depth": 2, "hidden": 8, "patch": 16},
    "lens_resnet": {"width": 4, "stages": 2, "blocks": 1, "patch": 32},
    "crater_unet": {"base": 4, "depth": 2},
    "segment_unet": {"base": 4, "depth": 2},
}


def sky_cube(shape: tuple[int, int] = (96, 96), *, seed: int = 0) -> np.ndarray:
    """(2, y, x) float32 sky: background 100, noise 5, Gaussian blobs, a NaN corner."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    img = 100 + 5 * rng.standard_normal((2, ny, nx))
    for _ in range(12):
        y, x = rng.uniform(0, ny), rng.uniform(0, nx)
        s = rng.uniform(1, 4)
        flux = rng.uniform(200, 2000)
        blob = flux * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * s * s))
        img += blob[None] * np.array([1.0, 1.4])[:, None, None]
    img[:, :6, :6] = np.nan
    return img.astype(np.float32)


def write_cube_fits(path: Path, *, seed: int = 0, shape: tuple[int, int] = (96, 96)) -> Path:
    """Write :func:`sky_cube` as a (band, y, x) primary-HDU cube."""
    fits.PrimaryHDU(sky_cube(shape, seed=seed)).writeto(path)
    return path


@pytest.fixture(scope="session")
def sky_fits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-band (g, r) 96x96 FITS cube."""
    return write_cube_fits(tmp_path_factory.mktemp("fits") / "sky.fits")


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, sky_fits: Path) -> dict[str, object]:
    """Export every reference architecture once (tiny widths, real-patch parity)."""
    torch = pytest.importorskip("torch")

    from cnnpipe.export.exporter import export_request
    from cnnpipe.export.request import ExportRequest

    out = tmp_path_factory.mktemp("exported")
    reports = {}
    for arch, opts in TINY.items():
        torch.manual_seed(0)
        req = ExportRequest(
            source=arch,
            out=out / f"{arch}.onnx",
            bands=BANDS,
            options=opts,
            parity_fits=(sky_fits,),
            n_real=4,
        )
        reports[arch] = export_request(req, log=lambda _: None)
    return reports
