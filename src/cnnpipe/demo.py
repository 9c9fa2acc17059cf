"""``cnnpipe demo``: simulate a small survey and a crater field, run the demo models.

Everything is made here (no download): a seeded single-band sky image with its truth
mask, a seeded crater field, the bundled demo models (:mod:`cnnpipe.models`), and an
embedded Dask cluster.  The result says where the outputs are and what was found,
next to the simulation's truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cnnpipe.errors import ConfigError
from cnnpipe.models import demo_model_paths
from cnnpipe.pipeline.config import RunConfig, StoreMode
from cnnpipe.pipeline.progress import Reporter
from cnnpipe.pipeline.runner import RunSummary, run

__all__ = ["DemoResult", "run_demo"]

DEMO_MODELS = ("demo_segment", "demo_galaxy", "demo_craters")


@dataclass
class DemoResult:
    """Where the demo wrote its outputs and what it found."""

    folder: Path
    sky_store: Path
    crater_store: Path
    summaries: list[RunSummary] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human summary, one fact per line."""
        out = [f"demo folder: {self.folder}"]
        out += [f"  sky survey  -> {self.sky_store}", f"  crater field -> {self.crater_store}"]
        out += self.findings
        out.append("open the stores with zarr or xarray "
                   "(e.g. xarray.open_zarr(STORE, group='images/sky/demo_segment')).")
        return out


def _segments(mask: npt.NDArray[np.uint8], classes: tuple[str, ...]) -> dict[str, int]:
    """Connected components per class (8-connectivity), background excluded."""
    from scipy import ndimage

    counts = {}
    for k, name in enumerate(classes):
        if k == 0:
            continue
        _, n = ndimage.label(mask == k, structure=np.ones((3, 3)))
        counts[name] = int(n)
    return counts


def run_demo(
    folder: str | Path,
    *,
    size: int = 1024,
    seed: int = 7,
    workers: int | None = None,
    reporter: Reporter | None = None,
) -> DemoResult:
    """Simulate, run the demo models on an embedded cluster, and compare with the truth.

    Parameters
    ----------
    folder : path
        Where the simulated FITS files and the Zarr stores go (created; a rerun
        simulates and runs anew, replacing them).
    size : int
        Side of the simulated images (px).
    seed : int
        Simulation seed (demo training used seeds >= 10000).
    workers : int, optional
        Local Dask worker processes (default: from the core count).
    reporter : Reporter, optional
        Progress display.
    """
    import zarr
    from astropy.io import fits

    from cnnpipe.pipeline.craterstats import crater_stats
    from cnnpipe.pipeline.exports import catalog_table
    from cnnpipe.testing.craters import make_crater_catalog, write_craters
    from cnnpipe.testing.sky import SKY_CLASSES, make_sky_catalog, write_sky

    models = demo_model_paths()
    missing = [m for m in DEMO_MODELS if m not in models]
    if missing:
        msg = (f"Expected the bundled demo models {list(DEMO_MODELS)}. Missing {missing}; "
               "rebuild them with `python -m cnnpipe.export.demo`.")
        raise ConfigError(msg)
    if size < 256:
        msg = f"Expected a demo image size >= 256 px. Got {size}."
        raise ConfigError(msg)
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    sky_fits, crater_fits = folder / "sky.fits", folder / "craters.fits"
    sky_files = write_sky(make_sky_catalog(size, seed=seed, bands=("r",)), sky_fits,
                          overwrite=True)
    crater_cat = make_crater_catalog(size, seed=seed + 1)
    write_craters(crater_cat, crater_fits, overwrite=True)

    result = DemoResult(folder=folder, sky_store=folder / "sky.zarr",
                        crater_store=folder / "craters.zarr")
    tile = 512 if size <= 2048 else 2048
    for image, names, store in (
        (sky_fits, ("demo_segment", "demo_galaxy"), result.sky_store),
        (crater_fits, ("demo_craters",), result.crater_store),
    ):
        config = RunConfig(inputs=(str(image),), models=tuple(str(models[n]) for n in names),
                           out=str(store), workers=workers, tile=tile,
                           # the images were just simulated anew (seed and size may differ)
                           mode=StoreMode.OVERWRITE)
        result.summaries.append(run(config, reporter=reporter))

    def array(store: Path, path: str) -> Any:
        return zarr.open_array(str(store), path=path, mode="r")

    seg = np.asarray(array(result.sky_store, "images/sky/demo_segment/mask")[...])
    truth = fits.getdata(sky_files.mask)
    found = _segments(seg, SKY_CLASSES)
    true = _segments(truth, SKY_CLASSES)
    result.findings.append("segments found (truth): " + ", ".join(
        f"{name} {found[name]} ({true[name]})" for name in found))
    valid = truth != 255
    acc = float(np.mean(seg[valid] == truth[valid]))
    result.findings.append(f"segmentation pixel accuracy vs truth mask: {acc:.3f}")
    visible = int(np.sum(crater_cat.rim_visible > 0.5))
    sources = catalog_table(result.sky_store, "demo_galaxy")
    kinds = {str(c): int(np.sum(sources["class"] == c)) for c in sorted(set(sources["class"]))}
    result.findings.append(
        f"galaxy classifier at {len(sources)} sep detections: " + ", ".join(
            f"{k} {v}" for k, v in kinds.items()))
    (stats,) = crater_stats(result.crater_store, "demo_craters")
    result.findings.append(
        f"craters catalogued: {stats.diameters_km.size} (truth: {visible} with a visible "
        f"rim); model age {stats.fit.label()} (simulated field, not a real surface)")
    return result
