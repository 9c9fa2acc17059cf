"""Checks an exported model must pass: ONNX checker, finite outputs, numerical agreement.

Also reads real patches from FITS files (astropy) for parity checks and int8 calibration.
No torch here: the reference outputs are computed by the caller and passed as arrays.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cnnpipe.errors import ExportError, InputError, ModelError, ParityError
from cnnpipe.modelmeta import ModelMeta, Normalisation, OutputKind
from cnnpipe.normalise import normalise

__all__ = [
    "Agreement",
    "band_images",
    "check_onnx",
    "compare",
    "ensure_finite",
    "ort_session",
    "random_patches",
    "read_fits_patches",
    "run_session",
]


@dataclass(frozen=True, kw_only=True)
class Agreement:
    """How closely a candidate model's outputs match a reference's on the same inputs.

    Attributes
    ----------
    label : str
        What was compared (e.g. ``"onnxruntime vs torch, random patches"``).
    n : int
        Number of patches.
    max_abs_error, mean_abs_error : float
        Over all output values.
    argmax_agreement : float or None
        For probabilities/logits: fraction of patches (classify) or pixels (segment)
        whose most probable class is the same.
    threshold_agreement : float or None
        For heat maps: fraction of pixels on the same side of 0.5.
    tolerance : float
        The limit ``max_abs_error`` was checked against.
    """

    label: str
    n: int
    max_abs_error: float
    mean_abs_error: float
    argmax_agreement: float | None
    threshold_agreement: float | None
    tolerance: float

    @property
    def ok(self) -> bool:
        """True when ``max_abs_error <= tolerance``."""
        return self.max_abs_error <= self.tolerance

    def describe(self) -> str:
        """One line: the label, the errors and the agreement."""
        s = (
            f"{self.label}: n={self.n} max abs error {self.max_abs_error:.3g} "
            f"(tolerance {self.tolerance:g}), mean {self.mean_abs_error:.3g}"
        )
        if self.argmax_agreement is not None:
            s += f", argmax agreement {self.argmax_agreement:.4f}"
        if self.threshold_agreement is not None:
            s += f", agreement at 0.5 {self.threshold_agreement:.4f}"
        return s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the metadata provenance)."""
        d: dict[str, Any] = {
            "n": self.n,
            "max_abs_error": float(self.max_abs_error),
            "mean_abs_error": float(self.mean_abs_error),
            "tolerance": self.tolerance,
        }
        if self.argmax_agreement is not None:
            d["argmax_agreement"] = self.argmax_agreement
        if self.threshold_agreement is not None:
            d["threshold_agreement"] = self.threshold_agreement
        return d


def compare(
    reference: npt.NDArray[Any],
    candidate: npt.NDArray[Any],
    *,
    kind: OutputKind,
    label: str,
    tolerance: float,
) -> Agreement:
    """Compare two output batches of the same shape (see :class:`Agreement`)."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        msg = f"{label}: expected output shape {ref.shape}. Got {cand.shape}."
        raise ParityError(msg)
    err = np.abs(ref - cand)
    argmax = threshold = None
    if kind in (OutputKind.PROBABILITIES, OutputKind.LOGITS) and ref.ndim >= 2 and ref.shape[1] > 1:
        argmax = float(np.mean(ref.argmax(axis=1) == cand.argmax(axis=1)))
    elif kind is OutputKind.HEATMAP:
        threshold = float(np.mean((ref > 0.5) == (cand > 0.5)))
    return Agreement(
        label=label,
        n=int(ref.shape[0]),
        max_abs_error=float(err.max()) if err.size else 0.0,
        mean_abs_error=float(err.mean()) if err.size else 0.0,
        argmax_agreement=argmax,
        threshold_agreement=threshold,
        tolerance=tolerance,
    )


def ensure_finite(values: npt.NDArray[Any], *, what: str) -> None:
    """Raise :class:`ExportError` when ``values`` hold NaN or inf."""
    bad = ~np.isfinite(values)
    if bad.any():
        msg = (
            f"{what} produced non-finite outputs (NaN/inf) in {int(bad.sum())} of "
            f"{bad.size} values; check the model and its normalisation."
        )
        raise ExportError(msg)


def check_onnx(model: Any, *, what: str) -> None:
    """Run ``onnx.checker.check_model(full_check=True)``; raise :class:`ExportError` on failure."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        msg = f"{what}: the ONNX checker rejects the model: {exc}"
        raise ExportError(msg) from None


