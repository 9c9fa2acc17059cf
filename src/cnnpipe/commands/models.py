"""``cnnpipe models``: built-in architectures and bundled demo models (no torch)."""

from __future__ import annotations

import json

import click

from cnnpipe.commands.options import json_option
from cnnpipe.inspection import ARCHITECTURES, DEMO_LINE, demo_models

__all__ = ["command"]


@click.command(name="models")
@json_option
def command(as_json: bool) -> None:
    """List the built-in architectures (for `cnnpipe export`) and bundled demo models."""
    demos = demo_models()
    if as_json:
        doc = {
            "architectures": [a.to_dict() for a in ARCHITECTURES.values()],
            "demo_models": demos,
        }
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    click.echo("Built-in architectures (cnnpipe export NAME --bands ... --out M.onnx):")
    for a in ARCHITECTURES.values():
        geo = f"patch {a.patch}" if a.patch else f"any size (multiple {a.multiple_rule})"
        opts = " ".join(f"{k}={v}" for k, v in a.options.items())
        click.echo(f"  {a.name:<13} {a.task.value:<9} {geo}; {a.description}")
        click.echo(f"  {'':<13} classes {','.join(a.classes)}; options {opts}")
    click.echo(f"Bundled demo models ({DEMO_LINE}):")
    if not demos:
        click.echo("  none installed")
    for d in demos:
        if "error" in d:
            click.echo(f"  {d['name']:<13} {d['path']}  (unreadable: {d['error']})")
        else:
            click.echo(
                f"  {d['name']:<13} {d['task']:<9} bands {','.join(d['bands'])}  {d['path']}"
            )
