"""``cnnpipe run`` as a library call: validate, plan, open the store, execute, summarise.

:func:`run` is the whole run; :func:`prepare` does everything that needs no store and
no cluster (models read and checked against the data, sources opened, the plan made),
and :func:`dry_run` describes the plan.  Everything a model or an input can get wrong is
found by :func:`prepare`, before any work starts.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cnnpipe import __version__
from cnnpipe.errors import InputError, ModelError, ModelMismatchError
from cnnpipe.modelmeta import ModelMeta, Task, load_onnx, model_meta, model_sha256
from cnnpipe.pipeline.catalogs import merge_catalogs
from cnnpipe.pipeline.config import WINDOWS, RunConfig, StoreMode
from cnnpipe.pipeline.execute import (
    check_security,
    cluster_plan,
    connect,
    device_spec,
    run_units,
)
from cnnpipe.pipeline.heads import head_for
from cnnpipe.pipeline.plan import Plan, make_plan
from cnnpipe.pipeline.positions import Positions, partition, read_catalog, to_pixels
from cnnpipe.pipeline.progress import NullReporter, Reporter
from cnnpipe.pipeline.sources import Source, open_sources
from cnnpipe.pipeline.store import (
    RUN_SCHEMA,
    RunStore,
    StoreLock,
    UnitState,
    file_fingerprint,
    identity_hash,
    now_iso,
)
from cnnpipe.pipeline.worker import ModelJob, UnitTask

__all__ = ["Prepared", "RunSummary", "dry_run", "local_gpu", "prepare", "run"]

log = logging.getLogger("cnnpipe.run")


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """A validated run before it touches the store or a cluster."""

    config: RunConfig
    sources: tuple[Source, ...]
    jobs: tuple[ModelJob, ...]
    #: source key -> per model, the indices of its bands in the source
    channels: Mapping[str, tuple[tuple[int, ...], ...]]
    plan: Plan
    identity: Mapping[str, Any]
    model_bytes: Mapping[str, int]
    #: source key -> (uy, ux) -> input-catalog positions (None: no --catalog)
    positions: Mapping[str, Mapping[tuple[int, int], Positions]] | None = None


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """What a run did (this invocation)."""

    store: str
    run_id: str
    status: str
    images: int
    units: int
    done: int
    blank: int
    skipped: int
    pixels: int
    seconds: float

    @property
    def pending(self) -> int:
        """Units still pending (a stopped run)."""
        return self.units - self.done - self.blank - self.skipped

    @property
    def mpix_per_s(self) -> float:
        """Megapixels of processed units per second."""
        return self.pixels / 1e6 / max(self.seconds, 1e-9)

    def lines(self) -> list[str]:
        """The end-of-run summary, one fact per line."""
        return [
            f"store: {self.store} (status {self.status}, run {self.run_id})",
            f"images: {self.images}",
            f"units: {self.units} ({self.done} done, {self.blank} blank, "
            f"{self.skipped} already done" + (f", {self.pending} pending" if self.pending else "")
            + ")",
            f"megapixels: {self.pixels / 1e6:.2f} in {self.seconds:.1f} s "
            f"({self.mpix_per_s:.2f} Mpix/s)",
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["pending"] = self.pending
        return d


# -- preparation -----------------------------------------------------------------------


def _check_graph(path: str, meta: ModelMeta, model: Any) -> None:
    """The graph ``model`` read from ``path`` agrees with the metadata (I/O, sizes)."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in inits}
    outputs = {o.name for o in graph.output}
    if meta.input.name not in inputs:
        msg = (
            f"{path}: metadata names input {meta.input.name!r} but the graph's inputs are "
            f"{sorted(inputs)}."
        )
        raise ModelError(msg)
    if meta.output.name not in outputs:
        msg = (
            f"{path}: metadata names output {meta.output.name!r} but the graph's outputs are "
            f"{sorted(outputs)}."
        )
        raise ModelError(msg)
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[meta.input.name].type.tensor_type.shape.dim]
    if len(dims) != 4:
        msg = f"{path}: expected a 4-D NCHW input. Got {len(dims)} dimensions."
        raise ModelError(msg)
    if dims[1] is not None and dims[1] != meta.n_bands:
        msg = (
            f"{path}: metadata lists {meta.n_bands} band(s) {list(meta.bands)} but the input "
            f"tensor has {dims[1]} channels."
        )
        raise ModelError(msg)
    if meta.input.patch is not None:
        for axis, (d, p) in enumerate(zip(dims[2:], meta.input.patch)):
            if d is not None and d != p:
                msg = (
                    f"{path}: metadata patch {meta.input.patch} but the input tensor is "
                    f"{d} pixels along axis {axis + 2}."
                )
                raise ModelError(msg)
    elif any(d is not None for d in dims[2:]):
        msg = (
            f"{path}: metadata says fully convolutional (patch null) but the input tensor "
            f"has a fixed size {dims[2:]}; export with dynamic height/width or set the patch."
        )
        raise ModelError(msg)
    if meta.task is not Task.CLASSIFY and _channel_softmax_output(model, meta.output.name):
        log.warning(
            "%s: its output is a Softmax over the class axis, which onnxruntime's CPU "
            "kernel runs slowly (29 %% of the demo U-Net's time); `cnnpipe export "
            "--from-onnx %s --out NEW.onnx` writes the same function ~1.5x faster", path, path)


