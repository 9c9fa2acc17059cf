"""The configuration of one ``cnnpipe run`` (a frozen, validated dataclass).

:class:`RunConfig` is what the command line, the nightly job and library callers build;
it is stored in the run attributes of the output store (``to_dict``) and read back with
``from_dict``.  Only the settings that change the output enter the store identity
(:func:`cnnpipe.pipeline.store.config_identity`); workers, threads, device and batch
do not, so a run may be resumed with different resources.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any

from cnnpipe.errors import ConfigError

__all__ = ["WINDOWS", "Device", "RunConfig", "StoreMode"]


class Device(StrEnum):
    """Where onnxruntime runs: ``gpu`` insists on CUDA, ``auto`` uses it when present."""

    AUTO = "auto"
    CPU = "cpu"
    GPU = "gpu"


class StoreMode(StrEnum):
    """What to do with an existing output store."""

    #: continue a store written with the same configuration (done units are skipped)
    RESUME = "resume"
    #: delete an existing store and start again
    OVERWRITE = "overwrite"


#: the value of ``--patch`` / ``--batch`` (and of the TOML keys) that lets the plan choose
AUTO = "auto"

#: the value of ``--catalog`` that makes classify catalogs one row per sliding window
WINDOWS = "windows"


def _pos_or_none(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        auto = f" or {AUTO!r}" if name in ("--patch", "--batch") else ""
        msg = f"Expected {name} to be a positive integer{auto}. Got {value!r}."
        raise ConfigError(msg)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything ``cnnpipe run`` needs; validated on construction.

    Attributes
    ----------
    inputs : tuple of str
        FITS files (``path`` or ``path[ext]`` as understood by
        :func:`cnnpipe.pipeline.sources.open_sources`).
    models : tuple of str
        ONNX model packages (schema ``cnnpipe.model/1``).
    out : str
        Output Zarr store (a directory).
    band_files : tuple of (band, path)
        ``--band g=a.fits``: one file per band of a multi-file image.
    hdu : int, str or None
        HDU index or EXTNAME to read (default: every image HDU).
    scheduler : str or None
        Address of an existing Dask scheduler; None starts an embedded cluster.
    workers, threads : int or None
        Embedded cluster: worker processes and Dask threads per process (default from
        ``os.cpu_count()``).
    ort_threads : int or None
        onnxruntime intra-op threads per session; default ``cores // (workers*threads)``
        (at least 1) so processes x threads stays within the cores.
    device : Device
        ``auto``, ``cpu`` or ``gpu``.
    tensorrt : bool
        Put TensorRT in front of CUDA (``--tensorrt``).
    mode : StoreMode
        ``resume`` (default) or ``overwrite`` an existing store.
    tile : int
        Work-unit and output-chunk size, pixels.
    patch : int or None
        Patch size of fully convolutional models, halo included, pixels; None (or
        ``"auto"``, the default): per model, the patch whose cores cover a unit with the
        fewest pixels pushed (:func:`cnnpipe.pipeline.plan.auto_patch`).
    batch : int or None
        Patches per inference call; None (or ``"auto"``, the default): as many as fill
        ``plan.PIXELS_PER_CALL`` pixels (:func:`cnnpipe.pipeline.plan.auto_batch`).
    retries : int
        Extra attempts of a failing work unit before the run fails.
    catalog : str or None
        What classify heads catalog: the positions of an input catalog (FITS table,
        Parquet, CSV, VOTable with ra/dec or x/y columns; see
        :mod:`cnnpipe.pipeline.positions`), :data:`WINDOWS` (``"windows"``: one row per
        sliding window of the class map, the windows' own probabilities; a file of that
        name is ``./windows``), or None: sources detected with sep.
    catalog_origin : int
        Pixel convention of the catalog's x/y columns: 0 (numpy / astropy) or 1 (FITS).
    log_every : float
        Seconds between plain progress log lines (no terminal).
    tls_ca_file, tls_cert, tls_key : str or None
        Mutual TLS to ``--scheduler tls://...``: the cluster's CA certificate and this
        client's certificate and key (PEM).  All three or none; without them Dask's own
        configuration (``distributed.comm.tls.*``) applies.
    """

    inputs: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    out: str = ""
    band_files: tuple[tuple[str, str], ...] = ()
    hdu: int | str | None = None
    scheduler: str | None = None
    workers: int | None = None
    threads: int | None = None
    ort_threads: int | None = None
    device: Device = Device.AUTO
    tensorrt: bool = False
    mode: StoreMode = StoreMode.RESUME
    tile: int = 2048
    patch: int | None = None
    batch: int | None = None
    retries: int = 2
    catalog: str | None = None
    catalog_origin: int = 0
    log_every: float = 10.0
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def windows(self) -> bool:
        """Classify catalogs have one row per sliding window (``--catalog windows``)."""
        return self.catalog == WINDOWS

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "inputs", tuple(os.fspath(p) for p in self.inputs))
        set_(self, "models", tuple(os.fspath(p) for p in self.models))
        set_(self, "out", os.fspath(self.out))
        set_(self, "band_files", tuple((str(b), os.fspath(p)) for b, p in self.band_files))
        if not self.inputs and not self.band_files:
            msg = "Expected at least one input FITS file (or --band NAME=FILE). Got none."
            raise ConfigError(msg)
        if not self.models:
            msg = "Expected at least one --model MODEL.onnx. Got none."
            raise ConfigError(msg)
        if not self.out:
            msg = "Expected an output store (--out OUT.zarr). Got none."
            raise ConfigError(msg)
        try:
            set_(self, "device", Device(self.device))
        except ValueError:
            msg = f"Expected device one of auto, cpu, gpu. Got {self.device!r}."
            raise ConfigError(msg) from None
        try:
            set_(self, "mode", StoreMode(self.mode))
        except ValueError:
            msg = f"Expected store mode one of resume, overwrite. Got {self.mode!r}."
            raise ConfigError(msg) from None
        if self.tensorrt and self.device is Device.CPU:
            msg = "Expected --tensorrt with --device gpu or auto. Got --device cpu."
            raise ConfigError(msg)
        for name in ("workers", "threads", "ort_threads"):
            _pos_or_none(f"--{name.replace('_', '-')}", getattr(self, name))
        for name in ("patch", "batch"):
            if getattr(self, name) == AUTO:
                set_(self, name, None)
        for name in ("tile", "patch", "batch"):
            _pos_or_none(f"--{name}", getattr(self, name))
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            msg = f"Expected retries >= 0. Got {self.retries!r}."
            raise ConfigError(msg)
        if isinstance(self.hdu, str) and self.hdu.lstrip("-").isdigit():
            set_(self, "hdu", int(self.hdu))
        if self.catalog_origin not in (0, 1) or isinstance(self.catalog_origin, bool):
            msg = f"Expected --catalog-origin 0 or 1. Got {self.catalog_origin!r}."
            raise ConfigError(msg)
        tls = (self.tls_ca_file, self.tls_cert, self.tls_key)
        if any(tls) and not all(tls):
            msg = (
                "Expected all of --tls-ca-file, --tls-cert and --tls-key (mutual TLS). Got "
                f"ca={self.tls_ca_file!r}, cert={self.tls_cert!r}, key={self.tls_key!r}."
            )
            raise ConfigError(msg)
        for name, value in zip(("--tls-ca-file", "--tls-cert", "--tls-key"), tls):
            if value and not os.path.isfile(value):
                msg = f"{name} {value}: no such file. Expected a PEM file; check the path."
                raise ConfigError(msg)
        if any(tls) and not self.scheduler:
            msg = "Expected --scheduler tls://HOST:PORT with the --tls-* options. Got none."
            raise ConfigError(msg)
        if not self.log_every > 0:
            msg = f"Expected log_every > 0 seconds. Got {self.log_every!r}."
            raise ConfigError(msg)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (enums as strings, tuples as lists)."""
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        d["models"] = list(self.models)
        d["band_files"] = [list(bp) for bp in self.band_files]
        d["device"] = self.device.value
        d["mode"] = self.mode.value
        for name in ("patch", "batch"):
            d[name] = AUTO if d[name] is None else d[name]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Validate and build from a dict (e.g. ``to_dict`` output or a TOML table).

        Raises
        ------
        ConfigError
            Unknown keys or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            msg = f"Unknown run settings {unknown}. Expected a subset of {sorted(known)}."
            raise ConfigError(msg)
        d = dict(data)
        for key in ("inputs", "models"):
            if key in d:
                d[key] = tuple(d[key])
        if "band_files" in d:
            bf = d["band_files"]
            items = bf.items() if isinstance(bf, dict) else bf
            d["band_files"] = tuple((str(b), str(p)) for b, p in items)
        return cls(**d)
