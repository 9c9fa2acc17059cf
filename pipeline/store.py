"""The output store of a run (Zarr v3, DESIGN §6): layout, ledger, lock, identity.

Layout::

    OUT.zarr/                      attrs["cnnpipe"]: schema cnnpipe.run/1, version, run_id,
                                   status, started, finished, config, models, inputs,
                                   identity (+ its sha256), error, summary
      images/<key>/                attrs: header (FITS cards [key, value, comment]),
                                   shape, bands, has_wcs
        <model>/mask               uint8 (y, x), fill 255 (no data), chunks (tile, tile)
        <model>/prob               float16 (class, y, x) or (y, x) heat map, fill NaN,
                                   chunks (C, tile, tile) / (tile, tile)
        <model>/tiles              the ledger: uint8 (unit_y, unit_x), chunks (1, 1),
                                   0 pending / 1 done / 2 blank
        <model>/fragments/<uy>_<ux>  the catalog fragment of a done unit (uint8 bytes of
                                   an .npz; :mod:`cnnpipe.pipeline.catalogs`)
    catalogs/<model>/              the merged catalog: one 1-D array per column
    OUT.zarr.lock                  exclusive lock of the running job (next to the store)

A work unit is one chunk of every output array, so each task writes whole chunks that no
other task touches, then its own ledger chunk.  Blank units write no chunks, and a
written unit's chunks are stored without zarr's all-fill check; the ledger, never chunk
presence, says what is done.
The blocking helpers here are small sync functions the Dask layer only schedules.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from cnnpipe.errors import CnnpipeError, LockedError, StoreError
from cnnpipe.modelmeta import file_sha256

__all__ = [
    "RUN_SCHEMA",
    "RunStore",
    "StoreLock",
    "UnitState",
    "cards_to_json",
    "file_fingerprint",
    "file_sha256",
    "identity_diff",
    "identity_hash",
    "lock_path",
    "mark_unit",
    "now_iso",
    "store_header",
    "store_wcs",
    "write_unit",
    "writing",
]

log = logging.getLogger(__name__)

RUN_SCHEMA = "cnnpipe.run/1"
ATTR = "cnnpipe"
#: a lock file that cannot be parsed is another run's lock being written, for this long
_LOCK_GRACE_S = 10.0


class UnitState(IntEnum):
    """Ledger values of a work unit."""

    PENDING = 0
    DONE = 1
    BLANK = 2


def now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def file_fingerprint(path: str | os.PathLike[str], *, span: int = 1 << 20) -> str:
    """Cheap content fingerprint of a (possibly huge) input file.

    SHA-256 of the file size, its first ``span`` bytes (the FITS headers of most files)
    and its last ``span`` bytes.  A replaced image of the same shape almost always
    differs there; hashing the whole file would cost a full read of every input.
    """
    h = hashlib.sha256()
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(span))
        if size > span:
            f.seek(max(span, size - span))
            h.update(f.read(span))
    return h.hexdigest()


def identity_hash(identity: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys) of a run identity."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def identity_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences ``'key: store X, now Y'`` between two identities.

    Settings come first; the patch geometry derived from them (``geometry.*``) last.
    """
    a, b = _flatten(json.loads(json.dumps(old))), _flatten(json.loads(json.dumps(new)))
    out = []
    for k in sorted(set(a) | set(b), key=lambda k: (k.startswith("geometry."), k)):
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            out.append(f"{k}: store {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}")
    return out