def _channel_softmax_output(model: Any, output: str) -> bool:
    """``output`` comes from a ``Softmax`` over axis 1 of an ``(n, c, y, x)`` map.

    The graphs ``cnnpipe export`` writes have it rewritten
    (:func:`cnnpipe.export.graphopt.decompose_channel_softmax`); others may not.  Before
    opset 13 Softmax normalised over all axes from ``axis`` on: not this case.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        return False
    for node in model.graph.node:
        if node.op_type == "Softmax" and node.domain in ("", "ai.onnx") and output in node.output:
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            return axis in (1, -3)
    return False


def _channels(source: Source, meta: ModelMeta, path: str) -> tuple[int, ...]:
    """Which of ``source``'s bands a model takes (a 1-band model fits any 1-band image)."""
    if meta.n_bands == 1 and len(source.bands) == 1:
        return (0,)
    missing = [b for b in meta.bands if b not in source.bands]
    if missing:
        msg = (
            f"model {meta.name} ({path}) needs bands {','.join(meta.bands)}; image "
            f"{source.key} has bands {','.join(source.bands)} (missing {','.join(missing)}); "
            f"give each band as --band NAME=PATH."
        )
        raise ModelMismatchError(msg)
    return tuple(source.bands.index(b) for b in meta.bands)


def _model_path(given: str) -> str:
    """A ``--model``: an ONNX package's path, or a bundled demo model's name."""
    from cnnpipe.models import demo_model_paths, resolve_model

    path = resolve_model(given)
    if path is None:
        msg = (f"{given}: no such model file, nor a bundled model (`cnnpipe models` lists "
               f"them: {', '.join(sorted(demo_model_paths()))}).")
        raise ModelError(msg)
    return path