def ort_session(model: Any) -> Any:
    """Create a CPU onnxruntime session from a path, bytes or an ``onnx.ModelProto``."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = min(2, os.cpu_count() or 1)
    opts.log_severity_level = 3
    if not isinstance(model, str | bytes | Path):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    try:
        return onnxruntime.InferenceSession(
            model, sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        msg = f"onnxruntime cannot load the exported model: {exc}"
        raise ExportError(msg) from None


def run_session(
    session: Any, inputs: npt.NDArray[np.float32], *, batch: int = 8
) -> npt.NDArray[np.float32]:
    """Run the session's first input/output over ``inputs`` in batches of ``batch``."""
    name = session.get_inputs()[0].name
    outs = [
        np.asarray(session.run(None, {name: inputs[i : i + batch]})[0], dtype=np.float32)
        for i in range(0, len(inputs), batch)
    ]
    return np.concatenate(outs, axis=0)


def random_patches(
    n: int, bands: int, height: int, width: int, *, seed: int, norm: Normalisation
) -> npt.NDArray[np.float32]:
    """Make ``(n, bands, height, width)`` normalised random patches (sky-like noise + sources).

    Raw values are a background of 100 counts with Gaussian noise of sigma 10 and a few
    bright point-like peaks, normalised as the model expects.
    """
    rng = np.random.default_rng(seed)
    raw = 100.0 + 10.0 * rng.standard_normal((n, bands, height, width))
    for _ in range(3):
        ys = rng.integers(0, height, n)
        xs = rng.integers(0, width, n)
        raw[np.arange(n), :, ys, xs] += rng.uniform(50, 500, (n, 1))
    return normalise(raw.astype(np.float32), norm)


def _image_hdus(path: Path) -> list[tuple[str, npt.NDArray[np.float32]]]:
    """Return ``(band name, data)`` per image HDU; the name is EXTNAME or FILTER or ''."""
    from astropy.io import fits

    if not path.is_file():
        msg = f"{path}: no such FITS file."
        raise InputError(msg)
    try:
        with fits.open(path, memmap=True) as hdul:
            out = []
            for hdu in hdul:
                if not hdu.is_image or hdu.header.get("NAXIS", 0) < 2 or hdu.data is None:
                    continue
                name = str(hdu.header.get("EXTNAME", "") or hdu.header.get("FILTER", ""))
                out.append((name.strip(), np.array(hdu.data, dtype=np.float32)))
            return out
    except (OSError, ValueError, TypeError) as exc:
        msg = f"{path}: cannot read FITS image ({type(exc).__name__}: {exc})."
        raise InputError(msg) from None


