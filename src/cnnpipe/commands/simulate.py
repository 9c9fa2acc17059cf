"""``cnnpipe simulate``: a seeded survey image or crater field with truth catalog and mask."""

from __future__ import annotations

from pathlib import Path

import click

from cnnpipe.commands.options import seed_option
from cnnpipe.errors import ConfigError
from cnnpipe.testing._io import check_outputs

__all__ = ["command"]

_SKY_ONLY = ("bands", "mef", "sip", "psf")
_CRATER_ONLY = ("dem", "r_min", "r_max", "slope")


@click.command(
    "simulate",
    epilog=(
        "Files (OUT minus '.fits' is the stem): sky with one band writes OUT, with several "
        "OUT_<band>.fits (or one multi-extension OUT with --mef); craters write OUT (with "
        "--dem a 'DEM' extension). Both write STEM.mask.fits (uint8 truth mask) and the "
        "truth catalog STEM.truth.parquet (or --truth; a FITS table if it ends in .fits)."
    ),
)
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["sky", "craters"]), default="sky", show_default=True,
              help="Survey sky image or planetary crater field.")  # fmt: skip
@click.option("--size", type=int, default=1024, show_default=True,
              help="Image side (px); the image is SIZE x SIZE.")  # fmt: skip
@click.option("--bands", default=None, help="sky: comma-separated bands, e.g. g,r,i [r].")
@click.option("--mef", is_flag=True, help="sky: one multi-extension file, EXTNAME = band.")
@click.option("--sip", is_flag=True, help="sky: add SIP distortion to the TAN WCS.")
@click.option("--psf", type=click.Choice(["moffat", "gaussian"]), default=None,
              help="sky: stellar PSF profile [moffat].")  # fmt: skip
@click.option("--dem", is_flag=True, help="craters: also write the DEM (m) as HDU 'DEM'.")
@click.option("--r-min", type=float, default=None, help="craters: smallest radius, px [3].")
@click.option("--r-max", type=float, default=None, help="craters: largest radius, px [60].")
@click.option("--slope", type=float, default=None,
              help="craters: cumulative size-frequency slope, N(>R) ~ R^-SLOPE [2].")  # fmt: skip
@seed_option
@click.option("--truth", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Truth catalog path (.parquet, or .fits for a FITS table).")  # fmt: skip
@click.option("--noise/--no-noise", default=True, show_default=True, help="Add noise.")
@click.option("--strip-rows", type=int, default=256, show_default=True,
              help="Rows rendered and written at a time (memory ~ rows x size).")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def command(
    out: Path,
    kind: str,
    size: int,
    bands: str | None,
    mef: bool,
    sip: bool,
    psf: str | None,
    dem: bool,
    r_min: float | None,
    r_max: float | None,
    slope: float | None,
    seed: int,
    truth: Path | None,
    noise: bool,
    strip_rows: int,
    overwrite: bool,
) -> None:
    """Simulate a survey image or crater field, with truth catalog and truth mask."""
    given = {"bands": bands, "mef": mef, "sip": sip, "psf": psf, "dem": dem,
             "r_min": r_min, "r_max": r_max, "slope": slope}  # fmt: skip
    foreign = _CRATER_ONLY if kind == "sky" else _SKY_ONLY
    bad = [f"--{k.replace('_', '-')}" for k in foreign if given[k] not in (None, False)]
    if bad:
        msg = f"Expected options that apply to --kind {kind}. Got {', '.join(bad)}."
        raise ConfigError(msg)
    if kind == "sky":
        from cnnpipe.testing.sky import make_sky_catalog, sky_files, write_sky

        planned = sky_files(out, bands=bands if bands is not None else "r", mef=mef, truth=truth)
        check_outputs(list(planned.all), overwrite=overwrite)
        sky = make_sky_catalog(
            size, seed=seed, bands=bands if bands is not None else "r", sip=sip,
            psf=psf or "moffat",
        )  # fmt: skip
        files = write_sky(
            sky, out, mef=mef, truth=truth, noise=noise, overwrite=overwrite,
            strip_rows=strip_rows,
        )  # fmt: skip
    else:
        from cnnpipe.testing.craters import crater_files, make_crater_catalog, write_craters

        check_outputs(list(crater_files(out, truth=truth).all), overwrite=overwrite)
        field = make_crater_catalog(
            size, seed=seed, r_min=3.0 if r_min is None else r_min,
            r_max=60.0 if r_max is None else r_max, slope=2.0 if slope is None else slope,
        )  # fmt: skip
        files = write_craters(
            field, out, truth=truth, dem=dem, noise=noise, overwrite=overwrite,
            strip_rows=strip_rows,
        )  # fmt: skip
    for path in files.all:
        click.echo(str(path))
