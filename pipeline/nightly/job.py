"""``cnnpipe nightly``: every new input of the night exactly once, bad ones quarantined.

For one night (a partition folder under the output root, held by a lock so that two
nightly jobs never share it):

1. find the inputs (globs and folders, ``{night}`` filled in), in a stable order;
2. per input: its content SHA-256 + the models' SHA-256 + the output-changing run
   settings give the ledger key; a key already in the ledger (done or quarantined) is
   skipped, so a rerun does nothing for finished inputs, even renamed ones;
3. otherwise ``cnnpipe run`` it into ``<night>/<stem>-<key[:10]>.zarr`` on the night's
   cluster; an interrupted input resumes its store on the next invocation; when the
   store is complete the ledger records it (after the store, never before), and its
   quick-looks are made (while other inputs run);
4. an input that cannot be read (:class:`~cnnpipe.errors.InputError`) or does not fit
   a model (:class:`~cnnpipe.errors.ModelMismatchError`) is moved (or copied) to
   ``<quarantine>/<night>/`` with ``<name>.reason.json`` and recorded as quarantined,
   and the night goes on;
5. the report (JSON + Markdown, listing the quick-looks) is written at the end, also
   after a failure.

Exit status (:attr:`NightReport.exit_code`): 0 all done, 1 something failed (a worker
error, a broken model: rerun after fixing it), 2 a configuration error, 3 finished with
quarantined inputs.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cnnpipe.errors import (
    CnnpipeError,
    ConfigError,
    InputError,
    ModelError,
    ModelMismatchError,
)
from cnnpipe.pipeline.config import RunConfig
from cnnpipe.pipeline.nightly.cluster import NightCluster, open_cluster
from cnnpipe.pipeline.nightly.config import NightlyConfig, QuarantineMode
from cnnpipe.pipeline.nightly.ledger import Entry, EntryStatus, Ledger, ledger_key
from cnnpipe.pipeline.nightly.report import InputOutcome, NightReport, quicklooks, write_report
from cnnpipe.pipeline.store import StoreLock, now_iso

__all__ = ["FITS_SUFFIXES", "JsonFormatter", "event", "find_inputs", "resolve_models",
           "run_nightly"]

log = logging.getLogger("cnnpipe.nightly")

#: what a folder in ``inputs`` contributes
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fits.fz", ".fz")


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """A structured log line: ``name k=v ...``; the JSON formatter keeps the fields."""
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    log.log(level, "%s %s", name, text, extra={"event": name, "fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per log line (time, level, logger, event, fields, message)."""

    def format(self, record: logging.LogRecord) -> str:
        d: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
            "logger": record.name,
        }
        if hasattr(record, "event"):
            d["event"] = record.event
            d.update(getattr(record, "fields", {}))
        else:
            d["message"] = record.getMessage()
        return json.dumps(d, default=str)


def find_inputs(patterns: tuple[str, ...], night: str) -> list[Path]:
    """Input files of the night: globs and folders (not recursive), sorted, de-duplicated."""
    found: dict[str, Path] = {}
    for pattern in patterns:
        p = pattern.format(night=night)
        if os.path.isdir(p):
            hits = [str(q) for q in Path(p).iterdir()
                    if q.is_file() and q.name.lower().endswith(FITS_SUFFIXES)]
        else:
            hits = [h for h in glob.glob(p) if os.path.isfile(h)]
        for h in sorted(hits):
            found.setdefault(os.path.realpath(h), Path(h))
    return list(found.values())


def resolve_models(models: tuple[str, ...], *, where: str) -> list[str]:
    """Model paths: files as given, or names of bundled demo models.

    Raises
    ------
    ConfigError
        Neither an existing file nor a bundled model name.
    """
    from cnnpipe.models import demo_model_paths, resolve_model

    out = []
    for m in models:
        path = resolve_model(m)
        if path is None:
            msg = (f"{where}: models: {m!r} is neither a file nor a bundled model. Expected an "
                   f"ONNX package path or one of {sorted(demo_model_paths())}.")
            raise ConfigError(msg)
        out.append(path)
    return out


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _quarantine(config: NightlyConfig, night: str, path: Path, sha: str, reason: str) -> Path:
    """Move (or copy) a bad input aside with its reason; returns where it went."""
    folder = config.quarantine / night
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / path.name
    if dest.exists():
        dest = folder / f"{sha[:10]}-{path.name}"
    if config.quarantine_mode is QuarantineMode.MOVE:
        shutil.move(path, dest)
    else:
        shutil.copy2(path, dest)
    info = {"input": str(path), "quarantined_as": str(dest), "sha256": sha, "night": night,
            "reason": reason, "time": now_iso(), "mode": config.quarantine_mode.value}
    dest.with_name(dest.name + ".reason.json").write_text(json.dumps(info, indent=1) + "\n")
    return dest


def _catalog_rows(store: str) -> dict[str, int]:
    import zarr

    attrs: Any = zarr.open_group(store, mode="r").attrs["cnnpipe"]
    rows = attrs.get("catalogs") or {}
    return {str(k): int(v) for k, v in rows.items()}