def prepare(config: RunConfig) -> Prepared:
    """Read and check models and inputs, and plan the run (no store, no cluster).

    Raises
    ------
    ModelError, ModelMismatchError
        A model is unreadable or does not fit the data (the message names both sides).
    InputError, ConfigError
        An input or a setting is unusable.
    """
    metas: list[ModelMeta] = []
    jobs_raw: list[tuple[str, str, ModelMeta]] = []
    model_bytes: dict[str, int] = {}
    for given in config.models:
        path = _model_path(given)
        model = load_onnx(path)  # read once: metadata, graph checks and sha256 share it
        meta = model_meta(model, path)
        _check_graph(path, meta, model)
        if meta.name in model_bytes:
            msg = (
                f"Two models are named {meta.name!r} ({path} and another --model); model "
                "names become store groups and must differ."
            )
            raise ModelError(msg)
        if len(meta.output.classes) > 255:
            msg = f"{path}: at most 255 classes fit a uint8 mask. Got {len(meta.output.classes)}."
            raise ModelError(msg)
        metas.append(meta)
        jobs_raw.append((path, model_sha256(path, model=model), meta))
        model_bytes[meta.name] = os.path.getsize(path)

    if config.catalog and not config.windows and not os.path.isfile(config.catalog):
        msg = f"--catalog {config.catalog}: no such file; check the path."
        raise InputError(msg)
    union: list[str] = []
    for m in metas:
        union += [b for b in m.bands if b not in union]
    if config.band_files:
        model_bands: tuple[str, ...] = tuple(union)
        named = [(p, m) for p, _, m in jobs_raw]
    else:
        multi = [(p, m) for p, _, m in jobs_raw if m.n_bands > 1]
        model_bands = multi[0][1].bands if multi else (metas[0].bands[0],)
        named = multi[:1]
    label = "model " + ", ".join(f"{m.name} ({p})" for p, m in named) if named else "model"
    sources = tuple(open_sources(
        list(config.inputs), hdu=config.hdu, bands=dict(config.band_files) or None,
        model_bands=model_bands, model_label=label,
    ))
    channels = {s.key: tuple(_channels(s, m, p) for p, _, m in jobs_raw) for s in sources}
    for s in sources:
        for p, _, m in jobs_raw:
            if m.task is Task.CLASSIFY and m.input.patch is not None:
                py, px = m.input.patch
                if s.shape[0] < py or s.shape[1] < px:
                    msg = (
                        f"model {m.name} ({p}) classifies {py}x{px} pixel windows; image "
                        f"{s.key} is only {s.shape[0]}x{s.shape[1]} pixels."
                    )
                    raise ModelMismatchError(msg)
    plan = make_plan(
        [(s.key, s.shape, len(s.bands)) for s in sources], metas,
        tile=config.tile, patch=config.patch, batch=config.batch,
    )
    jobs = tuple(
        ModelJob(name=m.name, path=p, sha256=sha, meta=m, geometry=g)
        for (p, sha, m), g in zip(jobs_raw, plan.models)
    )
    positions = _positions(config, sources, metas)
    catalog: Any = None  # what classify heads catalog: sep sources, a file, or windows
    if config.windows and any(m.task is Task.CLASSIFY for m in metas):
        catalog = WINDOWS
    elif positions is not None and config.catalog:
        catalog = {"path": os.path.abspath(config.catalog),
                   "fingerprint": file_fingerprint(config.catalog),
                   "origin": config.catalog_origin}
    identity = {
        "schema": RUN_SCHEMA,
        "tile": config.tile,
        "models": {j.name: {"sha256": j.sha256, "task": j.meta.task.value} for j in jobs},
        "geometry": {g.name: g.to_dict() for g in plan.models},
        "inputs": {s.key: _input_attrs(s) for s in sources},
        "catalog": catalog,
    }
    return Prepared(
        config=config, sources=sources, jobs=jobs, channels=channels, plan=plan,
        identity=identity, model_bytes=model_bytes, positions=positions,
    )


def _positions(
    config: RunConfig, sources: tuple[Source, ...], metas: list[ModelMeta]
) -> dict[str, dict[tuple[int, int], Positions]] | None:
    """Input-catalog positions per image and work unit (client side), or None."""
    if not config.catalog:
        return None
    if not any(m.task is Task.CLASSIFY for m in metas):
        log.warning("--catalog %s: no classify model in this run; the catalog is not used.",
                    config.catalog)
        return None
    if config.windows:
        return None
    cat = read_catalog(config.catalog, origin=config.catalog_origin)
    out = {}
    for s in sources:
        pos = to_pixels(cat, s.wcs() if cat.sky else None, s.shape, key=s.key)
        log.info("--catalog %s: %d of %d positions in image %s", config.catalog, len(pos),
                 len(cat), s.key)
        out[s.key] = partition(pos, tile=config.tile)
    return out


