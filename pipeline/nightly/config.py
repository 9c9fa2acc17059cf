"""The configuration of ``cnnpipe nightly`` (a TOML file, schema ``cnnpipe.nightly/1``).

Example (``deploy/nightly.example.toml`` has a commented one)::

    output_root = "/survey/cnnpipe"        # required
    partition = "{night}"                  # per-night folder; {night} = YYYY-MM-DD
    inputs = ["/survey/incoming/{night}/*.fits", "/survey/incoming/{night}/mef/"]
    models = ["/opt/models/segment.onnx", "demo_craters"]
    ledger = "/survey/cnnpipe/ledger"      # default <output_root>/ledger
    quarantine = "/survey/cnnpipe/quarantine"
    quarantine_mode = "move"               # move | copy
    reports = "/survey/cnnpipe/reports"

    [run]                                  # any `cnnpipe run` setting but the ones above
    device = "auto"
    retries = 2

    [cluster]
    kind = "embedded"                      # embedded | scheduler | slurm | kubernetes
    address = "tls://dask-scheduler:8786"  # kind = "scheduler"
    workers = 4
    inputs_at_once = 2                     # default: the cluster's threads + 1 (see below)
    tls_ca_file = "/etc/cnnpipe/tls/ca.pem"
    tls_cert = "/etc/cnnpipe/tls/client.pem"
    tls_key = "/etc/cnnpipe/tls/client.key"

    [cluster.slurm]                        # dask_jobqueue.SLURMCluster(**table)
    [cluster.kubernetes]                   # dask_kubernetes.operator.KubeCluster(**table)

Relative paths (``output_root``, ``ledger``, ``quarantine``, ``reports``, ``inputs``,
``models`` given as paths, ``[run] catalog``, the ``[cluster]`` TLS files) are taken
from the file's folder, not from the directory the job starts in; a ``models`` entry
without a folder or an ``.onnx`` suffix names a bundled demo model.  Every error names
the file and the key, says what was expected and what was found.
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from cnnpipe.errors import ConfigError
from cnnpipe.pipeline.config import WINDOWS, RunConfig

__all__ = [
    "NIGHTLY_SCHEMA",
    "ClusterKind",
    "ClusterSpec",
    "NightlyConfig",
    "QuarantineMode",
    "default_night",
]

NIGHTLY_SCHEMA = "cnnpipe.nightly/1"

#: ``cnnpipe run`` settings the nightly job sets itself (not allowed in ``[run]``)
_OWN_RUN_KEYS = frozenset({
    "inputs", "models", "out", "band_files", "scheduler", "mode", "tls_ca_file", "tls_cert",
    "tls_key", "workers", "threads",
})


class ClusterKind(StrEnum):
    """Where the night's work units run."""

    EMBEDDED = "embedded"
    SCHEDULER = "scheduler"
    SLURM = "slurm"
    KUBERNETES = "kubernetes"


class QuarantineMode(StrEnum):
    """What happens to a corrupt input: moved out of the input folder, or copied."""

    MOVE = "move"
    COPY = "copy"


def default_night(now: dt.datetime | None = None) -> str:
    """The night being processed: the UTC date 12 hours before ``now`` (YYYY-MM-DD).

    A job that starts at 06:00 UTC after an observing night labels it with the evening's
    date, as observatories do.
    """
    now = now or dt.datetime.now(dt.UTC)
    return (now - dt.timedelta(hours=12)).date().isoformat()


def _fail(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg}")


def _str(where: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"{key}: Expected a non-empty string. Got {value!r}.")
    return value


