"""The ``cnnpipe`` command group.

Commands live one per module in :mod:`cnnpipe.commands` and are imported only when
invoked, so ``cnnpipe run`` never pays for (or needs) torch.  Library errors
(:class:`~cnnpipe.errors.CnnpipeError`) become one line on stderr and their exit code;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

from cnnpipe import __version__
from cnnpipe.errors import CnnpipeError
from cnnpipe.pipeline.malloc import tune_malloc

__all__ = ["COMMANDS", "cli", "main"]

#: command name -> (module in cnnpipe.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("export", "Export a PyTorch model to a self-describing ONNX package."),
    "inspect": ("inspect", "Show a model package's metadata, I/O and execution providers."),
    "models": ("models", "List built-in architectures and bundled demo models."),
    "simulate": ("simulate", "Simulate a survey image or crater field with truth catalogs."),
    "run": ("run", "Run models over FITS images on a Dask cluster into a Zarr store."),
    "catalog": ("catalog", "Export a model's catalog from a run store (Parquet, FITS, ...)."),
    "mask": ("mask", "Write a model's class mask of one image as a FITS file."),
    "craters": ("craters", "Crater size-frequency distribution and model age of a store."),
    "nightly": ("nightly", "Process a night's new inputs exactly once; quarantine bad ones."),
    "demo": ("demo", "Simulate a small survey and run the bundled demo models on it."),
}


class LazyGroup(click.Group):
    """A click group that imports each command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module = importlib.import_module(f"cnnpipe.commands.{COMMANDS[cmd_name][0]}")
        command: click.Command = module.command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CnnpipeError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"cnnpipe: error: {exc}", err=True)
            ctx.exit(exc.exit_code)


class _TaskFailureFilter(logging.Filter):
    """Drops distributed's "Compute Failed" records of an in-process worker.

    They carry the failed task's traceback; cnnpipe itself reports a work unit that
    still fails after its retries as one line (``-vv`` shows them again).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Compute Failed")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnnpipe")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("--debug", is_flag=True, envvar="CNNPIPE_DEBUG", help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, debug: bool) -> None:
    """Batch CNN inference over large FITS survey images."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    if verbose == 0 and not quiet:
        level = logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    quiet_libs = verbose < 2
    # distributed configures its own loggers from dask config when first imported (later,
    # lazily, and in every worker process): say the level there, not only here.
    if quiet_libs:
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    for noisy in ("distributed", "bokeh", "tornado", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if quiet_libs else level)
    # LocalCluster(silence_logs=...) quiets distributed's own handler only: an in-process
    # worker's task failures still reach ours
    worker_log = logging.getLogger("distributed.worker")
    for old in [f for f in worker_log.filters if isinstance(f, _TaskFailureFilter)]:
        worker_log.removeFilter(old)
    if quiet_libs:
        worker_log.addFilter(_TaskFailureFilter())
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main() -> None:
    """Console-script entry point."""
    # before any thread allocates (a thread keeps the arena it started with)
    tune_malloc()
    cli(prog_name="cnnpipe")