def _input_attrs(s: Source) -> dict[str, Any]:
    return {
        "paths": [r.path for r in s.refs],
        # a rerun over a replaced file of the same shape must not resume stale results
        "fingerprints": [file_fingerprint(r.path) for r in s.refs],
        "hdu": [r.hdu for r in s.refs],
        "extname": [r.extname for r in s.refs],
        "shape": list(s.shape),
        "bands": list(s.bands),
    }


def dry_run(config: RunConfig) -> list[str]:
    """Describe a run (images, units, patches, tasks, memory) without running anything."""
    import onnx

    from cnnpipe.pipeline.activations import peak_activation_bytes

    prep = prepare(config)
    cp = cluster_plan(config, units=prep.plan.n_units)
    acts = {
        j.name: peak_activation_bytes(onnx.load(j.path), (j.geometry.batch, j.meta.n_bands,
                                                          *j.geometry.patch))
        for j in prep.jobs
    }
    lines = prep.plan.describe(threads_per_worker=max(1, cp.threads),
                               model_bytes=prep.model_bytes, activation_bytes=acts)
    if not config.scheduler:
        lines.append(f"embedded cluster: {cp.workers} worker(s) x {cp.threads} thread(s), "
                     f"{cp.ort_threads} onnxruntime thread(s) each")
    return lines


# -- the run -----------------------------------------------------------------------------


def _tasks(prep: Prepared, store: RunStore, pending: Mapping[str, np.ndarray],
           spec: Any) -> Iterator[UnitTask]:
    images = {i.key: i for i in prep.plan.images}
    for s in prep.sources:
        im = images[s.key]
        todo = pending[s.key]  # (models, uy, ux) bool
        for unit in im.units():
            want = todo[:, unit.uy, unit.ux]
            if not want.any():
                continue
            idx = [k for k in range(len(prep.jobs)) if want[k]]
            pos = None
            if prep.positions is not None:
                pos = prep.positions[s.key].get((unit.uy, unit.ux), Positions.empty())
            yield UnitTask(
                store=store.path, source=s, unit=unit,
                models=tuple(prep.jobs[k] for k in idx),
                channels=tuple(prep.channels[s.key][k] for k in idx),
                session=spec, positions=pos, windows=prep.config.windows,
            )


def _ledgers(prep: Prepared, store: RunStore) -> dict[str, np.ndarray]:
    """Per image: ``(models, uy, ux)`` ledger states."""
    return {s.key: np.stack([store.ledger(s.key, j.name) for j in prep.jobs])
            for s in prep.sources}


