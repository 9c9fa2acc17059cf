"""``cnnpipe craters``: crater size-frequency distribution and model age of a run store."""

from __future__ import annotations

import json

import click

__all__ = ["command"]


@click.command("craters")
@click.argument("store", metavar="OUT.zarr", type=click.Path(exists=True, file_okay=False))
@click.option("--model", metavar="NAME",
              help="Craters model (may be left out for a one-model store).")
@click.option("--image", metavar="KEY", help="One image of the store [default: each].")
@click.option("--body", type=click.Choice(["MOON", "MARS"], case_sensitive=False),
              help="Production/chronology system [default: the BODY header card].")
@click.option("--d-min", "d_min", type=click.FloatRange(min=0, min_open=True), metavar="KM",
              help="Smallest diameter of the age fit [default: 10 px].")
@click.option("--d-max", "d_max", type=click.FloatRange(min=0, min_open=True), metavar="KM",
              help="Largest diameter of the age fit [default: none].")
@click.option("--plot", metavar="SFD.png", help="Draw the CSFD with the fitted isochron.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def command(store: str, model: str | None, image: str | None, body: str | None,
            d_min: float | None, d_max: float | None, plot: str | None,
            as_json: bool) -> None:
    """Crater density, cumulative size-frequency distribution and model age per image.

    Ages use Neukum et al. (2001) for the Moon and Ivanov (2001) for Mars, fitted by
    Poisson maximum likelihood with 1-sigma errors.
    """
    from pathlib import Path

    from cnnpipe.pipeline.craterstats import crater_stats
    from cnnpipe.plotting import plot_csfd

    stats = crater_stats(store, model, image=image, body=body, d_min_km=d_min, d_max_km=d_max)
    for s in stats:
        if plot:
            target = Path(plot)
            if len(stats) > 1:
                target = target.with_name(f"{target.stem}_{s.image}{target.suffix}")
            plot_csfd(s.diameters_km, s.area_km2, body=s.body, fit=s.fit, path=target,
                      title=f"{s.image} ({s.body})")
            if not as_json:
                click.echo(f"plot: {target}")
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in stats], indent=2))
    else:
        for s in stats:
            for line in s.lines():
                click.echo(line)
