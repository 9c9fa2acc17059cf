"""``cnnpipe inspect``: a model package's metadata, I/O signature and providers (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cnnpipe.commands.options import json_option
from cnnpipe.errors import ModelError
from cnnpipe.inspection import DEMO_LINE, ModelInfo, inspect_model, signature_problems

__all__ = ["command", "describe"]


def describe(info: ModelInfo) -> list[str]:
    """Return the human-readable lines ``cnnpipe inspect`` prints."""
    lines = [f"file         {info.path} ({info.size_bytes / 1e6:.2f} MB, opset {info.opset})"]
    m = info.meta
    if m is None:
        lines.append(
            "metadata     none (annotate with `cnnpipe export --from-onnx MODEL.onnx ...`)"
        )
    else:
        if m.demo:
            lines.append(DEMO_LINE)
        geo = (
            f"patch {m.input.patch[0]}x{m.input.patch[1]}"
            if m.input.patch
            else "any size"
        )
        params = ", ".join(f"{k}={v}" for k, v in sorted(m.normalisation.params.items()))
        lines += [
            f"model        {m.name} {m.version} ({m.schema})",
            f"task         {m.task.value}",
            f"bands        {', '.join(m.bands)}",
            f"input        {m.input.name} {m.input.layout}, {geo}, halo {m.input.halo}, "
            f"multiple {m.input.multiple}",
            f"output       {m.output.name} {m.output.kind.value}: {', '.join(m.output.classes)}",
            f"normalise    {m.normalisation.method.value}" + (f" ({params})" if params else ""),
            f"postprocess  {json.dumps(m.postprocess, sort_keys=True)}",
            f"pixel scale  {m.pixel_scale if m.pixel_scale is not None else 'not assumed'}",
            f"precision    {m.provenance.get('precision', 'fp32')}",
            f"weights      sha256 {m.weights_sha256 or 'unknown'}",
            "provenance   "
            + ", ".join(
                f"{k} {m.provenance[k]}"
                for k in ("framework", "exporter", "onnx", "cnnpipe", "date")
                if m.provenance.get(k)
            ),
            f"licence      {m.licence}",
        ]
        if m.description:
            lines.append(f"description  {m.description}")
    lines += [f"graph input  {t}" for t in info.inputs]
    lines += [f"graph output {t}" for t in info.outputs]
    lines.append(f"providers    {', '.join(info.providers)}")
    return lines


@click.command(name="inspect")
@click.argument("model", type=click.Path(path_type=Path))
@json_option
def command(model: Path, as_json: bool) -> None:
    """Show MODEL's cnnpipe metadata, I/O signature and available execution providers.

    Exits non-zero when the metadata is invalid or contradicts the graph.
    """
    info = inspect_model(model)
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=2, sort_keys=True))
    else:
        for line in describe(info):
            click.echo(line)
    if info.meta is not None:
        problems = signature_problems(info.meta, info.inputs, info.outputs)
        if problems:
            msg = f"{model}: metadata does not fit the graph: {'; '.join(problems)}."
            raise ModelError(msg)
