"""The fused work-unit task that runs on a Dask worker, and its per-process session cache.

:func:`process_unit` is a plain function of small, picklable arguments
(:class:`UnitTask`): it reads the unit's pixels (plus the largest halo and context of
its models) once, normalises them patch by patch, runs fixed-shape batches through
onnxruntime, stitches the outputs with the model's task head, writes the unit's own
output chunks and catalog fragment and then its ledger entries, and returns a small
:class:`UnitResult`.  Pixels never travel through the scheduler.

onnxruntime sessions are created once per worker process and model (a module-level dict
behind a lock: creating a session holds the GIL and takes a while; ``run`` is
thread-safe) and are never pickled.  The batches themselves run on the process's
:class:`Lanes`, one inference stream per worker thread, shared by the units in flight.
"""

from __future__ import annotations

import collections
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cnnpipe.errors import WorkerError
from cnnpipe.modelmeta import ModelMeta
from cnnpipe.normalise import normalise
from cnnpipe.pipeline.catalogs import write_fragment
from cnnpipe.pipeline.heads import UnitView, head_for
from cnnpipe.pipeline.plan import ModelGeometry, Unit, infer_region, read_window
from cnnpipe.pipeline.positions import Positions
from cnnpipe.pipeline.sources import Source
from cnnpipe.pipeline.store import UnitState, mark_unit, write_unit

__all__ = [
    "Lanes",
    "ModelJob",
    "SessionSpec",
    "UnitResult",
    "UnitTask",
    "clear_sessions",
    "cpu_graph",
    "get_session",
    "infer_unit",
    "process_unit",
    "providers_for",
    "worker_lanes",
]

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
CPU = "CPUExecutionProvider"

Providers = tuple[tuple[str, tuple[tuple[str, str], ...]], ...]


def providers_for(device: str, tensorrt: bool, available: Sequence[str]) -> Providers:
    """The onnxruntime providers (name, options) for a device on a host with ``available``.

    ``cpu``: CPU only.  ``gpu``: (TensorRT,) CUDA, CPU — CUDA must then be *active* in
    the session, which :func:`get_session` checks.  ``auto``: as ``gpu`` when CUDA is
    available, CPU otherwise.  cuDNN searches its convolution algorithms exhaustively
    once, which pays off because every batch of a run has the same shape.
    """
    if device == "cpu" or (device == "auto" and CUDA not in available):
        return ((CPU, ()),)
    cuda = (CUDA, (("device_id", "0"), ("cudnn_conv_algo_search", "EXHAUSTIVE")))
    out: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    if tensorrt:
        cache = os.path.join(tempfile.gettempdir(), "cnnpipe-trt-cache")
        out.append((TENSORRT, (("trt_engine_cache_enable", "True"),
                               ("trt_engine_cache_path", cache))))
    return (*out, cuda, (CPU, ()))


@dataclass(frozen=True, kw_only=True)
class SessionSpec:
    """How workers create sessions: device, TensorRT, intra-op threads."""

    device: str = "cpu"
    tensorrt: bool = False
    intra_op_threads: int = 1


@dataclass(frozen=True, kw_only=True)
class ModelJob:
    """One model of a run as a task needs it (small: metadata, no weights)."""

    name: str
    path: str
    sha256: str
    meta: ModelMeta
    geometry: ModelGeometry


@dataclass(frozen=True, kw_only=True)
class UnitTask:
    """Arguments of one fused task: which pixels, which models, where to write.

    ``channels[i]`` are the indices into ``source.bands`` that model ``models[i]`` takes,
    in its band order.  ``positions``: the input-catalog sources in the unit for classify
    heads (None: they detect sources themselves); ``windows``: classify heads catalog
    their sliding windows instead (``--catalog windows``).
    """

    store: str
    source: Source
    unit: Unit
    models: tuple[ModelJob, ...]
    channels: tuple[tuple[int, ...], ...]
    session: SessionSpec = field(default_factory=SessionSpec)
    positions: Positions | None = None
    windows: bool = False


