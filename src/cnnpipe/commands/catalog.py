"""``cnnpipe catalog``: export a model's catalog from a run store."""

from __future__ import annotations

import click

__all__ = ["command"]


@click.command("catalog")
@click.argument("store", metavar="OUT.zarr", type=click.Path(exists=True, file_okay=False))
@click.option("--model", metavar="NAME",
              help="Model whose catalog to export (may be left out for a one-model store).")
@click.option("--format", "fmt",
              type=click.Choice(["parquet", "fits", "votable", "ecsv", "csv"]),
              help="Output format [default: from the -o suffix].")
@click.option("-o", "--output", required=True, metavar="FILE", help="Output file.")
@click.option("--allow-incomplete", is_flag=True,
              help="Export a store whose run has not finished (units done so far).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def command(store: str, model: str | None, fmt: str | None, output: str,
            allow_incomplete: bool, overwrite: bool) -> None:
    """Export a catalog as Parquet, FITS, VOTable, ECSV or CSV.

    All but CSV keep each column's unit and description (ECSV in a '#' header, then
    comma-separated rows). CSV is plain: one line of column names, then the rows, for
    pandas and spreadsheets.
    """
    from cnnpipe.pipeline.exports import catalog_table, format_for, write_table

    fmt = format_for(output, fmt)
    table = catalog_table(store, model, allow_incomplete=allow_incomplete)
    write_table(table, output, fmt, overwrite=overwrite)
    click.echo(f"{output}: {len(table)} rows of model {table.meta['model']} ({fmt})")
