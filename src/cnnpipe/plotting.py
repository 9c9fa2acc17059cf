"""Plots of science outputs: the crater cumulative size-frequency distribution.

matplotlib is imported inside the functions (it is not a dependency of the pipeline) and
drawn through its object-oriented API on an Agg canvas, so no global backend is set and
no window opens.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cnnpipe.errors import ConfigError
from cnnpipe.pipeline.chronology import (
    AgeFit,
    Body,
    ChronologySystem,
    chronology_system,
    csfd,
    isochron,
)

__all__ = ["plot_csfd"]


def plot_csfd(
    diameters_km: npt.ArrayLike,
    area_km2: float,
    *,
    body: str | Body | ChronologySystem,
    fit: AgeFit | None = None,
    path: str | os.PathLike[str],
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Plot a cumulative size-frequency distribution with its fitted isochron.

    Log-log ``N(>=D)`` (km⁻²) against ``D`` (km), one point per distinct diameter with
    Poisson error bars ``sqrt(N) / A`` (:func:`cnnpipe.pipeline.chronology.csfd`).  With
    ``fit``, its isochron (:func:`~cnnpipe.pipeline.chronology.isochron`) is drawn solid
    over the fitted range (up to the largest crater) and dashed over the rest of the
    data, labelled with the model age and its 1-sigma errors; the fitted range is shaded.

    Parameters
    ----------
    diameters_km : (n,) float
        Crater diameters (km).
    area_km2 : float
        Counting area (km²).
    body : str, Body or ChronologySystem
        ``'MOON'`` / ``'MARS'`` or the system of ``fit``.
    fit : AgeFit, optional
        A model age from :func:`cnnpipe.pipeline.chronology.fit_age`.
    path : path-like
        Output image; the format follows the suffix (``.png``, ``.pdf``, ``.svg``).
    title : str, optional
        Plot title (default: the body, crater count and area).
    dpi : int
        Resolution of raster output.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ConfigError
        ``fit`` was made for another body.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    system = chronology_system(body)
    if fit is not None and fit.system.body is not system.body:
        msg = f"Expected a fit for {system.body.value}. Got one for {fit.system.body.value}."
        raise ConfigError(msg)
    dist = csfd(diameters_km, area_km2)
    fig = Figure(figsize=(6.0, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    if dist.count.size:
        lower = np.minimum(dist.error, dist.density * 0.9)  # N = 1 would reach 0 on a log axis
        ax.errorbar(dist.diameter_km, dist.density, yerr=[lower, dist.error], fmt="o",
                    ms=3, lw=0.8, color="k", ecolor="0.5",
                    label=f"{int(dist.count[0])} craters")  # fmt: skip
    if fit is not None:
        dmin = float(dist.diameter_km.min()) if dist.count.size else fit.d_min_km
        dmax = float(dist.diameter_km.max()) if dist.count.size else 10 * fit.d_min_km
        lo = max(min(fit.d_min_km, dmin), system.production.d_min_km)
        hi = min(max(dmax, 2 * fit.d_min_km), fit.d_max_km)
        d_all = np.logspace(np.log10(lo), np.log10(hi), 200)
        d_fit = np.logspace(np.log10(fit.d_min_km), np.log10(hi), 200)
        ax.plot(d_all, isochron(d_all, fit.age_gyr, body=fit.system), "--", color="C3", lw=0.8)
        ax.plot(d_fit, isochron(d_fit, fit.age_gyr, body=fit.system), "-", color="C3", lw=1.6,
                label=f"{fit.label()} (N={fit.n_craters})")  # fmt: skip
        ax.axvspan(fit.d_min_km, hi, color="C3", alpha=0.06, lw=0)
    ax.set_xlabel("Crater diameter D (km)")
    ax.set_ylabel("Cumulative crater density N(≥D) (km$^{-2}$)")
    ax.set_title(title if title is not None else
                 f"{system.body.value.title()}: {int(dist.count[0]) if dist.count.size else 0}"
                 f" craters, A = {area_km2:.4g} km²")  # fmt: skip
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    if dist.count.size or fit is not None:
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    note = f"{system.production.name}; {system.chronology.name}"
    fig.text(0.01, 0.005, note, fontsize=6, color="0.4")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=dpi)
    return out