@dataclass(frozen=True, kw_only=True)
class UnitResult:
    """What a task returns: counts and timings only."""

    key: str
    uy: int
    ux: int
    state: UnitState
    models: tuple[str, ...]
    pixels: int
    patches: int = 0
    read_s: float = 0.0
    infer_s: float = 0.0
    write_s: float = 0.0
    host: str = ""
    pid: int = 0


# -- sessions --------------------------------------------------------------------------

_SESSIONS: dict[tuple[str, str, SessionSpec, tuple[int, int] | None], Any] = {}
_SESSIONS_LOCK = threading.Lock()


def clear_sessions() -> None:
    """Forget this process's cached sessions."""
    with _SESSIONS_LOCK:
        _SESSIONS.clear()


def get_session(path: str, sha256: str, spec: SessionSpec,
                patch: tuple[int, int] | None = None) -> Any:
    """The cached onnxruntime session of a model in this process (created once).

    ``patch``: the (y, x) input size every call of the run will have; a CPU session
    fixes it and runs a faster, equivalent graph (:func:`cpu_graph`).

    Raises
    ------
    WorkerError
        ``gpu`` was requested but CUDA is not active in the session (onnxruntime falls
        back to CPU with only a log line when CUDA/cuDNN libraries are missing).
    """
    if spec.device != "cpu":
        patch = None  # GPU sessions are used as the package has them (and probed so)
    key = (path, sha256, spec, patch)
    session = _SESSIONS.get(key)
    if session is not None:
        return session
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            session = _create_session(path, spec, patch)
            _SESSIONS[key] = session
    return session


def cpu_graph(path: str, patch: tuple[int, int], options: Any) -> str | bytes:
    """The model a CPU session of fixed ``patch`` size loads: a path or the graph's bytes.

    Where the graph has one input whose two spatial dimensions are named
    (``dim_param``), splits every concatenation that feeds a convolution
    (:func:`cnnpipe.export.graphopt.split_concat_convs`: exact up to float32 rounding)
    and fixes those dimensions in ``options`` (onnxruntime's free dimension overrides),
    without which onnxruntime cannot fuse the split's sums and leave its blocked NCHWc
    layout alone.  The demo U-Net: 1.04x one thread's speed on 1120² patches (3
    concatenations).  Anything else (fixed sizes, external weights, no concatenation)
    loads ``path`` as it is, its dimensions left free.
    """
    import onnx

    from cnnpipe.export.graphopt import split_concat_convs

    model = onnx.load(path, load_external_data=False)
    g = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in g.initializer):
        return path
    weights = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in weights]
    dims = inputs[0].type.tensor_type.shape.dim if len(inputs) == 1 else []
    names = [d.dim_param for d in dims[2:]]
    if len(names) != 2 or not all(names) or (names[0] == names[1] and patch[0] != patch[1]):
        return path
    fast, n = split_concat_convs(model)
    if not n:  # a fixed size alone gained nothing (300.7 against 296.1 ms): leave it free
        return path
    for name, size in zip(names, patch):
        options.add_free_dimension_override_by_name(name, int(size))
    return fast.SerializeToString()


def _create_session(path: str, spec: SessionSpec, patch: tuple[int, int] | None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = spec.intra_op_threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # Idle onnxruntime threads must not spin on cores the other workers need.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = providers_for(spec.device, spec.tensorrt, ort.get_available_providers())
    model = path if patch is None or providers != ((CPU, ()),) else cpu_graph(path, patch, so)
    session = ort.InferenceSession(
        model, sess_options=so, providers=[(name, dict(opts)) for name, opts in providers]
    )
    active = session.get_providers()
    if spec.device == "gpu" and CUDA not in active:
        msg = (
            f"{socket.gethostname()}: --device gpu, but onnxruntime runs {path} with "
            f"{', '.join(active)}: CUDA is not active (needs onnxruntime-gpu with CUDA and "
            "cuDNN libraries it can load). Fix the worker's CUDA setup or use --device cpu."
        )
        raise WorkerError(msg)
    return session


# -- inference lanes -------------------------------------------------------------------

RunFn = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.floating]]


