"""``cnnpipe run``: run models over FITS images on a Dask cluster into a Zarr store."""

from __future__ import annotations

import click

from cnnpipe.commands.options import AutoOrPositiveInt

__all__ = ["command"]


def _parse_bands(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
    out = []
    for item in value:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            msg = f"Expected NAME=FILE (e.g. g=survey_g.fits). Got {item!r}."
            raise click.BadParameter(msg, ctx=ctx, param=param)
        out.append((name, path))
    return tuple(out)


@click.command("run")
@click.argument("images", nargs=-1, metavar="SURVEY.fits [MORE.fits ...]")
@click.option("--model", "models", multiple=True, required=True, metavar="M.onnx",
              help="ONNX model package, or a bundled demo model's name (`cnnpipe models`); "
                   "repeat for several models (one read of the pixels).")
@click.option("--out", required=True, metavar="OUT.zarr", help="Output Zarr store.")
@click.option("--band", "bands", multiple=True, metavar="NAME=FILE", callback=_parse_bands,
              help="One file per band of a multi-band image (repeat).")
@click.option("--hdu", metavar="H", help="HDU index or EXTNAME[,EXTVER] to read.")
@click.option("--scheduler", metavar="ADDRESS", envvar="CNNPIPE_SCHEDULER",
              help="Existing Dask scheduler (default: start a local cluster).")
@click.option("--tls-ca-file", metavar="CA.pem", envvar="CNNPIPE_TLS_CA_FILE",
              help="CA certificate of a tls:// scheduler (mutual TLS, with --tls-cert/-key).")
@click.option("--tls-cert", metavar="CERT.pem", envvar="CNNPIPE_TLS_CERT",
              help="This client's certificate for a tls:// scheduler.")
@click.option("--tls-key", metavar="KEY.pem", envvar="CNNPIPE_TLS_KEY",
              help="This client's private key for a tls:// scheduler.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Local cluster worker processes [default: cores // 4, at least 1, on a "
                   "CPU; 1 on a GPU].")
@click.option("--threads", type=click.IntRange(min=1),
              help="Dask threads per local worker process: units in flight [default: 2 on a "
                   "CPU, 1 on a GPU; with fewer units to do, 1 worker with a thread per "
                   "unit].")
@click.option("--ort-threads", type=click.IntRange(min=1),
              help="onnxruntime intra-op threads per session [default: cores // (workers x "
                   "threads); 1 per Dask thread with --scheduler].")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
              envvar="CNNPIPE_DEVICE", show_default=True,
              help="gpu fails unless CUDA is really active on every worker.")
@click.option("--tensorrt", is_flag=True, help="Use TensorRT in front of CUDA.")
@click.option("--resume/--overwrite", "resume", default=True, show_default=True,
              help="Continue a store of the same configuration, or replace the store.")
@click.option("--tile", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Work unit and output chunk size, pixels.")
@click.option("--patch", type=AutoOrPositiveInt(), default="auto", show_default=True,
              help="Patch size of fully convolutional models, halo included, pixels; auto: "
                   "per model, the patch that covers a unit with the fewest pixels "
                   "(at most 1.25 Mpix a patch).")
@click.option("--batch", type=AutoOrPositiveInt(), default="auto", show_default=True,
              help="Patches per inference call; auto: as many as fill 1.25 Mpix (GPUs "
                   "want more).")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Extra attempts of a failing work unit.")
@click.option("--catalog", metavar="POSITIONS|windows",
              help="What classify models catalog: the positions in a FITS table, Parquet, "
                   "CSV or VOTable file with ra/dec (deg) or x/y (0-based pixels) columns; "
                   "'windows': every sliding window of the class map, one row each "
                   "[default: sources detected with sep].")
@click.option("--catalog-origin", type=click.Choice(["0", "1"]), default="0",
              show_default=True,
              help="Pixel origin of the catalog's x/y columns (1: FITS/ds9 convention).")
@click.option("--dry-run", is_flag=True,
              help="Print images, units, patches, tasks and memory; run nothing.")
def command(
    images: tuple[str, ...],
    models: tuple[str, ...],
    out: str,
    bands: tuple[tuple[str, str], ...],
    hdu: str | None,
    scheduler: str | None,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    workers: int | None,
    threads: int | None,
    ort_threads: int | None,
    device: str,
    tensorrt: bool,
    resume: bool,
    tile: int,
    patch: int | None,
    batch: int | None,
    retries: int,
    catalog: str | None,
    catalog_origin: str,
    dry_run: bool,
) -> None:
    """Run models over FITS images into a Zarr store (resumable, locked)."""
    from cnnpipe.pipeline.config import Device, RunConfig, StoreMode
    from cnnpipe.pipeline.progress import make_reporter
    from cnnpipe.pipeline.runner import dry_run as describe
    from cnnpipe.pipeline.runner import run

    config = RunConfig(
        inputs=images, models=models, out=out, band_files=bands, hdu=hdu,
        scheduler=scheduler, workers=workers, threads=threads, ort_threads=ort_threads,
        device=Device(device), tensorrt=tensorrt,
        mode=StoreMode.RESUME if resume else StoreMode.OVERWRITE,
        tile=tile, patch=patch, batch=batch, retries=retries, catalog=catalog,
        catalog_origin=int(catalog_origin), tls_ca_file=tls_ca_file, tls_cert=tls_cert,
        tls_key=tls_key,
    )
    if dry_run:
        for line in describe(config):
            click.echo(line)
        return
    summary = run(config, reporter=make_reporter(every_s=config.log_every))
    for line in summary.lines():
        click.echo(line)