def band_images(
    paths: Sequence[str | Path], bands: Sequence[str]
) -> list[npt.NDArray[np.float32]]:
    """Read ``(c, y, x)`` images with the requested bands from FITS files.

    A file holds all bands as a ``(c, y, x)`` cube, as 2-D HDUs named after the bands
    (EXTNAME or FILTER, as ``cnnpipe simulate --mef`` writes), or as exactly ``c``
    unnamed 2-D HDUs in band order.  Files holding fewer bands (one file per band, named
    by FILTER, as ``cnnpipe simulate`` writes without ``--mef``) are grouped in order.

    Raises
    ------
    InputError
        Unreadable files, bands that cannot be found, or band images of unequal shape.
    """
    want = [b.lower() for b in bands]
    nb = len(want)
    images: list[npt.NDArray[np.float32]] = []
    pending: dict[str, tuple[Path, npt.NDArray[np.float32]]] = {}
    for p in paths:
        path = Path(p)
        hdus = _image_hdus(path)
        cubes = [d for _, d in hdus if d.ndim == 3 and d.shape[0] == nb]
        planes = [(n.lower(), d) for n, d in hdus if d.ndim == 2]
        named = {n: d for n, d in planes if n in want}
        if cubes:
            images.append(cubes[0])
            continue
        if len(named) == nb:
            stack = [named[b] for b in want]
        elif len(planes) == nb and not named:
            stack = [d for _, d in planes]
        elif named:
            for n, d in named.items():
                if n in pending:
                    msg = f"{path}: band {n!r} again before the other bands {bands} were found."
                    raise InputError(msg)
                pending[n] = (path, d)
            if len(pending) < nb:
                continue
            stack = [pending[b][1] for b in want]
            pending = {}
        else:
            found = [f"{n or '(unnamed)'} {list(d.shape)}" for n, d in hdus]
            msg = (
                f"{path}: expected a ({nb}, y, x) cube, or 2-D image HDUs named {list(bands)} "
                f"(EXTNAME or FILTER), or exactly {nb} 2-D image HDUs. Got "
                f"{found or 'no image HDU'}."
            )
            raise InputError(msg)
        if len({d.shape for d in stack}) != 1:
            msg = f"{path}: band images differ in shape {[list(d.shape) for d in stack]}."
            raise InputError(msg)
        images.append(np.stack(stack))
    if pending:
        missing = [b for b in bands if b.lower() not in pending]
        got = sorted({str(p) for p, _ in pending.values()})
        msg = f"{got}: bands {missing} not found in any of the FITS files given."
        raise InputError(msg)
    return images


def read_fits_patches(
    paths: Sequence[str | Path],
    *,
    bands: Sequence[str],
    patch: tuple[int, int],
    n: int,
    seed: int = 0,
) -> npt.NDArray[np.float32]:
    """Cut ``n`` random raw patches ``(n, c, y, x)`` (float32, counts) from FITS images.

    Bands are found as :func:`band_images` describes.  Patches that are entirely
    non-finite are skipped; patches are spread evenly over the images.

    Raises
    ------
    InputError
        A file is unreadable, has no fitting image, or is smaller than the patch.
    """
    if not paths:
        msg = "Expected at least one FITS file for real patches. Got none."
        raise InputError(msg)
    images = band_images(paths, bands)
    rng = np.random.default_rng(seed)
    ph, pw = patch
    out: list[npt.NDArray[np.float32]] = []
    per_image = max(1, -(-n // len(images)))
    for img in images:
        _, h, w = img.shape
        if h < ph or w < pw:
            msg = (
                f"{[str(p) for p in paths]}: image {h}x{w} is smaller than the patch "
                f"{ph}x{pw}."
            )
            raise InputError(msg)
        got = 0
        for _ in range(per_image * 20):
            if got == per_image:
                break
            y = int(rng.integers(0, h - ph + 1))
            x = int(rng.integers(0, w - pw + 1))
            cut = img[:, y : y + ph, x : x + pw]
            if np.isfinite(cut).any():
                out.append(cut.copy())
                got += 1
    if not out:
        msg = f"{[str(p) for p in paths]}: every patch is blank (NaN); no real patches."
        raise InputError(msg)
    return np.stack(out[:n]).astype(np.float32)


def meta_problems_error(path: str | Path, meta: ModelMeta, model: Any) -> None:
    """Raise :class:`ModelError` when ``meta`` contradicts the graph's I/O signature."""
    from cnnpipe.inspection import read_signature, signature_problems

    ins, outs = read_signature(model)
    problems = signature_problems(meta, ins, outs)
    if problems:
        msg = f"{path}: metadata does not fit the graph: {'; '.join(problems)}."
        raise ModelError(msg)
