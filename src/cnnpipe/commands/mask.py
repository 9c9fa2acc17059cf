"""``cnnpipe mask``: write a model's class mask of one image as a FITS file."""

from __future__ import annotations

import click

__all__ = ["command"]


@click.command("mask")
@click.argument("store", metavar="OUT.zarr", type=click.Path(exists=True, file_okay=False))
@click.option("--model", metavar="NAME",
              help="Model whose mask to write (may be left out for a one-model store).")
@click.option("--fits", "output", required=True, metavar="OUT.fits", help="Output FITS file.")
@click.option("--image", metavar="KEY",
              help="Image key in the store (may be left out for a one-image store).")
@click.option("--allow-incomplete", is_flag=True,
              help="Write the mask of a store whose run has not finished.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def command(store: str, model: str | None, output: str, image: str | None,
            allow_incomplete: bool, overwrite: bool) -> None:
    """Write a uint8 class mask with the image's WCS (BLANK = 255: no data)."""
    from cnnpipe.pipeline.exports import write_mask_fits

    path = write_mask_fits(store, model, output, image=image, overwrite=overwrite,
                           allow_incomplete=allow_incomplete)
    click.echo(path)
