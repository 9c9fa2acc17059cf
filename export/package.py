"""Writing a model package: option parsing, metadata, variants, validation, atomic save.

Torch-free, so that ``cnnpipe export --from-onnx`` (see :mod:`cnnpipe.export.annotate`)
works without PyTorch; :mod:`cnnpipe.export.exporter` adds the torch side.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata as _md
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cnnpipe.errors import ConfigError, ExportError, ModelError, ParityError
from cnnpipe.export.graphopt import optimise_graph
from cnnpipe.export.precision import Precision, make_variant
from cnnpipe.export.validate import (
    Agreement,
    check_onnx,
    compare,
    ensure_finite,
    ort_session,
    run_session,
)
from cnnpipe.modelmeta import METADATA_KEY, ModelMeta, Normalisation

__all__ = [
    "ExportReport",
    "VariantLimits",
    "check_writable",
    "finish_package",
    "merge_meta",
    "parse_bands",
    "parse_classes",
    "parse_normalisation",
    "provenance",
    "save_package",
]

_MAX_BYTES = 2**31 - 1  # protobuf's limit for a single-file model


def parse_bands(text: str) -> tuple[str, ...]:
    """Parse ``"g,r,i"`` into band names; reject empty lists, empty names and duplicates."""
    bands = tuple(b.strip() for b in text.split(","))
    if not text.strip() or any(not b for b in bands):
        msg = f"Expected a comma-separated list of band names such as 'g,r,i'. Got {text!r}."
        raise ConfigError(msg)
    dupes = sorted({b for b in bands if bands.count(b) > 1})
    if dupes:
        msg = f"Expected distinct band names. Got {list(bands)} ({dupes} repeated)."
        raise ConfigError(msg)
    return bands


def parse_classes(text: str) -> tuple[str, ...]:
    """Parse ``"star,disk"`` into class names (non-empty, distinct)."""
    classes = tuple(c.strip() for c in text.split(","))
    if any(not c for c in classes) or len(set(classes)) != len(classes):
        msg = f"Expected a comma-separated list of distinct class names. Got {text!r}."
        raise ConfigError(msg)
    return classes


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        msg = f"Expected a number in the normalisation parameters. Got {text!r}."
        raise ConfigError(msg) from None


def parse_normalisation(text: str) -> Normalisation:
    """Parse ``METHOD[:KEY=VALUE,...]`` into a validated :class:`Normalisation`.

    Examples: ``none``, ``standardise``, ``asinh:scale=2.5``,
    ``asinh:scale=1,offset=0``, ``fixed:mean=0.1,0.2,std=1.5,2`` (a key's value runs up to
    the next ``key=``; ``mean``/``std`` are always lists).
    """
    method, _, rest = text.strip().partition(":")
    params: dict[str, Any] = {}
    if rest:
        for part in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", rest):
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq or not key:
                msg = f"Expected normalisation parameters as key=value. Got {part!r} in {text!r}."
                raise ConfigError(msg)
            values = [_number(v.strip()) for v in value.split(",") if v.strip()]
            if not values:
                msg = f"Expected a value for normalisation parameter {key!r}. Got {text!r}."
                raise ConfigError(msg)
            params[key] = values if key in ("mean", "std") or len(values) > 1 else values[0]
    try:
        return Normalisation(method=method.strip(), params=params)  # type: ignore[arg-type]
    except ModelError as exc:
        raise ConfigError(str(exc)) from None


def check_writable(out: str | Path) -> Path:
    """Return ``out`` as a Path if a file can be written there; raise :class:`ExportError`."""
    path = Path(out)
    if path.is_dir():
        msg = f"{path}: is a directory; expected an output file such as model.onnx."
        raise ExportError(msg)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        msg = f"{path}: cannot write the model, folder {parent} does not exist."
        raise ExportError(msg)
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        msg = f"{path}: cannot write the model, no write permission."
        raise ExportError(msg)
    return path


def _version(dist: str) -> str | None:
    try:
        return _md.version(dist)
    except _md.PackageNotFoundError:
        return None


def provenance(**extra: Any) -> dict[str, Any]:
    """Return versions of the toolchain and the UTC date, updated with ``extra``."""
    from cnnpipe import __version__

    prov: dict[str, Any] = {
        "cnnpipe": __version__,
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    prov.update(extra)
    return prov


def merge_meta(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Merge a partial metadata document over ``base`` (one level deep for sub-objects)."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "params":
            sub = dict(merged[key])
            sub.update(value)
            merged[key] = sub
        else:
            merged[key] = value
    return merged


def load_meta_file(path: str | Path) -> dict[str, Any]:
    """Read a partial metadata JSON document (``--metadata FILE``)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        msg = f"{path}: cannot read metadata file ({exc.strerror})."
        raise ModelError(msg) from None
    except json.JSONDecodeError as exc:
        msg = f"{path}: expected JSON metadata. Got a parse error: {exc}."
        raise ModelError(msg) from None
    if not isinstance(data, dict):
        msg = f"{path}: expected a JSON object of metadata. Got {type(data).__name__}."
        raise ModelError(msg)
    return data


