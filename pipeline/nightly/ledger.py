"""The nightly ledger: which (input content, models, settings) have been done.

One small JSON file per entry, ``<ledger>/<key[:2]>/<key>.json``, written to a temporary
name and renamed into place, so that a crash never leaves half an entry and several
partitions (or hosts on a shared file system) can share one ledger without a database.
The key is the SHA-256 of the input's content hash, the models' SHA-256 and the
output-changing run settings: a renamed or re-delivered file is not done twice; a new
model or a new tile size does it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cnnpipe.errors import StoreError

__all__ = ["OUTPUT_SETTINGS", "Entry", "EntryStatus", "Ledger", "ledger_key"]

#: RunConfig fields that change a run's output (the others only change how fast it runs)
OUTPUT_SETTINGS = ("tile", "patch", "hdu", "catalog", "catalog_origin")


class EntryStatus(StrEnum):
    """The final state of an input; neither is tried again."""

    DONE = "done"
    QUARANTINED = "quarantined"


def ledger_key(input_sha256: str, model_sha256: Iterable[str],
               settings: Mapping[str, Any]) -> str:
    """The ledger key of one input under one set of models and settings."""
    ident = {"input": input_sha256, "models": sorted(model_sha256),
             "settings": {k: settings.get(k) for k in OUTPUT_SETTINGS}}
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One finished input."""

    key: str
    status: EntryStatus
    input: str
    input_sha256: str
    night: str
    finished: str
    store: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["status"] = self.status.value
        return d


class Ledger:
    """A folder of entries (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Entry | None:
        """The entry of ``key``, or None if that input has not been finished."""
        try:
            data = json.loads(self._path(key).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            msg = (f"{self._path(key)}: unreadable ledger entry ({exc}). Delete it to redo "
                   "the input.")
            raise StoreError(msg) from None
        return Entry(**{**data, "status": EntryStatus(data["status"])})

    def put(self, entry: Entry) -> None:
        """Record an entry atomically (write a temporary file, fsync, rename)."""
        path = self._path(entry.key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(entry.to_dict(), f, indent=1)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            msg = f"{path}: cannot write the ledger entry ({exc.strerror or exc})."
            raise StoreError(msg) from None

    def content_sha256(self, path: str | os.PathLike[str]) -> str:
        """SHA-256 of a file's bytes, remembered by (path, size, mtime, inode, device).

        A rerun over a night of large exposures then reads none of them again; a file
        that was rewritten (another size, mtime or inode) is hashed anew.  The memo lives
        in ``<ledger>/stat/`` (one small JSON file per path, written atomically).

        Raises
        ------
        OSError
            The file cannot be read.
        """
        from cnnpipe.pipeline.store import file_sha256

        real = os.path.realpath(path)
        st = os.stat(real)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]
        memo = self.root / "stat" / (hashlib.sha256(real.encode()).hexdigest() + ".json")
        try:
            data = json.loads(memo.read_text())
            if data.get("path") == real and data.get("stat") == stamp:
                return str(data["sha256"])
        except (OSError, ValueError, KeyError):
            pass
        sha = file_sha256(real)
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"path": real, "stat": stamp, "sha256": sha}))
            os.replace(tmp, memo)
        except OSError:
            pass  # only a memo: the next run hashes the file again
        return sha

    def entries(self) -> list[Entry]:
        """Every entry (for reports and tests)."""
        out = []
        for p in sorted(self.root.glob("??/*.json")):  # not stat/: the hash memo
            e = self.get(p.stem)
            if e is not None:
                out.append(e)
        return out
