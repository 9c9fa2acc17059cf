"""``cnnpipe nightly``: process a night's new inputs once each; quarantine bad ones."""

from __future__ import annotations

import logging
import re
import sys

import click

__all__ = ["command"]


def _night(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        msg = f"Expected a date YYYY-MM-DD. Got {value!r}."
        raise click.BadParameter(msg, ctx=ctx, param=param)
    return value


@click.command("nightly")
@click.argument("config_path", metavar="CONFIG.toml")
@click.option("--night", callback=_night, metavar="YYYY-MM-DD",
              help="The night to process [default: the UTC date 12 hours ago].")
@click.option("--dry-run", is_flag=True,
              help="List the night's inputs and what would happen to each; run nothing.")
@click.option("--log-format", type=click.Choice(["auto", "text", "json"]), default="auto",
              show_default=True, envvar="CNNPIPE_LOG_FORMAT",
              help="json: one JSON object per log line (auto: json unless on a terminal).")
@click.option("--no-plots", is_flag=True, help="Leave the quick-look PNGs out of the report.")
def command(config_path: str, night: str | None, dry_run: bool, log_format: str,
            no_plots: bool) -> None:
    """Run the configured models over every new input of the night, exactly once.

    Inputs already in the ledger are skipped, an interrupted night resumes, a corrupt
    input is quarantined with its reason while the others go on. Writes a JSON report
    and a Markdown summary with quick-looks. Exit codes: 0 all done, 1 failed,
    2 configuration error, 3 done with quarantined inputs.
    """
    from cnnpipe.pipeline.nightly import (
        JsonFormatter,
        NightlyConfig,
        default_night,
        find_inputs,
        run_nightly,
    )

    config = NightlyConfig.from_toml(config_path)
    night = night or default_night()
    if dry_run:
        inputs = find_inputs(config.inputs, night)
        click.echo(f"night {night}: partition {config.night_dir(night)}, {len(inputs)} input(s)")
        for p in inputs:
            click.echo(f"  {p}")
        return
    if log_format == "json" or (log_format == "auto" and not sys.stderr.isatty()):
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    report = run_nightly(config, night, plots=not no_plots)
    c = report.this_invocation
    click.echo(
        f"night {night}: {c['found']} input(s): {c['done']} done, {c['skipped']} already "
        f"done, {c['quarantined']} quarantined, {c['failed']} failed; report "
        f"{config.reports / (night + '.md')}"
    )
    sys.exit(report.exit_code)