def initializers_sha256(model: Any) -> str:
    """sha256 over the graph's initializers (name, dtype, shape, bytes) in name order."""
    from onnx import numpy_helper

    h = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        arr = numpy_helper.to_array(init)
        h.update(init.name.encode())
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def save_package(model: Any, meta: ModelMeta, out: str | Path) -> int:
    """Write ``model`` with ``meta`` under ``metadata_props['cnnpipe']`` as one file.

    The file appears atomically (written next to ``out``, then renamed).  Returns its size
    in bytes.
    """
    import onnx

    path = check_writable(out)
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.add(key=p.key, value=p.value)
    model.metadata_props.add(key=METADATA_KEY, value=meta.to_json())
    size = model.ByteSize()
    if size > _MAX_BYTES:
        msg = f"{path}: model is {size / 1e9:.1f} GB; single-file packages must be < 2 GB."
        raise ExportError(msg)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp, save_as_external_data=False)
        # mkstemp makes the file owner-only; a model package is read by other users
        # (cluster workers, package data), so give it the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        msg = f"{path}: cannot write the model ({exc.strerror})."
        raise ExportError(msg) from None
    return path.stat().st_size


@dataclass(frozen=True, kw_only=True)
class VariantLimits:
    """Acceptance limits for reduced-precision variants against the fp32 model.

    Attributes
    ----------
    fp16_tolerance : float
        Largest max abs output difference accepted for fp16.
    int8_tolerance : float
        Largest *mean* abs output difference accepted for int8 (single values may move
        by a quantisation step or two).
    min_agreement : float
        Smallest fraction of patches/pixels whose argmax class (probabilities) or side of
        0.5 (heat maps) must agree, for fp16 and int8.
    """

    fp16_tolerance: float = 1e-2
    int8_tolerance: float = 0.05
    min_agreement: float = 0.9


@dataclass(frozen=True, kw_only=True)
class ExportReport:
    """What an export wrote and how it was validated."""

    path: Path
    meta: ModelMeta
    size_bytes: int
    checks: tuple[Agreement, ...] = ()
    receptive_radius: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        m = self.meta
        geo = (
            f"patch {m.input.patch[0]}x{m.input.patch[1]}"
            if m.input.patch
            else f"any size (multiple of {m.input.multiple})"
        )
        rf = "" if self.receptive_radius is None else f", receptive radius {self.receptive_radius}"
        out = [
            f"wrote {self.path} ({self.size_bytes / 1e6:.2f} MB, "
            f"{m.provenance.get('precision', 'fp32')})",
            f"model {m.name} {m.version}: task {m.task.value}, bands {','.join(m.bands)}, "
            f"{geo}, halo {m.input.halo}{rf}",
        ]
        out += [c.describe() for c in self.checks]
        out += list(self.notes)
        return out


def _agreement_value(a: Agreement) -> float | None:
    return a.argmax_agreement if a.argmax_agreement is not None else a.threshold_agreement


