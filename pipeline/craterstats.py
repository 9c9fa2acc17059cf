"""Crater statistics of a run store: counting area, CSFD and model age per image.

The I/O side of :mod:`cnnpipe.pipeline.chronology` (pure maths): reads the merged crater
catalog and the image's header and mask from the store, and fits the model age of each
image's crater population (``cnnpipe craters``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cnnpipe.errors import ConfigError, StoreError
from cnnpipe.pipeline.chronology import AgeFit, Body, crater_density, fit_age
from cnnpipe.pipeline.exports import catalog_table
from cnnpipe.pipeline.heads import NODATA
from cnnpipe.pipeline.store import store_header

__all__ = ["CraterStats", "crater_stats", "km_per_pixel"]

#: Smallest crater diameter (px) counted by default: the size above which the demo
#: detector's recall is >= 0.85 (README, science heads).
MIN_DIAMETER_PX = 10.0


@dataclass(frozen=True, kw_only=True)
class CraterStats:
    """Crater statistics of one image.

    Attributes
    ----------
    image, body : str
        Image key and body (``MOON``, ``MARS``).
    km_per_px, area_km2 : float
        Pixel scale (km / px) and counting area (km², pixels with data).
    diameters_km : (n,) float
        Diameters of the catalogued craters (km).
    density_1km, density_1km_err : float
        N(D >= 1 km) per km² and its Poisson error.
    fit : AgeFit
        Model age over ``[fit.d_min_km, fit.d_max_km)``.
    """

    image: str
    body: str
    km_per_px: float
    area_km2: float
    diameters_km: npt.NDArray[np.float64]
    density_1km: float
    density_1km_err: float
    fit: AgeFit

    def lines(self) -> list[str]:
        """Human summary."""
        f = self.fit
        return [
            f"image {self.image} ({self.body}): {self.diameters_km.size} craters over "
            f"{self.area_km2:.4g} km2 ({self.km_per_px:.4g} km/px)",
            f"  N(D>=1 km) = {self.density_1km:.3e} +/- {self.density_1km_err:.1e} km^-2",
            f"  model age {f.label()} from {f.n_craters} craters with "
            f"{f.d_min_km:.3g} <= D < {f.d_max_km:.3g} km",
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        f = self.fit
        return {
            "image": self.image, "body": self.body, "km_per_px": self.km_per_px,
            "area_km2": self.area_km2, "n_craters": int(self.diameters_km.size),
            "density_1km": self.density_1km, "density_1km_err": self.density_1km_err,
            "age_gyr": f.age_gyr, "age_err_minus_gyr": f.err_minus_gyr,
            "age_err_plus_gyr": f.err_plus_gyr, "fit_n_craters": f.n_craters,
            "fit_d_min_km": f.d_min_km, "fit_d_max_km": f.d_max_km,
        }


def km_per_pixel(header: Any) -> float:
    """Map scale (km / px) from ``PIXSCALE``, or the WCS scale and body radius ``A_RADIUS``.

    Raises
    ------
    StoreError
        Neither is present (a sky image, or a planetary image without scale cards).
    """
    if "PIXSCALE" in header:
        return float(header["PIXSCALE"])
    if "A_RADIUS" in header:
        from astropy.wcs import WCS
        from astropy.wcs.utils import proj_plane_pixel_scales

        deg = float(np.mean(proj_plane_pixel_scales(WCS(header).celestial)))
        return float(np.deg2rad(deg) * float(header["A_RADIUS"]) / 1000.0)
    msg = ("Expected a planetary image with a PIXSCALE (km/px) or A_RADIUS (m) header card. "
           "Got neither; crater ages need a physical pixel scale.")
    raise StoreError(msg)


def _data_pixels(store: str, key: str, model: str) -> int:
    """Pixels with data in the model's mask, read one chunk row at a time."""
    import zarr

    arr = zarr.open_array(store, path=f"images/{key}/{model}/mask", mode="r")
    step = int(arr.chunks[0])
    total = 0
    for y0 in range(0, int(arr.shape[0]), step):
        total += int(np.count_nonzero(np.asarray(arr[y0:y0 + step]) != NODATA))
    return total


def crater_stats(
    store: str | os.PathLike[str],
    model: str | None = None,
    *,
    image: str | None = None,
    body: str | None = None,
    d_min_km: float | None = None,
    d_max_km: float | None = None,
) -> list[CraterStats]:
    """CSFD and model age of each image's craters in a complete run store.

    Parameters
    ----------
    store : path
        The run store.
    model : str, optional
        The craters model (may be left out for a one-model store).
    image : str, optional
        One image key (default: every image).
    body : str, optional
        ``MOON`` or ``MARS`` (default: the image's ``BODY`` header card).
    d_min_km, d_max_km : float, optional
        Fit range (default: from 10 px diameters, no upper limit).
    """
    path = os.fspath(store)
    table = catalog_table(path, model)
    if table.meta["task"] != "craters":
        msg = (f"Expected a craters model. Got model {table.meta['model']} of task "
               f"{table.meta['task']}.")
        raise ConfigError(msg)
    import zarr

    keys = [image] if image else sorted(zarr.open_group(path, path="images", mode="r").group_keys())
    out = []
    for key in keys:
        header = store_header(path, key)
        name = (body or str(header.get("BODY", ""))).upper()
        if name not in Body.__members__:
            msg = (f"Expected the body MOON or MARS (BODY header card or --body) for image "
                   f"{key}. Got {name or 'none'}.")
            raise ConfigError(msg)
        scale = km_per_pixel(header)
        area = _data_pixels(path, key, str(table.meta["model"])) * scale**2
        rows = np.asarray(table["image"]) == key
        diam = np.asarray(table["diameter_km"][rows], dtype=np.float64)
        diam = diam[np.isfinite(diam)]
        n1, n1_err = crater_density(diam, area)
        lo = d_min_km if d_min_km is not None else MIN_DIAMETER_PX * scale
        fit = fit_age(diam, area, body=name, d_min_km=lo, d_max_km=d_max_km)
        out.append(CraterStats(image=key, body=name, km_per_px=scale, area_km2=area,
                               diameters_km=diam, density_1km=float(n1),
                               density_1km_err=float(n1_err), fit=fit))
    return out
