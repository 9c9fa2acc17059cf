"""``cnnpipe demo``: simulate a small survey and crater field, run the demo models."""

from __future__ import annotations

import click

from cnnpipe.commands.options import seed_option

__all__ = ["command"]


@click.command("demo")
@click.option("--out", "folder", default="cnnpipe-demo", show_default=True, metavar="DIR",
              help="Folder for the simulated FITS files and the Zarr stores.")
@click.option("--size", type=click.IntRange(min=256), default=1024, show_default=True,
              help="Side of the simulated images, pixels.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Local Dask worker processes [default: from the CPU count].")
@seed_option
def command(folder: str, size: int, workers: int | None, seed: int) -> None:
    """Simulate a survey and a crater field, run the bundled demo models on them.

    Runs on an embedded local Dask cluster with the demo models shipped in the package
    (trained on cnnpipe's own simulations) and prints where the outputs are and what was
    found next to the simulation's truth.
    """
    from cnnpipe.demo import run_demo
    from cnnpipe.pipeline.progress import make_reporter

    result = run_demo(folder, size=size, seed=seed or 7, workers=workers,
                      reporter=make_reporter())
    for line in result.lines():
        click.echo(line)