class Lanes:
    """The inference streams of one worker process: threads that only call ``run``.

    A unit's task thread stacks and normalises its batches and hands them to the lanes,
    a few ahead, then stitches the outputs in order; the lanes are shared by every unit
    the process runs at once.  So the last unit of a run (or a resumed run's only one)
    spreads its batches over every stream instead of leaving the others idle, and a
    unit's reads, stitching and writes never hold an inference stream.  As many lanes as
    the worker has threads: streams x intra-op threads stay within the cores.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self._pool = ThreadPoolExecutor(width, thread_name_prefix="cnnpipe-lane")

    def map(self, run: RunFn, xs: Iterable[npt.NDArray[np.float32]]
            ) -> Iterator[npt.NDArray[np.floating]]:
        """``run(x)`` for each ``x``, in order, with up to ``width + 1`` calls ahead."""
        flight: collections.deque[Future[npt.NDArray[np.floating]]] = collections.deque()
        try:
            for x in xs:
                flight.append(self._pool.submit(run, x))
                if len(flight) > self.width:
                    yield flight.popleft().result()
            while flight:
                yield flight.popleft().result()
        finally:
            for f in flight:  # a failed unit: calls not yet started are dropped
                f.cancel()


_LANES: dict[int, Lanes] = {}
_LANES_LOCK = threading.Lock()


def worker_lanes() -> Lanes | None:
    """The lanes of this process, as wide as the running Dask worker's threads (None: one).

    Keyed by width, so runs side by side in one process (``cnnpipe nightly``) share
    the streams instead of multiplying them.  A GPU worker has one thread, the device's
    one owner: no lanes.
    """
    try:
        from distributed import get_worker

        width = int(get_worker().state.nthreads)
    except (ImportError, ValueError):  # not inside a Dask task
        return None
    if width < 2:
        return None
    with _LANES_LOCK:
        lanes = _LANES.get(width)
        if lanes is None:
            lanes = _LANES[width] = Lanes(width)
    return lanes


# -- the task --------------------------------------------------------------------------


def infer_unit(
    pixels: npt.NDArray[np.float32],
    origin: tuple[int, int],
    unit: Unit,
    meta: ModelMeta,
    geometry: ModelGeometry,
    run: RunFn,
    *,
    batch: int,
    fixed_batch: bool = False,
    lanes: Lanes | None = None,
) -> tuple[npt.NDArray[np.float32], int]:
    """Run one model over one unit and stitch its probabilities (float32, before storing).

    Parameters
    ----------
    pixels : (c, h, w) float32
        The model's channels of the unit's read window; NaN = no data.
    origin : (y, x)
        Image coordinates of ``pixels[:, 0, 0]``.
    unit : Unit
        The work unit.
    meta, geometry : ModelMeta, ModelGeometry
        The model and its fixed patch layout.
    run : callable
        ``(n, c, py, px) float32 -> raw output`` (an onnxruntime call).
    batch : int
        Patches per call.
    fixed_batch : bool
        Pad the last batch with zeros to ``batch`` patches (GPU: one shape per run).
    lanes : Lanes, optional
        Run the batches on these shared inference streams (default: one after another
        in the calling thread).  The result is the same either way.

    Returns
    -------
    acc : (channels, y, x) float32
        Stitched probabilities of the unit (before no-data marking).
    n_patches : int
    """
    head = head_for(meta)
    acc = head.new(unit.shape)
    oy, ox = origin
    py, px = geometry.patch
    sy = geometry.spans(0, unit.y0, unit.y1)
    sx = geometry.spans(1, unit.x0, unit.x1)
    patches = [(a, b) for a in sy for b in sx]
    chunks = [patches[i:i + batch] for i in range(0, len(patches), batch)]

    def inputs(chunk: list[tuple[Any, Any]]) -> npt.NDArray[np.float32]:
        x = np.stack([
            pixels[:, a.start - oy:a.start - oy + py, b.start - ox:b.start - ox + px]
            for a, b in chunk
        ])
        x = normalise(x, meta.normalisation)
        if fixed_batch and len(chunk) < batch:
            x = np.concatenate([x, np.zeros((batch - len(chunk), *x.shape[1:]), np.float32)])
        return x

    xs = map(inputs, chunks)
    for chunk, raw in zip(chunks, map(run, xs) if lanes is None else lanes.map(run, xs)):
        probs = head.activate(raw[: len(chunk)])
        for j, (a, b) in enumerate(chunk):
            head.place(
                acc, probs[j],
                src=(slice(a.core0 - a.start, a.core1 - a.start),
                     slice(b.core0 - b.start, b.core1 - b.start)),
                dst=(slice(a.core0 - unit.y0, a.core1 - unit.y0),
                     slice(b.core0 - unit.x0, b.core1 - unit.x0)),
            )
    return acc, len(patches)


def process_unit(task: UnitTask) -> UnitResult:
    """Run every model of ``task`` over its work unit and record it in the ledger.

    A unit whose own pixels (halo excluded) are all without data is written nowhere and
    recorded as blank.  Re-running a unit overwrites its chunks identically.
    """
    unit, source = task.unit, task.source
    t0 = time.perf_counter()
    ry0, ry1, rx0, rx1 = read_window(unit, [m.geometry for m in task.models],
                                     shape=source.shape)
    pixels = source.read_window(ry0, ry1, rx0, rx1)
    inner = pixels[:, unit.y0 - ry0:unit.y1 - ry0, unit.x0 - rx0:unit.x1 - rx0]
    finite = np.isfinite(inner)
    t1 = time.perf_counter()
    common: dict[str, Any] = {
        "key": source.key, "uy": unit.uy, "ux": unit.ux, "pixels": unit.pixels,
        "models": tuple(m.name for m in task.models), "host": socket.gethostname(),
        "pid": os.getpid(), "read_s": t1 - t0,
    }
    if not finite.any():
        for job in task.models:
            mark_unit(task.store, source.key, job.name, unit.uy, unit.ux, UnitState.BLANK)
        return UnitResult(state=UnitState.BLANK, **common)
    infer_s = write_s = 0.0
    n_patches = 0
    for job, channels in zip(task.models, task.channels):
        ta = time.perf_counter()
        session = get_session(job.path, job.sha256, task.session, job.geometry.patch)
        out_name = job.meta.output.name
        in_name = job.meta.input.name
        batch, fixed = job.geometry.batch, CUDA in session.get_providers()
        static = next(i.shape[0] for i in session.get_inputs() if i.name == in_name)
        if isinstance(static, int):  # a model exported with a fixed batch size
            batch, fixed = static, True

        def run(x: npt.NDArray[np.float32], s: Any = session, i: str = in_name,
                o: str = out_name) -> npt.NDArray[np.floating]:
            return np.asarray(s.run([o], {i: x})[0])

        ch = list(channels)
        # all bands in order (the common single-model case): a view, not a copy
        own = pixels if ch == list(range(pixels.shape[0])) else pixels[ch]
        head = head_for(job.meta)
        region = infer_region(job.geometry, unit, source.shape)
        acc, n = infer_unit(
            own, (ry0, rx0), region, job.meta, job.geometry, run,
            batch=batch, fixed_batch=fixed, lanes=worker_lanes(),
        )
        n_patches += n
        nodata: npt.NDArray[np.bool_] = ~np.all(finite[ch], axis=0)
        inner_acc = acc[:, unit.y0 - region.y0:unit.y1 - region.y0,
                        unit.x0 - region.x0:unit.x1 - region.x0]
        mask, prob = head.finish(inner_acc, nodata)
        view = UnitView(
            unit=unit, image_shape=source.shape, region=region,
            acc=acc if region != unit else inner_acc, mask=mask, pixels=own,
            origin=(ry0, rx0), context=job.geometry.context, positions=task.positions,
            windows=task.windows, run=run, batch=batch, fixed_batch=fixed,
        )
        fragment = head.catalog(view)
        tb = time.perf_counter()
        write_unit(task.store, source.key, job.name, y0=unit.y0, x0=unit.x0, mask=mask, prob=prob)
        # the fragment before the ledger: a done unit always has its whole fragment
        write_fragment(task.store, source.key, job.name, unit.uy, unit.ux, fragment)
        mark_unit(task.store, source.key, job.name, unit.uy, unit.ux, UnitState.DONE)
        infer_s += tb - ta
        write_s += time.perf_counter() - tb
    return UnitResult(
        state=UnitState.DONE, patches=n_patches, infer_s=infer_s, write_s=write_s, **common
    )
