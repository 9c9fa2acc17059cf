"""``cnnpipe export``: PyTorch model (or plain ONNX) -> validated cnnpipe model package.

ARCH is a built-in architecture (``cnnpipe models``) or ``module:factory``.  A factory is
called as ``factory(in_channels=len(bands), num_classes=len(classes), **arch_opts)``,
passing only the keywords its signature accepts (so a no-argument factory works too),
and must return a ``torch.nn.Module`` ending in its activation.  ``--from-onnx`` annotates
an existing ONNX model instead and needs no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cnnpipe.errors import ConfigError

__all__ = ["command"]

_TASKS = ["classify", "craters", "segment"]
_KINDS = ["probabilities", "logits", "heatmap"]
_PATH = click.Path(path_type=Path)
_EXISTING = click.Path(exists=True, dir_okay=False, path_type=Path)


def _key_values(items: tuple[str, ...], *, what: str, ints: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            msg = f"Expected {what} as KEY=VALUE. Got {item!r}."
            raise ConfigError(msg)
        if ints:
            try:
                out[key.strip()] = int(value)
            except ValueError:
                msg = f"Expected an integer for {what} {key.strip()}. Got {value!r}."
                raise ConfigError(msg) from None
        else:
            try:
                out[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                out[key.strip()] = value
    return out


@click.command(name="export")
@click.argument("arch", required=False, metavar="[ARCH|module:factory]")
@click.option("--weights", type=_EXISTING, help="Checkpoint (state_dict); omit for random init.")
@click.option("--task", type=click.Choice(_TASKS), help="Task (default: the architecture's).")
@click.option("--bands", required=True, help="Input channel order, e.g. g,r,i.")
@click.option("-o", "--out", required=True, type=_PATH, help="Model package to write (.onnx).")
@click.option("--name", help="Model name (default: the architecture's).")
@click.option("--model-version", "version", help="Model version string.")
@click.option("--classes", help="Class names, one per output channel, e.g. star,disk.")
@click.option("--patch", type=int, help="Fixed patch side in pixels.")
@click.option("--halo", type=int, help="Declare the halo (default: from the receptive field).")
@click.option("--multiple", type=int, help="Size multiple of a fully convolutional factory.")
@click.option(
    "--normalisation",
    help="none | standardise | minmax | asinh:scale=1.0[,offset=0] | fixed:mean=..,std=..",
)
@click.option("--output-kind", type=click.Choice(_KINDS), help="What the output holds.")
@click.option("--pixel-scale", type=float, help="Pixel scale the model assumes (arcsec or m).")
@click.option("--postprocess", multiple=True, metavar="KEY=VALUE",
              help="Post-processing default (repeatable), e.g. threshold=0.4.")
@click.option("--arch-opt", multiple=True, metavar="KEY=INT",
              help="Architecture option (repeatable), e.g. base=16 depth=4.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32",
              show_default=True, help="Precision of the written model.")
@click.option("--quantize", type=click.Choice(["int8"]), help="Write a static int8 (QDQ) model.")
@click.option("--calibrate", multiple=True, type=_EXISTING, metavar="FITS",
              help="FITS image for int8 calibration and parity (repeatable).")
@click.option("--parity-fits", multiple=True, type=_EXISTING, metavar="FITS",
              help="FITS image for real-patch parity (repeatable).")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Max abs error onnxruntime vs torch.")
@click.option("--fp16-tolerance", type=float, default=1e-2, show_default=True,
              help="Max abs error fp16 vs fp32.")
@click.option("--int8-tolerance", type=float, default=0.05, show_default=True,
              help="Mean abs error int8 vs fp32.")
@click.option("--min-agreement", type=float, default=0.9, show_default=True,
              help="Minimum argmax (or 0.5-threshold) agreement of fp16/int8 with fp32.")
@click.option("--from-onnx", type=_EXISTING, help="Annotate this ONNX model (no torch).")
@click.option("--metadata", "metadata_file", type=_EXISTING,
              help="JSON file with (partial) cnnpipe.model/1 metadata.")
@click.option("--demo", is_flag=True, help="Label as a demo model trained on simulated data.")
@click.option("--description", help="Free-text description.")
@click.option("--licence", help="Licence of the weights, e.g. CC-BY-4.0.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
def command(**kw: Any) -> None:
    """Export ARCH (built-in or module:factory) or --from-onnx to a model package.

    The package is one ONNX file with cnnpipe.model/1 metadata, checked with the ONNX
    checker and compared with PyTorch (random and real patches); the max abs errors are
    printed and the export fails above --tolerance.
    """
    from cnnpipe.export.package import VariantLimits, parse_bands, parse_classes
    from cnnpipe.export.package import parse_normalisation as parse_norm
    from cnnpipe.export.precision import Precision
    from cnnpipe.export.request import ExportRequest

    if kw["quantize"] and kw["precision"] != "fp32":
        msg = "Expected one of --precision fp16 and --quantize int8. Got both."
        raise ConfigError(msg)
    precision = Precision.INT8 if kw["quantize"] else Precision(kw["precision"])
    request = ExportRequest(
        source=kw["arch"],
        from_onnx=kw["from_onnx"],
        out=kw["out"],
        bands=parse_bands(kw["bands"]),
        task=kw["task"],
        name=kw["name"],
        version=kw["version"],
        classes=parse_classes(kw["classes"]) if kw["classes"] else None,
        patch=kw["patch"],
        halo=kw["halo"],
        multiple=kw["multiple"],
        normalisation=parse_norm(kw["normalisation"]) if kw["normalisation"] else None,
        output_kind=kw["output_kind"],
        pixel_scale=kw["pixel_scale"],
        postprocess=_key_values(kw["postprocess"], what="--postprocess", ints=False) or None,
        description=kw["description"],
        licence=kw["licence"],
        demo=kw["demo"],
        metadata_file=kw["metadata_file"],
        weights=kw["weights"],
        options=_key_values(kw["arch_opt"], what="--arch-opt", ints=True),
        precision=precision,
        tolerance=kw["tolerance"],
        limits=VariantLimits(
            fp16_tolerance=kw["fp16_tolerance"],
            int8_tolerance=kw["int8_tolerance"],
            min_agreement=kw["min_agreement"],
        ),
        calibrate=tuple(kw["calibrate"]),
        parity_fits=tuple(kw["parity_fits"]),
        seed=kw["seed"],
    )
    if request.from_onnx is not None:
        from cnnpipe.export.annotate import annotate_onnx

        if request.weights is not None or request.options:
            msg = "Expected no --weights or --arch-opt with --from-onnx (the graph has them)."
            raise ConfigError(msg)
        report = annotate_onnx(request)
    else:
        try:
            from cnnpipe.export.exporter import export_request
        except ImportError as exc:
            msg = (
                f"Exporting from PyTorch needs torch ({exc}); install cnnpipe[export] or "
                "use --from-onnx."
            )
            raise ConfigError(msg) from None
        report = export_request(request)
    for line in report.lines():
        click.echo(line)