@contextlib.contextmanager
def writing(store: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Turn an OS error of a store write (disk full, permissions) into :class:`StoreError`.

    The message names the store and what was being written, and says the fix: the
    ledger keeps what was done, so the same command resumes once the cause is gone.
    """
    try:
        yield
    except CnnpipeError:
        raise
    except OSError as exc:
        reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
        msg = (
            f"{os.fspath(store)}: cannot write {what} ({reason}). Free space or fix the "
            "permissions, then run the same command again to resume."
        )
        raise StoreError(msg) from exc


# -- FITS header cards ---------------------------------------------------------------


def _json_value(v: object) -> object:
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, np.generic):
        return _json_value(v.item())
    if type(v).__name__ == "_Undefined":  # astropy's Undefined value of a keyword
        return None
    return str(v)


def cards_to_json(cards: Iterable[tuple[str, object, str]]) -> list[list[object]]:
    """FITS cards ``(key, value, comment)`` as JSON-ready ``[key, value, comment]`` lists.

    :func:`store_header` / :func:`store_wcs` rebuild the header and WCS from them.
    """
    return [[str(k), _json_value(v), str(c or "")] for k, v, c in cards]


def store_header(path: str | os.PathLike[str], key: str) -> Any:
    """The :class:`astropy.io.fits.Header` of image ``key`` rebuilt from the store attrs."""
    from cnnpipe.pipeline.wcsio import header_from_cards

    attrs: Any = zarr.open_group(os.fspath(path), mode="r", path=f"images/{key}").attrs.asdict()
    return header_from_cards(tuple((str(k), v, str(c)) for k, v, c in attrs["header"]))


def store_wcs(path: str | os.PathLike[str], key: str) -> Any:
    """The :class:`astropy.wcs.WCS` of image ``key`` in a run store, or None without one."""
    from cnnpipe.pipeline.wcsio import wcs_from_cards

    attrs: Any = zarr.open_group(os.fspath(path), mode="r", path=f"images/{key}").attrs.asdict()
    if not attrs.get("has_wcs", False):
        return None
    cards = tuple((str(k), v, str(c)) for k, v, c in attrs["header"])
    ny, nx = attrs["shape"]
    wcs, _ = wcs_from_cards(cards, (int(ny), int(nx)))
    return wcs


# -- lock ------------------------------------------------------------------------------


def lock_path(store: str | os.PathLike[str]) -> Path:
    """The lock file of a store: ``OUT.zarr.lock`` beside it (Zarr lists no strangers)."""
    p = Path(store)
    return p.with_name(p.name + ".lock")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _as_int(v: object) -> int:
    try:
        return int(v)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return -1


class StoreLock:
    """Exclusive lock of a store: a file created with ``O_CREAT | O_EXCL``.

    It holds ``{"pid", "host", "started", "run_id"}``.  A lock of a process that is no
    longer alive on this host is stale and taken over with a warning; a live one (or one
    from another host) raises :class:`LockedError` naming its owner.
    """

    def __init__(self, store: str | os.PathLike[str], *, run_id: str) -> None:
        self.store = Path(store)
        self.path = lock_path(store)
        self.run_id = run_id
        self.owner = {
            "pid": os.getpid(), "host": socket.gethostname(), "started": now_iso(),
            "run_id": run_id,
        }
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            msg = f"{self.path}: cannot create the store lock ({exc.strerror})."
            raise StoreError(msg) from None
        with os.fdopen(fd, "w") as f:
            json.dump(self.owner, f)
        return True

    def read_owner(self) -> dict[str, Any] | None:
        """The owner recorded in the lock file, or None when unreadable."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def acquire(self) -> None:
        """Take the lock, taking over a stale one.

        Raises
        ------
        LockedError
            Another live run holds the lock.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            if self._create():
                self.held = True
                return
            owner = self.read_owner()
            if owner is None:
                try:
                    age = time.time() - self.path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < _LOCK_GRACE_S:
                    owner = {"pid": "?", "host": "?", "started": "just now", "run_id": "?"}
                    break
                log.warning("%s: unreadable lock file; taking it over.", self.path)
            elif owner.get("host") == socket.gethostname() and not _pid_alive(
                _as_int(owner.get("pid"))
            ):
                log.warning(
                    "%s: stale lock of run %s (pid %s on %s, no longer running); taking it "
                    "over.", self.path, owner.get("run_id"), owner.get("pid"), owner.get("host")
                )
            else:
                break
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        else:
            owner = self.read_owner() or {}
        msg = (
            f"{self.store} is locked by run {owner.get('run_id', '?')} (pid {owner.get('pid', '?')}"
            f" on host {owner.get('host', '?')}, since {owner.get('started', '?')}). Wait for "
            f"it to finish, or delete {self.path} if that run is gone."
        )
        raise LockedError(msg)

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        if not self.held:
            return
        owner = self.read_owner()
        if owner is not None and owner.get("run_id") == self.run_id:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.held = False

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- the store ---------------------------------------------------------------------------


#: the temporary file zarr's LocalStore writes ``zarr.json`` through (then renames)
_ZARR_PARTIAL = re.compile(r"zarr\.[0-9a-f]{32}\.partial")


def _unstarted(p: Path) -> bool:
    """Whether ``p`` is a store that no run got to write.

    That is an empty directory, or one holding only a ``zarr.json`` that is cut short or
    describes a group without attributes (what :meth:`RunStore.prepare` creates before
    the run attributes), and zarr's temporary files of a write that was killed
    (``zarr.<hex>.partial``).  A group with any attributes is someone's and stays.
    """
    if not p.is_dir() or any(c.name != "zarr.json" and not _ZARR_PARTIAL.fullmatch(c.name)
                             for c in p.iterdir()):
        return False
    meta = p / "zarr.json"
    if not meta.exists():
        return True
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return True  # cut short while being written
    return isinstance(doc, dict) and doc.get("node_type") == "group" and not doc.get(
        "attributes")


def _patch_hint(old: Mapping[str, Any], diff: Sequence[str]) -> str:
    """How to resume a store that differs only in its patch size, or "".

    A store begun with an explicit ``--patch``, or before ``--patch auto`` became the
    default (512), resumes with the ``--patch`` its run attributes record.
    """
    keys = [d.split(":", 1)[0] for d in diff]
    if not keys or not all(k.startswith("geometry.") and k.rsplit(".", 1)[-1] in
                           ("patch", "core") for k in keys):
        return ""
    was = old.get("config", {}).get("patch", "")
    if not was:
        return ""
    return f"It was made with --patch {was}: rerun with --patch {was} to resume it. "


class RunStore:
    """The client-side handle of a run store: creation, run attributes, ledger reads.

    Only the client writes attributes and creates arrays; workers write chunks with
    :func:`write_unit` and :func:`mark_unit`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    # creation -------------------------------------------------------------------------

    @classmethod
    def prepare(
        cls,
        path: str | os.PathLike[str],
        *,
        identity: Mapping[str, Any],
        overwrite: bool,
    ) -> tuple[RunStore, bool]:
        """Create a store, or open an existing one with the same identity.

        Returns the store and whether it already existed (a resume).

        Raises
        ------
        StoreError
            The path holds something else, or a store of another configuration and
            ``overwrite`` is false.
        """
        p = Path(path)
        store = cls(p)
        if _unstarted(p):
            # a run killed while creating the store (before its run attributes) left an
            # empty directory or an empty group; nothing in it can be lost
            shutil.rmtree(p)
        if p.exists():
            if overwrite:
                store._remove()
            else:
                old = store.run_attrs()
                if old.get("identity_sha256") != identity_hash(identity):
                    diff = identity_diff(old.get("identity", {}), identity)
                    shown = "; ".join(diff[:3]) + ("; ..." if len(diff) > 3 else "")
                    msg = (
                        f"{p} was written by a run with another configuration ({shown}). "
                        f"{_patch_hint(old, diff)}"
                        "Use --overwrite to replace it, or choose another --out."
                    )
                    raise StoreError(msg)
                return store, True
        try:
            zarr.open_group(str(p), mode="w-")
        except Exception as exc:
            msg = f"{p}: cannot create the Zarr store ({type(exc).__name__}: {exc})."
            raise StoreError(msg) from None
        return store, False

    def _remove(self) -> None:
        p = Path(self.path)
        if p.is_dir() and not any(p.iterdir()):
            p.rmdir()
            return
        if not (p.is_dir() and (p / "zarr.json").is_file()):
            msg = f"{p} exists and is not a Zarr store; refusing to delete it for --overwrite."
            raise StoreError(msg)
        shutil.rmtree(p)

    def run_attrs(self) -> dict[str, Any]:
        """The ``cnnpipe`` run attributes of the store.

        Raises
        ------
        StoreError
            The path is not a cnnpipe run store.
        """
        try:
            g = zarr.open_group(self.path, mode="r")
        except Exception:
            msg = (
                f"{self.path} exists and is not a Zarr store. Use --overwrite only if it may "
                "be deleted, or choose another --out."
            )
            raise StoreError(msg) from None
        attrs = g.attrs.get(ATTR)
        if not isinstance(attrs, dict) or attrs.get("schema") != RUN_SCHEMA:
            msg = (
                f"{self.path} is a Zarr store but not a cnnpipe run store (no "
                f"attrs.cnnpipe.schema {RUN_SCHEMA!r}). Use --overwrite to replace it, or "
                "choose another --out."
            )
            raise StoreError(msg)
        return dict(attrs)

    def update_run(self, **changes: Any) -> None:
        """Merge ``changes`` into the run attributes (client only).

        Raises
        ------
        StoreError
            The attributes cannot be written (disk full, permissions).
        """
        with writing(self.path, "the run attributes"):
            g = zarr.open_group(self.path, mode="r+")
            old: Any = g.attrs.get(ATTR) or {}
            attrs = dict(old)
            attrs.update(changes)
            g.attrs[ATTR] = json.loads(json.dumps(attrs, default=str))

    def create_image(
        self,
        key: str,
        *,
        shape: tuple[int, int],
        tile: int,
        bands: Sequence[str],
        header: Iterable[tuple[str, object, str]],
        has_wcs: bool,
        models: Sequence[tuple[str, int, tuple[str, ...], Sequence[str]]],
    ) -> None:
        """Create (or keep, on resume) the group and arrays of one image.

        ``models`` holds ``(name, channels, prob_dims, classes)`` per model.

        Raises
        ------
        StoreError
            The arrays cannot be created (disk full, permissions).
        """
        with writing(self.path, f"the arrays of image {key}"):
            root = zarr.open_group(self.path, mode="r+")
            g = root.require_group(f"images/{key}")
            image_attrs: dict[str, Any] = {
                "header": cards_to_json(header), "shape": list(shape), "bands": list(bands),
                "has_wcs": bool(has_wcs),
            }
            g.update_attributes(image_attrs)  # one write, not one per key
            ny, nx = shape
            grid = (-(-ny // tile), -(-nx // tile))
            for name, channels, prob_dims, classes in models:
                mg = g.require_group(name)
                if "tiles" in mg:
                    continue  # resume: arrays exist with this identity
                # no ledger yet: nothing was computed, (re)create whatever a crash left
                mg.create_array(
                    "mask", shape=(ny, nx), chunks=(tile, tile), dtype="uint8", fill_value=255,
                    dimension_names=("y", "x"), overwrite=True, compressors=_codec(),
                    attributes={"nodata": 255, "classes": list(classes)},
                )
                pshape = (channels, ny, nx) if len(prob_dims) == 3 else (ny, nx)
                pchunks = (channels, tile, tile) if len(prob_dims) == 3 else (tile, tile)
                mg.create_array(
                    "prob", shape=pshape, chunks=pchunks, dtype="float16", fill_value=float("nan"),
                    compressors=_codec(), dimension_names=prob_dims,
                    attributes={"classes": list(classes)}, overwrite=True,
                )
                mg.create_group("fragments", overwrite=True)
                # the ledger last: its presence means the model's arrays are complete
                mg.create_array(
                    "tiles", shape=grid, chunks=(1, 1), dtype="uint8", fill_value=0,
                    dimension_names=("unit_y", "unit_x"),
                    attributes={"states": {s.name.lower(): int(s) for s in UnitState},
                                "tile": tile},
                )

    def ledger(self, key: str, model: str) -> npt.NDArray[np.uint8]:
        """The ``(unit_y, unit_x)`` ledger of one image and model."""
        a = zarr.open_array(self.path, path=f"images/{key}/{model}/tiles", mode="r")
        return np.asarray(a[...], dtype=np.uint8)


def _codec() -> Any:
    """Blosc LZ4 with byte shuffle for masks and probabilities.

    The chunk write is on the critical path of every work unit, and on a CPU node every
    core is already running onnxruntime.  Measured on this project's 2-core benchmark
    machine for one 5 x 2048² float16 probability chunk of the demo segmenter: Blosc
    LZ4 + shuffle 49 ms, 19.4 MB; Zstandard level 1 93 ms, 16.2 MB; zarr's default
    (zstd level 3) 0.24 s; uncompressed 42 MB.  LZ4 made ``cnnpipe run`` 1.5-5 % faster
    end to end for 20 % more bytes of probabilities (README "Settings").  Blosc is one of
    Zarr v3's core codecs: every Zarr reader decodes it.
    """
    from zarr.codecs import BloscCodec

    return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]


def _open(store: str, path: str, *, write_empty_chunks: bool = False) -> Any:
    # with_config, not open_array(config=...): zarr ignores ``config`` when it opens an
    # existing array (zarr-python #2931)
    return zarr.open_array(store, path=path, mode="r+").with_config(
        {"write_empty_chunks": write_empty_chunks})


def write_unit(
    store: str,
    key: str,
    model: str,
    *,
    y0: int,
    x0: int,
    mask: npt.NDArray[np.uint8],
    prob: npt.NDArray[np.float16],
) -> None:
    """Write one unit's whole chunk of ``mask`` and ``prob`` (worker side).

    Raises
    ------
    StoreError
        The chunks cannot be written (disk full, permissions).
    """
    ny, nx = mask.shape
    # A unit is only written when it has data, so its chunks are never all fill value
    # (255 / NaN): skip zarr's check for empty chunks, which for a 5 x 2048² float16 unit
    # costs ~70 ms of NaN-aware comparisons on zarr's one I/O thread.
    with writing(store, f"images/{key}/{model} at y {y0}, x {x0}"):
        _open(store, f"images/{key}/{model}/mask",
              write_empty_chunks=True)[y0:y0 + ny, x0:x0 + nx] = mask
        _open(store, f"images/{key}/{model}/prob",
              write_empty_chunks=True)[..., y0:y0 + ny, x0:x0 + nx] = prob


def mark_unit(store: str, key: str, model: str, uy: int, ux: int, state: UnitState) -> None:
    """Record a unit's state in its own ledger chunk (after its outputs).

    Raises
    ------
    StoreError
        The ledger cannot be written (disk full, permissions).
    """
    with writing(store, f"the ledger of images/{key}/{model}"):
        _open(store, f"images/{key}/{model}/tiles")[uy, ux] = np.uint8(state)