def finish_package(
    model: Any,
    meta: ModelMeta,
    out: str | Path,
    *,
    inputs: Sequence[tuple[str, npt.NDArray[np.float32]]],
    precision: Precision | str = Precision.FP32,
    calibration: npt.NDArray[np.float32] | None = None,
    limits: VariantLimits | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[ModelMeta, int, list[Agreement]]:
    """Make the requested variant of a checked fp32 model, validate it, and save it.

    Parameters
    ----------
    model : onnx.ModelProto
        The fp32 model (already checked and compared with its reference).
    meta : ModelMeta
        Metadata to write; ``provenance['precision']`` and the variant's agreement with
        fp32 are added.
    out : path
        The file to write.
    inputs : sequence of (label, (n, c, y, x) float32)
        Normalised patches to compare the variant with fp32 on.
    precision : {'fp32', 'fp16', 'int8'}
        Precision of the written model.
    calibration : (n, c, y, x) float32, optional
        Normalised calibration patches (int8 only).
    limits : VariantLimits, optional
        Acceptance limits (default :class:`VariantLimits`).
    log : callable, optional
        Receives one line per agreement check.

    Returns
    -------
    (meta written, file size in bytes, agreements of the variant with fp32)

    Raises
    ------
    ParityError
        The variant disagrees with fp32 beyond ``limits``.
    """
    precision = Precision(precision)
    limits = limits or VariantLimits()
    model, rewrites = _rewrite(model, inputs)
    checks: list[Agreement] = []
    written = model
    if precision is not Precision.FP32:
        written = make_variant(
            model, precision, calibration=calibration, input_name=meta.input.name
        )
        check_onnx(written, what=f"{precision.value} model")
        ref_sess, var_sess = ort_session(model), ort_session(written)
        tol = limits.fp16_tolerance if precision is Precision.FP16 else limits.int8_tolerance
        for label, x in inputs:
            ref = run_session(ref_sess, x)
            got = run_session(var_sess, x)
            ensure_finite(got, what=f"The {precision.value} model")
            a = compare(
                ref, got, kind=meta.output.kind, tolerance=tol,
                label=f"{precision.value} vs fp32, {label}",
            )
            checks.append(a)
            if log:
                log(a.describe())
            err = a.max_abs_error if precision is Precision.FP16 else a.mean_abs_error
            agree = _agreement_value(a)
            if err > tol or (agree is not None and agree < limits.min_agreement):
                which = "max" if precision is Precision.FP16 else "mean"
                msg = (
                    f"The {precision.value} model disagrees with fp32 on {label}: {which} abs "
                    f"error {err:.3g} (limit {tol:g})"
                    + (f", agreement {agree:.3f} (minimum {limits.min_agreement:g})"
                       if agree is not None else "")
                    + "; keep fp32 or relax the limit."
                )
                raise ParityError(msg)
    prov = dict(meta.provenance)
    prov["precision"] = precision.value
    if rewrites:
        prov["graph_rewrites"] = rewrites
    if checks:
        prov["variant_agreement"] = {c.label: c.to_dict() for c in checks}
    meta = meta.replace(provenance=prov)
    size = save_package(written, meta, out)
    return meta, size, checks


#: largest output difference an exact graph rewrite may cause (float32 rounding only)
REWRITE_TOLERANCE = 1e-5


def _rewrite(
    model: Any, inputs: Sequence[tuple[str, npt.NDArray[np.float32]]]
) -> tuple[Any, dict[str, int]]:
    """The fp32 model with :func:`~cnnpipe.export.graphopt.optimise_graph` applied.

    The rewrites are exact; the outputs are checked on ``inputs`` anyway, so that a
    rewrite bug can never ship a model that computes something else.
    """
    fast, rewrites = optimise_graph(model)
    if not rewrites:
        return model, {}
    check_onnx(fast, what="the rewritten fp32 model")
    before, after = ort_session(model), ort_session(fast)
    for label, x in inputs:
        diff = float(np.max(np.abs(run_session(before, x) - run_session(after, x))))
        if not diff <= REWRITE_TOLERANCE:
            msg = (
                f"Graph rewrite {sorted(rewrites)} changed the outputs on {label} by "
                f"{diff:.3g} (limit {REWRITE_TOLERANCE:g}): a cnnpipe bug; please report it."
            )
            raise ExportError(msg)
    return fast, rewrites


def agreement_fail(a: Agreement, *, what: str) -> None:
    """Raise :class:`ParityError` when an fp32 parity check is above its tolerance."""
    if not a.ok:
        msg = (
            f"{what} disagree on {a.label.split(', ', 1)[-1]}: max abs error "
            f"{a.max_abs_error:.3g} > tolerance {a.tolerance:g}."
        )
        raise ParityError(msg)