def _str_list(where: str, key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _fail(where, f"{key}: Expected a non-empty list of strings. Got {value!r}.")
    return tuple(_str(where, f"{key}[{i}]", v) for i, v in enumerate(value))


def _model_entry(text: str, base: Path) -> str:
    """One ``models`` entry: a file path, or the name of a bundled demo model.

    Absolute, ``~``, with a folder or with an ``.onnx`` suffix is a path (a relative one
    from ``base``); anything else is a name, kept as it is.
    """
    p = Path(text).expanduser()
    if p.is_absolute():
        return str(p)
    return str(base / p) if len(p.parts) > 1 or p.suffix == ".onnx" else text


def _check_keys(where: str, table: str, data: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(where, f"{table}: unknown key(s) {unknown}. Expected some of {sorted(known)}.")


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    """The ``[cluster]`` table.

    Attributes
    ----------
    kind : ClusterKind
        ``embedded`` (a local cluster for the whole night), ``scheduler`` (an existing
        one at ``address``), ``slurm`` (dask-jobqueue) or ``kubernetes`` (Dask operator).
    address : str or None
        Scheduler address (``tcp://`` or ``tls://``), for ``scheduler``.
    workers : int or None
        Worker processes (embedded) or workers to scale to (slurm, kubernetes).
    inputs_at_once : int or None
        Inputs run side by side on the cluster (each its own store and run), so that
        frame-sized inputs with fewer work units than the cluster has threads keep it
        busy; None: one more than the embedded cluster's Dask threads, or than those of
        a running scheduler's workers when the night starts (so that one input's store,
        merge and reads overlap the others' inference); 2 for slurm and kubernetes
        (their workers arrive later).
    tls_ca_file, tls_cert, tls_key : str or None
        Mutual TLS to the scheduler (all three or none).
    slurm, kubernetes : dict
        Keyword arguments of ``dask_jobqueue.SLURMCluster`` /
        ``dask_kubernetes.operator.KubeCluster``.
    """

    kind: ClusterKind = ClusterKind.EMBEDDED
    address: str | None = None
    workers: int | None = None
    inputs_at_once: int | None = None
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    slurm: Mapping[str, Any] = field(default_factory=dict)
    kubernetes: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str,
                  base: Path | None = None) -> ClusterSpec:
        """Validate the ``[cluster]`` table (``where`` names the file in errors).

        Relative TLS file paths are taken from ``base`` (the configuration's folder).
        """
        if not isinstance(data, Mapping):
            raise _fail(where, f"[cluster]: Expected a table. Got {data!r}.")
        _check_keys(where, "[cluster]", data, {f.name for f in fields(cls)})
        try:
            kind = ClusterKind(data.get("kind", "embedded"))
        except ValueError:
            raise _fail(where, "[cluster] kind: Expected one of "
                        f"{[k.value for k in ClusterKind]}. Got {data.get('kind')!r}.") from None
        workers, at_once = data.get("workers"), data.get("inputs_at_once")
        for key, value in (("workers", workers), ("inputs_at_once", at_once)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise _fail(where, f"[cluster] {key}: Expected a positive integer. Got "
                            f"{value!r}.")
        address = data.get("address")
        if kind is ClusterKind.SCHEDULER:
            address = _str(where, "[cluster] address (kind = 'scheduler')", address)
        elif address is not None:
            raise _fail(where, f"[cluster] address: only for kind = 'scheduler'. Got kind = "
                        f"{kind.value!r}.")
        tls = [data.get(k) for k in ("tls_ca_file", "tls_cert", "tls_key")]
        if any(tls) and not all(tls):
            raise _fail(where, "[cluster] tls_ca_file, tls_cert, tls_key: Expected all three "
                        f"or none. Got {tls}.")
        if base is not None:
            tls = [str(base / Path(t).expanduser()) if isinstance(t, str) else t for t in tls]
        for name in ("slurm", "kubernetes"):
            if not isinstance(data.get(name, {}), Mapping):
                raise _fail(where, f"[cluster.{name}]: Expected a table. Got {data[name]!r}.")
        return cls(kind=kind, address=address, workers=workers, inputs_at_once=at_once,
                   tls_ca_file=tls[0], tls_cert=tls[1], tls_key=tls[2],
                   slurm=dict(data.get("slurm", {})),
                   kubernetes=dict(data.get("kubernetes", {})))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["kind"] = self.kind.value
        return d


@dataclass(frozen=True, kw_only=True)
class NightlyConfig:
    """A validated nightly configuration (see the module docstring for the file).

    Attributes
    ----------
    source : str
        The file it came from (for messages and the report).
    output_root : Path
        Root of everything the job writes.
    partition : str
        Per-night folder under ``output_root``; ``{night}`` is the night's date.
    inputs : tuple of str
        Globs or folders; ``{night}`` allowed.
    models : tuple of str
        ONNX model packages, or names of bundled demo models (``cnnpipe models``).
    ledger, quarantine, reports : Path
        Ledger of finished inputs, quarantined inputs with their reasons, night reports.
    quarantine_mode : QuarantineMode
        ``move`` a corrupt input out of the input folder, or ``copy`` it.
    run : dict
        ``cnnpipe run`` settings (RunConfig fields) for every input.
    cluster : ClusterSpec
        Where the work runs.
    """

    source: str = "<config>"
    output_root: Path
    partition: str = "{night}"
    inputs: tuple[str, ...]
    models: tuple[str, ...]
    ledger: Path
    quarantine: Path
    reports: Path
    quarantine_mode: QuarantineMode = QuarantineMode.MOVE
    run: Mapping[str, Any] = field(default_factory=dict)
    cluster: ClusterSpec = field(default_factory=ClusterSpec)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> NightlyConfig:
        """Read and validate a TOML file.

        Raises
        ------
        ConfigError
            Unreadable file, bad TOML, unknown keys or invalid values (the message names
            the file and the key).
        """
        where = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise _fail(where, "no such file. Expected a TOML nightly configuration.") from None
        except OSError as exc:
            raise _fail(where, f"cannot read it ({exc.strerror}).") from None
        except tomllib.TOMLDecodeError as exc:
            raise _fail(where, f"not valid TOML ({exc}).") from None
        base = Path(where).resolve().parent
        return cls.from_dict(data, where=where, base=base)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "<config>",
                  base: Path | None = None) -> NightlyConfig:
        """Validate a parsed configuration; relative paths are taken from ``base``."""
        known = {"schema", "output_root", "partition", "inputs", "models", "ledger",
                 "quarantine", "quarantine_mode", "reports", "run", "cluster"}
        _check_keys(where, "top level", data, known)
        schema = data.get("schema", NIGHTLY_SCHEMA)
        if schema != NIGHTLY_SCHEMA:
            raise _fail(where, f"schema: Expected {NIGHTLY_SCHEMA!r}. Got {schema!r}.")
        base = base or Path.cwd()

        def path(key: str, default: Path | None = None) -> Path:
            if key not in data and default is not None:
                return default
            p = Path(_str(where, key, data.get(key))).expanduser()
            return p if p.is_absolute() else base / p

        root = path("output_root")
        partition = _str(where, "partition", data.get("partition", "{night}"))
        _template(where, "partition", partition)
        if Path(partition).is_absolute() or ".." in Path(partition).parts:
            raise _fail(where, f"partition: Expected a folder name under output_root. Got "
                        f"{partition!r}.")
        inputs = _str_list(where, "inputs", data.get("inputs"))
        for i, pattern in enumerate(inputs):
            _template(where, f"inputs[{i}]", pattern)
        inputs = tuple(p if Path(p).expanduser().is_absolute() else str(base / p)
                       for p in (str(Path(q).expanduser()) for q in inputs))
        models = tuple(_model_entry(m, base)
                       for m in _str_list(where, "models", data.get("models")))
        try:
            mode = QuarantineMode(data.get("quarantine_mode", "move"))
        except ValueError:
            raise _fail(where, "quarantine_mode: Expected 'move' or 'copy'. Got "
                        f"{data.get('quarantine_mode')!r}.") from None
        run = data.get("run", {})
        if not isinstance(run, Mapping):
            raise _fail(where, f"[run]: Expected a table. Got {run!r}.")
        run = dict(run)
        catalog = run.get("catalog")
        if isinstance(catalog, str) and catalog != WINDOWS and catalog:
            path_ = Path(catalog).expanduser()
            run["catalog"] = str(path_ if path_.is_absolute() else base / path_)
        own = sorted(_OWN_RUN_KEYS & set(run))
        if own:
            raise _fail(where, f"[run]: {own} are set by the nightly job itself (inputs, models "
                        "at the top level; workers and addresses in [cluster]).")
        try:  # validate the run settings the way `cnnpipe run` does
            RunConfig.from_dict({**run, "inputs": ("x.fits",), "models": ("m.onnx",),
                                 "out": "o.zarr"})
        except (ConfigError, TypeError) as exc:
            raise _fail(where, f"[run]: {exc}") from None
        cluster = ClusterSpec.from_dict(data.get("cluster", {}), where=where, base=base)
        return cls(
            source=where, output_root=root, partition=partition, inputs=inputs, models=models,
            ledger=path("ledger", root / "ledger"),
            quarantine=path("quarantine", root / "quarantine"),
            reports=path("reports", root / "reports"), quarantine_mode=mode, run=dict(run),
            cluster=cluster,
        )

    def night_dir(self, night: str) -> Path:
        """The night's partition (stores and the night lock live there)."""
        return self.output_root / self.partition.format(night=night)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for the night's report)."""
        return {
            "schema": NIGHTLY_SCHEMA, "source": self.source,
            "output_root": str(self.output_root), "partition": self.partition,
            "inputs": list(self.inputs), "models": list(self.models),
            "ledger": str(self.ledger), "quarantine": str(self.quarantine),
            "quarantine_mode": self.quarantine_mode.value, "reports": str(self.reports),
            "run": dict(self.run), "cluster": self.cluster.to_dict(),
        }


def _template(where: str, key: str, text: str) -> None:
    """Only ``{night}`` may appear in braces."""
    try:
        text.format(night="2000-01-01")
    except (KeyError, IndexError, ValueError) as exc:
        raise _fail(where, f"{key}: Expected only the {{night}} placeholder. Got {text!r} "
                    f"({type(exc).__name__}: {exc}).") from None