def run(
    config: RunConfig,
    *,
    reporter: Reporter | None = None,
    stop_after: int | None = None,
) -> RunSummary:
    """Run every model over every input into the store ``config.out``.

    Resumes a store of the same configuration (done units are skipped), refuses one of
    another configuration unless ``config.mode`` is ``overwrite``, and holds the store's
    lock throughout.  The run attribute ``status`` becomes ``complete`` last, and only
    when every unit of every image and model is done or blank.

    Parameters
    ----------
    config : RunConfig
        What to run.
    reporter : Reporter, optional
        Progress display (default: none).
    stop_after : int, optional
        Stop after this many units (time-boxed runs, tests); the store stays ``running``
        with the rest pending, and a rerun resumes it.

    Raises
    ------
    CnnpipeError
        Any validation, store, lock or worker failure; once the store exists, its status
        is then ``failed`` with the message in ``error``.
    """
    t0 = time.monotonic()
    prep = prepare(config)
    gpu = local_gpu(config)  # a missing local GPU is refused before the store is touched
    check_security(config)
    reporter = reporter or NullReporter()
    run_id = uuid.uuid4().hex[:12]
    out = os.path.abspath(config.out)
    lock = StoreLock(out, run_id=run_id)
    lock.acquire()
    store: RunStore | None = None
    try:
        store, resumed = RunStore.prepare(
            out, identity=prep.identity, overwrite=config.mode is StoreMode.OVERWRITE
        )
        store.update_run(
            schema=RUN_SCHEMA, version=__version__, run_id=run_id, status="running",
            started=now_iso(), finished=None, error=None, config=config.to_dict(),
            models={j.name: {"sha256": j.sha256, "path": j.path, "metadata": j.meta.to_dict()}
                    for j in prep.jobs},
            inputs={s.key: _input_attrs(s) for s in prep.sources},
            identity=prep.identity, identity_sha256=identity_hash(prep.identity),
        )
        for s in prep.sources:
            store.create_image(
                s.key, shape=s.shape, tile=config.tile, bands=s.bands, header=s.header,
                has_wcs=s.has_wcs,
                models=[(j.name, head_for(j.meta).channels, head_for(j.meta).prob_dims,
                         j.meta.output.classes) for j in prep.jobs],
            )
        before = _ledgers(prep, store)
        pending = {k: v == UnitState.PENDING for k, v in before.items()}
        skipped = sum(int((~p.any(axis=0)).sum()) for p in pending.values())
        n_todo = prep.plan.n_units - skipped
        if resumed:
            log.info("resuming %s: %d of %d units already done", out, skipped, prep.plan.n_units)
        results = []
        if n_todo:
            cp = cluster_plan(config, gpu=gpu, units=n_todo)
            with connect(config, cp) as client:
                spec, resources = device_spec(
                    client, config, cp, [(j.path, j.sha256) for j in prep.jobs]
                )
                reporter.start(total=prep.plan.n_units, skipped=skipped)
                try:
                    results = run_units(
                        client, _tasks(prep, store, pending, spec), run_id=run_id,
                        retries=config.retries, resources=resources, reporter=reporter,
                        stop_after=stop_after,
                    )
                finally:
                    reporter.close()
        after = _ledgers(prep, store)
        complete = all(bool((v != UnitState.PENDING).all()) for v in after.values())
        summary = RunSummary(
            store=out, run_id=run_id, status="complete" if complete else "running",
            images=len(prep.sources), units=prep.plan.n_units,
            done=sum(r.state is UnitState.DONE for r in results),
            blank=sum(r.state is UnitState.BLANK for r in results), skipped=skipped,
            pixels=sum(r.pixels for r in results), seconds=time.monotonic() - t0,
        )
        if complete:
            # the merge step: fragments -> catalogs/<model>/, rewritten whole (idempotent)
            rows = merge_catalogs(store.path, [j.meta for j in prep.jobs],
                                  [s.key for s in prep.sources])
            store.update_run(status="complete", finished=now_iso(), summary=summary.to_dict(),
                             catalogs=rows)
        else:
            store.update_run(summary=summary.to_dict())
            log.warning("%s: stopped with %d units pending; run again to resume.", out,
                        summary.pending)
        return summary
    except BaseException as exc:
        if store is not None:
            try:
                store.update_run(status="failed", finished=now_iso(),
                                 error=" ".join(str(exc).split()) or type(exc).__name__)
            except Exception as mark_exc:  # e.g. the disk is full: one line, no traceback
                log.error("%s: could not mark the store as failed (%s); its status stays "
                          "'running'.", out, " ".join(str(mark_exc).split()))
        raise
    finally:
        lock.release()


def local_gpu(config: RunConfig) -> bool:
    """Whether the embedded cluster gets a GPU; checks this machine's onnxruntime.

    Raises
    ------
    ConfigError
        ``--device gpu`` but this machine's onnxruntime has no CUDA provider.
    """
    from cnnpipe.errors import ConfigError
    from cnnpipe.pipeline.worker import CUDA

    if config.scheduler or config.device.value == "cpu":
        return False
    import onnxruntime as ort

    available = ort.get_available_providers()
    if CUDA in available:
        return True
    if config.device.value == "gpu":
        msg = (
            f"--device gpu, but onnxruntime here has no {CUDA} (providers: "
            f"{', '.join(available)}). Install onnxruntime-gpu (CUDA 13, cuDNN 9), or use "
            "--device cpu."
        )
        raise ConfigError(msg)
    return False
