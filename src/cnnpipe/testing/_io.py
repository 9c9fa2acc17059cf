"""File helpers shared by the simulators: output names, path checks, truth tables."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cnnpipe.errors import ConfigError

__all__ = ["SimulationFiles", "check_outputs", "output_stem", "truth_path", "write_table"]

_FITS_SUFFIXES = (".fits", ".fit", ".fts")


@dataclass(frozen=True, kw_only=True)
class SimulationFiles:
    """The files one simulation wrote.

    Attributes
    ----------
    images : tuple of Path
        Image files (one per band, or one multi-extension file).
    mask : Path
        Truth mask (uint8 FITS).
    truth : Path
        Truth catalog (Parquet or FITS table).
    """

    images: tuple[Path, ...]
    mask: Path
    truth: Path

    @property
    def all(self) -> tuple[Path, ...]:
        """Every written file, images first."""
        return (*self.images, self.mask, self.truth)


def output_stem(out: str | os.PathLike[str]) -> Path:
    """``OUT.fits`` -> ``OUT`` (``.fits``, ``.fit`` and ``.fts`` are dropped)."""
    path = Path(out)
    if path.suffix.lower() in _FITS_SUFFIXES:
        return path.with_suffix("")
    return path


def truth_path(out: str | os.PathLike[str], truth: str | os.PathLike[str] | None) -> Path:
    """The truth catalog path: ``truth`` if given, else ``OUT.truth.parquet``."""
    if truth is not None:
        return Path(truth)
    stem = output_stem(out)
    return stem.with_name(stem.name + ".truth.parquet")


def check_outputs(paths: list[Path], *, overwrite: bool) -> None:
    """Fail early, before any work, when an output cannot be written.

    Raises
    ------
    ConfigError
        A folder is missing or not writable, a path is a folder, two outputs collide,
        or a file exists and ``overwrite`` is false.
    """
    if len(set(paths)) != len(paths):
        msg = f"Expected distinct output files. Got {[str(p) for p in paths]}."
        raise ConfigError(msg)
    for path in paths:
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            msg = (
                f"Expected an existing folder for output {str(path)!r}. Got no folder "
                f"{str(parent)!r}; create it first."
            )
            raise ConfigError(msg)
        if not os.access(parent, os.W_OK | os.X_OK):
            msg = (
                f"Expected a writable folder for output {str(path)!r}. Got folder "
                f"{str(parent)!r} without write permission."
            )
            raise ConfigError(msg)
        if path.is_dir():
            msg = f"Expected a file path for output. Got folder {str(path)!r}."
            raise ConfigError(msg)
        if path.exists() and not overwrite:
            msg = (
                f"Expected no existing file at {str(path)!r}. Got one; pass --overwrite "
                "(overwrite=True) to replace it."
            )
            raise ConfigError(msg)


def write_table(
    path: Path,
    columns: Mapping[str, npt.ArrayLike],
    *,
    units: Mapping[str, str],
    descriptions: Mapping[str, str],
    meta: Mapping[str, Any],
) -> Path:
    """Write a catalog as Parquet, or as a FITS binary table when ``path`` ends in .fits.

    Parquet is written with pyarrow: each field's metadata holds ``unit`` and
    ``description``, the schema metadata ``cnnpipe`` holds ``meta`` as JSON.  FITS gets
    ``TUNITn`` and the meta as header cards.  The file appears under its final name only
    when complete.

    Returns
    -------
    Path
        ``path``.
    """
    partial = path.with_name(path.name + ".partial")
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    try:
        if path.suffix.lower() in _FITS_SUFFIXES:
            from astropy.table import Table

            table = Table()
            for name, arr in arrays.items():
                table[name] = arr
                table[name].unit = units.get(name)
                table[name].description = descriptions.get(name)
            for key, value in meta.items():
                table.meta[key.upper()[:8]] = (
                    ",".join(map(str, value)) if isinstance(value, list) else value
                )
            table.write(partial, format="fits", overwrite=True)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            fields, data = [], []
            for name, arr in arrays.items():
                col = pa.array(arr.tolist() if arr.dtype.kind == "U" else arr)
                info = {"unit": units.get(name, ""), "description": descriptions.get(name, "")}
                fields.append(pa.field(name, col.type, metadata=info))
                data.append(col)
            schema = pa.schema(fields, metadata={"cnnpipe": json.dumps(dict(meta))})
            pq.write_table(pa.Table.from_arrays(data, schema=schema), partial)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        msg = f"Expected a writable truth catalog path. Got {str(path)!r}: {exc}."
        raise ConfigError(msg) from exc
    os.replace(partial, path)
    return path
