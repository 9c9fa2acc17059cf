"""Crater size-frequency distributions, production and chronology functions, model ages.

Pure numpy and scipy; no I/O.  Diameters are in km, areas in km², densities in km⁻²,
ages in Gyr before present.

Production functions (cumulative number of craters with diameter >= D per km² formed in
1 Gyr; Neukum, Ivanov & Hartmann 2001, Space Sci. Rev. 96, 55)::

    log10 N(D) = a0 + sum_{n=1..11} a_n (log10 D)^n

* Moon: Neukum et al. (2001), valid 0.01 <= D <= 300 km (Craterstats uses it only up
  to 100 km).  The paper prints
  ``a0 = -3.0876``; Craterstats (Michael & Neukum 2010) notes it is probably a typo for
  ``-3.0768`` (= log10 of the chronology's N(1) at 1 Gyr, 8.38e-4).  ``a0`` only sets the
  normalisation, which the chronology replaces (below), so ages do not depend on it.
* Mars: Ivanov (2001), Space Sci. Rev. 96, 87 (also tabulated in Neukum et al. 2001),
  valid 0.015 <= D <= 362 km; coefficients to the digits of Craterstats'
  ``functions.txt`` (Michael & Neukum 2010, EPSL 294, 223).

Chronology functions (cumulative density of craters D >= 1 km after T Gyr)::

    N(1)(T) = a (exp(b T) - 1) + c T

* Moon (Neukum 1983; Neukum et al. 2001): ``a = 5.44e-14, b = 6.93, c = 8.38e-4``.
* Mars (Ivanov 2001; Hartmann & Neukum 2001, Space Sci. Rev. 96, 165):
  ``a = 2.68e-14, b = 6.93, c = 4.13e-4``, the Moon's scaled by the Mars/Moon cratering
  rate ratio (its N(1) at 1 Gyr equals the Ivanov PF's ``10^a0``).  Craterstats labels
  this curve "Mars, Ivanov (2001)" and uses ``3.22e-14 / 4.875e-4`` for its
  "Hartmann & Neukum (2001)" chronology: :data:`MARS_HARTMANN_NEUKUM_2001`.

The isochron of age T is ``N(>=D, T) = N(1)(T) * 10^(P(log10 D) - P(0))`` (the
production function's shape scaled to the chronology at 1 km).

Model ages (:func:`fit_age`): Poisson maximum likelihood on the craters in a diameter
range ``[d_min, d_max)``.  The isochron fixes the *shape* of the size distribution, so
the diameters inside the range carry no information on T and the likelihood is that of
the count ``n``: ``L(T) ∝ λ^n e^-λ`` with ``λ(T) = A N(1)(T) (F(d_min) - F(d_max))``,
``F`` the shape above.  This is the likelihood of the "Poisson timing analysis" of
Michael, Kneissl & Neesemann (2016, Icarus 277, 279) and of a Poisson fit of binned
counts for any binning.  It is summarised by its maximum, ``λ = n``, and the 1-sigma
interval where ``-2 Δ ln L = 1`` (``n ln(λ / n) - (λ - n) = -1/2``; ``λ ∈ [0, 1/2]``
for n = 0), roughly ``n ± sqrt(n)`` (Michael et al. report the median and 16/84 %
quantiles instead), mapped to ages through the monotonic chronology.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from scipy.optimize import brentq

from cnnpipe.errors import ConfigError, InputError

__all__ = [
    "MARS_HARTMANN_NEUKUM_2001",
    "MARS_IVANOV_2001",
    "MOON_NEUKUM_2001",
    "AgeFit",
    "Body",
    "Chronology",
    "ChronologySystem",
    "Csfd",
    "ProductionFunction",
    "chronology_system",
    "crater_density",
    "csfd",
    "fit_age",
    "isochron",
    "synthetic_population",
]

FloatArray = npt.NDArray[np.float64]


class Body(StrEnum):
    """Bodies with a production + chronology system."""

    MOON = "MOON"
    MARS = "MARS"


@dataclass(frozen=True, kw_only=True)
class ProductionFunction:
    """A polynomial production function ``log10 N(>=D) = sum a_n (log10 D)^n``.

    Attributes
    ----------
    name, reference : str
        Label and published source.
    coefficients : tuple of 12 float
        ``a0 .. a11``; N per km² per Gyr (at 1 Gyr), D in km.
    d_min_km, d_max_km : float
        Validity range (km).
    """

    name: str
    coefficients: tuple[float, ...]
    d_min_km: float
    d_max_km: float
    reference: str

    def log_cumulative(self, d_km: npt.ArrayLike) -> FloatArray:
        """``log10 N(>=D)`` (km⁻², per the published normalisation)."""
        x = np.log10(np.asarray(d_km, dtype=np.float64))
        return np.asarray(np.polynomial.polynomial.polyval(x, self.coefficients))

    def shape(self, d_km: npt.ArrayLike) -> FloatArray:
        """``N(>=D) / N(>=1 km)``: the production function normalised at 1 km."""
        return np.asarray(10.0 ** (self.log_cumulative(d_km) - self.coefficients[0]))


@dataclass(frozen=True, kw_only=True)
class Chronology:
    """``N(1)(T) = a (exp(b T) - 1) + c T`` (km⁻², T in Gyr).

    Attributes
    ----------
    name, reference : str
        Label and published source.
    a, b, c : float
        Coefficients (km⁻², Gyr⁻¹, km⁻² Gyr⁻¹).
    """

    name: str
    a: float
    b: float
    c: float
    reference: str

    def n1(self, age_gyr: npt.ArrayLike) -> FloatArray:
        """Cumulative density of craters D >= 1 km (km⁻²) after ``age_gyr``."""
        t = np.asarray(age_gyr, dtype=np.float64)
        return np.asarray(self.a * np.expm1(self.b * t) + self.c * t)

    def age(self, n1: float) -> float:
        """Inverse of :meth:`n1` (Gyr) for a density >= 0 (km⁻²); strictly monotonic."""
        if not (math.isfinite(n1) and n1 >= 0):
            msg = f"Expected a finite crater density N(1) >= 0 (km^-2). Got {n1}."
            raise InputError(msg)
        if n1 == 0:
            return 0.0
        hi = 5.0
        while float(self.n1(hi)) < n1:
            hi *= 2.0
        return float(brentq(lambda t: float(self.n1(t)) - n1, 0.0, hi, xtol=1e-12, rtol=1e-12))


@dataclass(frozen=True, kw_only=True)
class ChronologySystem:
    """A production function with the chronology it is used with."""

    body: Body
    production: ProductionFunction
    chronology: Chronology


MOON_NEUKUM_2001 = ChronologySystem(
    body=Body.MOON,
    production=ProductionFunction(
        name="Moon, Neukum et al. (2001)",
        coefficients=(-3.0876, -3.557528, 0.781027, 1.021521, -0.156012, -0.444058,
                      0.019977, 0.086850, -0.005874, -0.006809, 8.25e-4, 5.54e-5),
        d_min_km=0.01,
        d_max_km=300.0,
        reference="Neukum, Ivanov & Hartmann (2001), Space Sci. Rev. 96, 55",
    ),
    chronology=Chronology(
        name="Moon, Neukum (1983)",
        a=5.44e-14, b=6.93, c=8.38e-4,
        reference="Neukum (1983), Habilitation, LMU Munich; Neukum et al. (2001)",
    ),
)  # fmt: skip

_MARS_PF = ProductionFunction(
    name="Mars, Ivanov (2001)",
    coefficients=(-3.383677, -3.197453, 1.256814, 0.7915374, -0.4860814, -0.3630098,
                  0.1015683, 0.06755923, -0.01180639, -0.004753462, 6.232845e-4, 5.805492e-5),
    d_min_km=0.015,
    d_max_km=362.0,
    reference="Ivanov (2001), Space Sci. Rev. 96, 87; Neukum et al. (2001)",
)  # fmt: skip

MARS_IVANOV_2001 = ChronologySystem(
    body=Body.MARS,
    production=_MARS_PF,
    chronology=Chronology(
        name="Mars, Ivanov (2001)",
        a=2.68e-14, b=6.93, c=4.13e-4,
        reference="Ivanov (2001), Space Sci. Rev. 96, 87; Hartmann & Neukum "
        "(2001), Space Sci. Rev. 96, 165",
    ),
)  # fmt: skip

MARS_HARTMANN_NEUKUM_2001 = ChronologySystem(
    body=Body.MARS,
    production=_MARS_PF,
    chronology=Chronology(
        name="Mars, Hartmann & Neukum (2001), Craterstats coefficients",
        a=3.22e-14, b=6.93, c=4.875e-4,
        reference="Hartmann & Neukum (2001), Space Sci. Rev. 96, 165 (graphical); "
        "equation form as in Craterstats (Michael & Neukum 2010)",
    ),
)  # fmt: skip

_SYSTEMS = {Body.MOON: MOON_NEUKUM_2001, Body.MARS: MARS_IVANOV_2001}


def chronology_system(body: str | Body | ChronologySystem) -> ChronologySystem:
    """The default system of a body (``'MOON'``, ``'MARS'``; any case), or ``body`` itself.

    Raises
    ------
    ConfigError
        Unknown body.
    """
    if isinstance(body, ChronologySystem):
        return body
    try:
        return _SYSTEMS[Body(str(body).upper())]
    except ValueError:
        msg = f"Expected a body among {[b.value for b in Body]}. Got {body!r}."
        raise ConfigError(msg) from None


def _diameters(d: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(d, dtype=np.float64).ravel()
    if arr.size and not (np.isfinite(arr).all() and arr.min() > 0):
        msg = "Expected finite crater diameters > 0 (km). Got NaN, inf or a value <= 0."
        raise InputError(msg)
    return arr


def _area(area_km2: float) -> float:
    if not (math.isfinite(area_km2) and area_km2 > 0):
        msg = f"Expected a counting area > 0 (km^2). Got {area_km2}."
        raise InputError(msg)
    return float(area_km2)


def _range(sys_: ChronologySystem, d_min: float, d_max: float) -> tuple[float, float]:
    pf = sys_.production
    if not (pf.d_min_km <= d_min < d_max <= pf.d_max_km):
        msg = (
            f"Expected {pf.d_min_km} <= d_min < d_max <= {pf.d_max_km} km (the validity "
            f"range of {pf.name}). Got d_min={d_min}, d_max={d_max}."
        )
        raise ConfigError(msg)
    return float(d_min), float(d_max)


@dataclass(frozen=True, kw_only=True, eq=False)
class Csfd:
    """A cumulative size-frequency distribution, one point per distinct diameter.

    Attributes
    ----------
    diameter_km : (k,) float64
        Distinct diameters, ascending (km).
    count : (k,) int64
        Number of craters with diameter >= ``diameter_km``.
    density : (k,) float64
        ``count / area`` (km⁻²), non-increasing.
    error : (k,) float64
        Poisson 1-sigma: ``sqrt(count) / area`` (km⁻²).
    area_km2 : float
        Counting area (km²).
    """

    diameter_km: FloatArray
    count: npt.NDArray[np.int64]
    density: FloatArray
    error: FloatArray
    area_km2: float


def csfd(diameters_km: npt.ArrayLike, area_km2: float) -> Csfd:
    """Cumulative size-frequency distribution ``N(>=D) / A`` with Poisson errors.

    Parameters
    ----------
    diameters_km : (n,) float
        Crater diameters (km).
    area_km2 : float
        Counting area (km²).

    Returns
    -------
    Csfd
        Empty arrays when there are no craters.
    """
    d = np.sort(_diameters(diameters_km))
    area = _area(area_km2)
    uniq, first = np.unique(d, return_index=True)
    count = (d.size - first).astype(np.int64)
    return Csfd(diameter_km=uniq, count=count, density=count / area,
                error=np.sqrt(count) / area, area_km2=area)  # fmt: skip


def crater_density(
    diameters_km: npt.ArrayLike, area_km2: float, *, d_ref_km: float = 1.0
) -> tuple[float, float]:
    """Crater density ``N(D >= d_ref) / A`` and its Poisson error ``sqrt(N) / A`` (km⁻²)."""
    d = _diameters(diameters_km)
    area = _area(area_km2)
    n = int((d >= d_ref_km).sum())
    return n / area, math.sqrt(n) / area


def isochron(
    d_km: npt.ArrayLike, age_gyr: float, *, body: str | Body | ChronologySystem
) -> FloatArray:
    """Expected cumulative density ``N(>=D)`` (km⁻²) of a surface ``age_gyr`` old.

    ``N(1)(T) * shape(D)`` (module docstring); no check of the validity range.
    """
    s = chronology_system(body)
    return np.asarray(s.chronology.n1(age_gyr) * s.production.shape(d_km))


@dataclass(frozen=True, kw_only=True)
class AgeFit:
    """A model age (:func:`fit_age`).

    Attributes
    ----------
    age_gyr : float
        Maximum-likelihood age (Gyr).
    err_minus_gyr, err_plus_gyr : float
        1-sigma interval ``[age - err_minus, age + err_plus]`` (Gyr).
    n1 : float
        Fitted ``N(1)`` (km⁻²); ``n1_minus``, ``n1_plus`` its interval bounds.
    n_craters : int
        Craters in ``[d_min_km, d_max_km)``.
    d_min_km, d_max_km, area_km2 : float
        Fit range (km) and area (km²).
    system : ChronologySystem
        Production and chronology functions used.
    """

    age_gyr: float
    err_minus_gyr: float
    err_plus_gyr: float
    n1: float
    n1_minus: float
    n1_plus: float
    n_craters: int
    d_min_km: float
    d_max_km: float
    area_km2: float
    system: ChronologySystem

    @property
    def sigma_gyr(self) -> float:
        """Mean of the two 1-sigma errors (Gyr)."""
        return 0.5 * (self.err_minus_gyr + self.err_plus_gyr)

    def label(self) -> str:
        """``'3.48 +0.02/-0.03 Ga'`` (Ga below 1 Gyr shown in Ma)."""
        a, lo, hi = self.age_gyr, self.err_minus_gyr, self.err_plus_gyr
        if a < 1.0:
            return f"{a * 1e3:.3g} +{hi * 1e3:.2g}/-{lo * 1e3:.2g} Ma"
        return f"{a:.3g} +{hi:.2g}/-{lo:.2g} Ga"


def _poisson_interval(n: int) -> tuple[float, float]:
    """``λ`` where ``-2 Δ ln L = 1`` for a Poisson count ``n`` (module docstring)."""
    if n == 0:
        return 0.0, 0.5

    def f(lam: float) -> float:
        return n * math.log(lam / n) - (lam - n) + 0.5

    lo = float(brentq(f, 1e-12 * n, n))
    hi_b = n + 1.0
    while f(hi_b) > 0:
        hi_b = n + 2.0 * (hi_b - n)
    return lo, float(brentq(f, n, hi_b))


def fit_age(
    diameters_km: npt.ArrayLike,
    area_km2: float,
    *,
    body: str | Body | ChronologySystem,
    d_min_km: float,
    d_max_km: float | None = None,
) -> AgeFit:
    """Model age from the craters in ``[d_min_km, d_max_km)`` (module docstring).

    Parameters
    ----------
    diameters_km : (n,) float
        Crater diameters (km); those outside the range are ignored.
    area_km2 : float
        Counting area (km²).
    body : str, Body or ChronologySystem
        ``'MOON'`` / ``'MARS'`` (default systems) or an explicit system.
    d_min_km : float
        Smallest diameter counted (the completeness limit), km.
    d_max_km : float, optional
        Upper bound (km); default the production function's upper validity limit.

    Returns
    -------
    AgeFit

    Raises
    ------
    ConfigError
        Unknown body or a range outside the production function's validity.
    InputError
        Non-finite or non-positive diameters or area.
    """
    s = chronology_system(body)
    d_max = s.production.d_max_km if d_max_km is None else d_max_km
    d_min, d_max = _range(s, d_min_km, d_max)
    area = _area(area_km2)
    d = _diameters(diameters_km)
    n = int(((d >= d_min) & (d < d_max)).sum())
    frac = float(s.production.shape(d_min) - s.production.shape(d_max))
    per_n1 = area * frac  # expected count per unit N(1)
    lam_lo, lam_hi = _poisson_interval(n)
    n1, n1_lo, n1_hi = n / per_n1, lam_lo / per_n1, lam_hi / per_n1
    age = s.chronology.age(n1)
    return AgeFit(
        age_gyr=age,
        err_minus_gyr=age - s.chronology.age(n1_lo),
        err_plus_gyr=s.chronology.age(n1_hi) - age,
        n1=n1, n1_minus=n1_lo, n1_plus=n1_hi, n_craters=n,
        d_min_km=d_min, d_max_km=d_max, area_km2=area, system=s,
    )  # fmt: skip


def synthetic_population(
    age_gyr: float,
    area_km2: float,
    d_min_km: float,
    d_max_km: float,
    *,
    body: str | Body | ChronologySystem,
    seed: int,
) -> FloatArray:
    """Random crater diameters of a surface of a given age (no saturation, no erasure).

    The number is Poisson with mean ``A N(1)(T) (F(d_min) - F(d_max))``; diameters are
    drawn by inverting ``F`` (the production function's shape, module docstring) on a
    fine grid in ``log D``, ``u ~ U(F(d_max), F(d_min))``, ``D = F^-1(u)``.

    Parameters
    ----------
    age_gyr : float
        Surface age (Gyr), >= 0.
    area_km2 : float
        Area (km²).
    d_min_km, d_max_km : float
        Diameter range (km), inside the production function's validity range.
    body : str, Body or ChronologySystem
        ``'MOON'`` / ``'MARS'`` or an explicit system.
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    (n,) float64
        Diameters (km), unsorted.
    """
    s = chronology_system(body)
    d_min, d_max = _range(s, d_min_km, d_max_km)
    area = _area(area_km2)
    if not (math.isfinite(age_gyr) and age_gyr >= 0):
        msg = f"Expected an age >= 0 (Gyr). Got {age_gyr}."
        raise ConfigError(msg)
    rng = np.random.default_rng(seed)
    f_lo, f_hi = float(s.production.shape(d_max)), float(s.production.shape(d_min))
    lam = area * float(s.chronology.n1(age_gyr)) * (f_hi - f_lo)
    n = int(rng.poisson(lam))
    logd = np.linspace(math.log10(d_min), math.log10(d_max), 20001)
    logf = s.production.log_cumulative(10.0**logd)  # decreasing in D
    u = np.log10(rng.uniform(f_lo, f_hi, n)) + s.production.coefficients[0]
    return np.asarray(10.0 ** np.interp(u, logf[::-1], logd[::-1]))