def _settings(config: NightlyConfig) -> RunConfig:
    """The night's run settings as a RunConfig template (inputs filled in per input)."""
    return RunConfig.from_dict({**config.run, "inputs": ("-",), "models": ("-",), "out": "-"})


@dataclass(frozen=True)
class _Todo:
    path: Path
    sha: str
    key: str


def _triage(path: Path, *, model_sha: list[str], template: RunConfig,
            ledger: Ledger) -> _Todo | InputOutcome:
    """The input's ledger key, or its outcome when there is nothing to do."""
    try:
        sha = ledger.content_sha256(path)
    except OSError as exc:
        return InputOutcome(input=str(path), status="failed",
                            reason=f"cannot read it ({exc.strerror or exc})")
    key = ledger_key(sha, model_sha, template.to_dict())
    done = ledger.get(key)
    if done is None:
        return _Todo(path, sha, key)
    event("input_skipped", input=str(path), status=done.status.value, night=done.night,
          store=done.store)
    return InputOutcome(input=str(path), status="skipped", sha256=sha, store=done.store,
                        reason=f"already {done.status.value} (night {done.night})")


def _same_content(todo: list[_Todo]) -> tuple[list[_Todo], list[InputOutcome]]:
    """The first input of each ledger key, and outcomes for its copies of this night."""
    first: dict[str, _Todo] = {}
    copies = []
    for t in todo:
        if t.key not in first:
            first[t.key] = t
            continue
        reason = f"same content, models and settings as {first[t.key].path} (this night)"
        event("input_skipped", input=str(t.path), reason=reason)
        copies.append(InputOutcome(input=str(t.path), status="skipped", sha256=t.sha,
                                   reason=reason))
    return list(first.values()), copies


def _side_by_side(work: Callable[[int, _Todo], InputOutcome], todo: Sequence[_Todo],
                  at_once: int) -> list[InputOutcome]:
    """``work(i, t)`` for every input, ``at_once`` at a time; outcomes in input order.

    An exception (a configuration or model error, which would fail every input) stops
    the inputs not yet started and is raised once the running ones have finished, so
    that no store is left half-written by this job.
    """
    if at_once <= 1:
        return [work(i, t) for i, t in enumerate(todo, 1)]
    stop = threading.Event()

    def guarded(i: int, t: _Todo) -> InputOutcome | None:
        if stop.is_set():
            return None  # not started: another input failed the night
        try:
            return work(i, t)
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="cnnpipe-input") as pool:
        futures = [pool.submit(guarded, i, t) for i, t in enumerate(todo, 1)]
        # a None (skipped) always comes with a later exception, raised here in order
        return [o for o in (f.result() for f in futures) if o is not None]


#: pyplot keeps global state: inputs side by side make their quick-looks one at a time
_PLOTTING = threading.Lock()


def _process(
    config: NightlyConfig, night: str, todo: _Todo, *, models: list[str],
    template: RunConfig, cluster: NightCluster, ledger: Ledger, reporter_every: float,
    side_by_side: bool = False, plots: bool = True,
) -> InputOutcome:
    from cnnpipe.pipeline.progress import make_reporter
    from cnnpipe.pipeline.runner import run

    t0 = time.monotonic()
    path, sha, key = todo.path, todo.sha, todo.key
    store = config.night_dir(night) / f"{_stem(path)}-{key[:10]}.zarr"
    rc = replace(template, inputs=(str(path),), models=tuple(models), out=str(store),
                 scheduler=cluster.address, ort_threads=cluster.ort_threads,
                 tls_ca_file=config.cluster.tls_ca_file, tls_cert=config.cluster.tls_cert,
                 tls_key=config.cluster.tls_key, workers=None, threads=None)
    event("input_started", input=str(path), sha256=sha, store=str(store))
    try:
        # runs side by side log plain lines, each naming its input, not several bars
        reporter = make_reporter(every_s=reporter_every, tty=False if side_by_side else None,
                                 label=path.name if side_by_side else "")
        summary = run(rc, reporter=reporter)
    except (InputError, ModelMismatchError) as exc:
        reason = " ".join(str(exc).split())
        dest = _quarantine(config, night, path, sha, reason)
        shutil.rmtree(store, ignore_errors=True)  # derived from a bad input: nothing to keep
        ledger.put(Entry(key=key, status=EntryStatus.QUARANTINED, input=str(path),
                         input_sha256=sha, night=night, finished=now_iso(), reason=reason))
        event("input_quarantined", logging.WARNING, input=str(path), quarantined_as=str(dest),
              reason=reason)
        return InputOutcome(input=str(path), status="quarantined", sha256=sha,
                            seconds=time.monotonic() - t0, reason=reason)
    except (ConfigError, ModelError):
        raise  # the same for every input: stop the night
    except CnnpipeError as exc:  # worker, store or lock trouble: retried by the next run
        reason = " ".join(str(exc).split())
        event("input_failed", logging.ERROR, input=str(path), reason=reason)
        return InputOutcome(input=str(path), status="failed", sha256=sha, store=str(store),
                            seconds=time.monotonic() - t0, reason=reason)
    if summary.status != "complete":
        reason = f"stopped with {summary.pending} work units pending"
        return InputOutcome(input=str(path), status="failed", sha256=sha, store=str(store),
                            seconds=time.monotonic() - t0, reason=reason)
    ledger.put(Entry(key=key, status=EntryStatus.DONE, input=str(path), input_sha256=sha,
                     night=night, finished=now_iso(), store=str(store)))
    outcome = InputOutcome(input=str(path), status="done", sha256=sha, store=str(store),
                           seconds=time.monotonic() - t0, units=summary.units,
                           pixels=summary.pixels,
                           catalogs=_catalog_rows(str(store)))
    event("input_done", input=str(path), store=str(store), units=summary.units,
          seconds=round(outcome.seconds, 2))
    if plots:  # now, beside the other inputs' inference, not after the night's last one
        with _PLOTTING:
            outcome.quicklooks, outcome.craters = quicklooks(
                str(store), config.reports / night, prefix=store.stem)
    return outcome


def run_nightly(
    config: NightlyConfig, night: str, *, reporter_every: float = 30.0, plots: bool = True,
) -> NightReport:
    """Process the night ``night`` (YYYY-MM-DD) of ``config``; see the module docstring.

    Returns
    -------
    NightReport
        Written to ``<reports>/<night>.json`` / ``.md`` as well; ``exit_code`` says how
        it went.

    Raises
    ------
    LockedError
        Another nightly job holds this night's partition.
    ConfigError
        The configuration does not work (unknown model, cluster package missing, ...);
        nothing was processed.
    """
    from cnnpipe.modelmeta import model_sha256, read_model_meta
    from cnnpipe.pipeline.runner import local_gpu

    template = _settings(config)
    models = resolve_models(config.models, where=config.source)
    for m in models:
        read_model_meta(m)  # a broken model stops the night before any input is touched
    model_sha = [model_sha256(m) for m in models]
    night_dir = config.night_dir(night)
    t_start = time.monotonic()
    report = NightReport(night=night, config=config.to_dict(), started=now_iso())
    lock = StoreLock(night_dir, run_id=uuid.uuid4().hex[:12])
    lock.acquire()
    try:
        night_dir.mkdir(parents=True, exist_ok=True)
        inputs = find_inputs(config.inputs, night)
        event("night_started", night=night, inputs=len(inputs), partition=str(night_dir))
        ledger = Ledger(config.ledger)
        triaged = [_triage(p, model_sha=model_sha, template=template, ledger=ledger)
                   for p in inputs]
        todo, copies = _same_content([t for t in triaged if isinstance(t, _Todo)])
        report.outcomes = [t for t in triaged if isinstance(t, InputOutcome)] + copies
        report.cluster = "none (nothing to do)"
        if todo:  # a night with nothing new starts no cluster
            gpu = config.cluster.kind.value == "embedded" and local_gpu(
                replace(template, scheduler=None))
            with open_cluster(config.cluster, template, gpu=gpu) as cluster:
                # one input beyond the threads: its store, merge and reads overlap the
                # others' inference (16 frames of 2048² on 2 cores: 3-9 % less time)
                default = cluster.threads + 1 if cluster.threads else 2
                at_once = min(len(todo), config.cluster.inputs_at_once or default)
                report.cluster = f"{cluster.description}; {at_once} input(s) at a time"
                event("cluster", description=cluster.description, todo=len(todo),
                      inputs_at_once=at_once)

                finished: dict[int, InputOutcome] = {}

                def work(i: int, t: _Todo) -> InputOutcome:
                    event("input", index=f"{i}/{len(todo)}", input=str(t.path))
                    finished[i] = _process(
                        config, night, t, models=models, template=template, cluster=cluster,
                        ledger=ledger, reporter_every=reporter_every, side_by_side=at_once > 1,
                        plots=plots)
                    return finished[i]

                try:
                    _side_by_side(work, todo, at_once)
                finally:  # the report lists every finished input, also when one failed
                    report.outcomes += [finished[i] for i in sorted(finished)]
        now = {o.status for o in report.outcomes}
        report.exit_code = 1 if "failed" in now else 3 if "quarantined" in now else 0
        for o in report.outcomes:
            o.invocation = report.started
        report.this_invocation = report.counts()
        report.carry_over(config.reports)
        return report
    except BaseException as exc:
        if not report.error:
            report.error = " ".join(str(exc).split()) or type(exc).__name__
            report.exit_code = getattr(exc, "exit_code", 1)
        raise
    finally:
        report.finished = now_iso()
        report.seconds = time.monotonic() - t_start
        try:
            json_path, md_path = write_report(report, config.reports)
            event("night_finished", night=night, exit_code=report.exit_code,
                  report=str(md_path), **report.counts())
        except OSError as exc:
            log.error("could not write the night's report to %s: %s", config.reports, exc)
        lock.release()
