"""Dask orchestration of a run: the cluster, the device check, bounded submission.

The client only schedules :func:`cnnpipe.pipeline.worker.process_unit` tasks (one per
work unit, small arguments) and collects small results; workers read and write the data
themselves.  At most ``window`` tasks are in flight (2 x the cluster's threads by
default), so a run over a 100k x 100k mosaic never floods the scheduler.  A unit that
still fails after its retries fails the run, naming the image and the unit.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cnnpipe.errors import CnnpipeError, ConfigError, InputError, WorkerError
from cnnpipe.pipeline.config import Device, RunConfig
from cnnpipe.pipeline.progress import NullReporter, Reporter
from cnnpipe.pipeline.worker import (
    CUDA,
    TENSORRT,
    SessionSpec,
    UnitResult,
    UnitTask,
    get_session,
    process_unit,
)

__all__ = [
    "ClusterPlan",
    "check_security",
    "cluster_plan",
    "connect",
    "device_spec",
    "local_cluster",
    "run_units",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ClusterPlan:
    """Processes and threads of an embedded cluster, and onnxruntime intra-op threads."""

    workers: int
    threads: int
    ort_threads: int
    gpu: bool


def cluster_plan(config: RunConfig, *, cores: int | None = None, gpu: bool = False,
                 units: int | None = None) -> ClusterPlan:
    """Size the embedded cluster so that processes x threads x intra-op <= cores.

    CPU: two Dask threads per worker (two work units in flight, so that one unit's read,
    stitching and writes overlap the other's inference; the batches of both run on the
    worker's :class:`~cnnpipe.pipeline.worker.Lanes`, one inference stream per thread),
    ``cores // 4`` workers (at least 1), and the remaining factor as onnxruntime intra-op
    threads: 1 x 2 x 1 on 2 cores, 4 x 2 x 2 on 16.  Two 1-thread inference streams
    did 20 % more than one 2-thread stream on the 2-core benchmark machine (demo U-Net,
    batch 8 x 512²: 2.0 s against 2.45 s for 64 patches).  A run with fewer ``units``
    to do than that layout has Dask threads (a frame-sized image, the rest of a resumed
    run) gets one worker with a thread per unit and the cores shared out as intra-op
    threads, instead of idle threads: one 2048² unit on 2 cores ran in a median 1.4 s
    instead of 1.8 s (1 x 1 x 2 against one 1-thread stream, before the lanes; with them
    the two layouts are within noise).  Only when none of ``--workers``, ``--threads``,
    ``--ort-threads`` is given.  GPU: one worker (one per GPU with ``--workers``) with one
    thread, which owns the device; tasks there ask for ``GPU=1``.  With ``--scheduler``
    only ``ort_threads`` matters (default 1 per Dask thread).
    """
    cores = max(1, cores or os.cpu_count() or 1)
    if config.scheduler:
        return ClusterPlan(workers=0, threads=0, ort_threads=config.ort_threads or 1, gpu=gpu)
    threads = config.threads or (1 if gpu else min(2, cores))
    workers = config.workers or (1 if gpu else max(1, cores // (2 * threads)))
    chosen = config.workers or config.threads or config.ort_threads
    if not gpu and not chosen and units is not None and 0 < units < workers * threads:
        workers, threads = 1, units
    ort = config.ort_threads or max(1, cores // (workers * threads))
    return ClusterPlan(workers=workers, threads=threads, ort_threads=ort, gpu=gpu)


@contextlib.contextmanager
def connect(config: RunConfig, plan: ClusterPlan) -> Iterator[Any]:
    """A :class:`distributed.Client` on ``--scheduler`` or on an embedded LocalCluster."""
    from distributed import Client

    if config.scheduler:
        check_security(config)
        try:
            client = Client(config.scheduler, timeout="30s", security=_security(config))
        except (OSError, TimeoutError) as exc:
            hint = (
                " A tls:// scheduler needs --tls-ca-file, --tls-cert and --tls-key (or Dask's "
                "distributed.comm.tls configuration)."
                if config.scheduler.startswith("tls://") else ""
            )
            msg = (
                f"Cannot connect to the Dask scheduler at {config.scheduler} ({exc}). Check "
                f"the address, or leave out --scheduler to start a local cluster.{hint}"
            )
            raise ConfigError(msg) from None
        try:
            yield client
        finally:
            client.close()
        return
    with local_cluster(plan) as cluster, Client(cluster) as client:
        yield client


@contextlib.contextmanager
def local_cluster(plan: ClusterPlan) -> Iterator[Any]:
    """An embedded :class:`distributed.LocalCluster` shaped by ``plan``.

    A single worker runs inside this process (measured on the 4096² demo_segment run:
    1.5-2 s faster end to end and one process instead of client + nanny + worker);
    several workers are separate processes.
    """
    from distributed import LocalCluster

    from cnnpipe.pipeline.malloc import tuned_worker_processes

    with tuned_worker_processes():
        cluster = LocalCluster(
            n_workers=plan.workers,
            threads_per_worker=plan.threads,
            # one worker runs in this process (threads): no spawn and no second copy of
            # numpy/zarr/onnxruntime; the inference releases the GIL. Several are processes.
            processes=plan.workers > 1,
            dashboard_address=None,
            resources={"GPU": 1} if plan.gpu else None,
            # a failing task's traceback only with -vv: cnnpipe reports the unit in one line
            silence_logs=logging.ERROR if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL,
        )
    try:
        yield cluster
    finally:
        cluster.close()


def check_security(config: RunConfig) -> None:
    """Refuse a ``tls://`` scheduler without certificates before anything is written.

    Raises
    ------
    ConfigError
        ``--scheduler tls://...`` with neither ``--tls-*`` options nor Dask's
        ``distributed.comm.tls`` configuration.
    """
    if not (config.scheduler or "").startswith("tls://") or config.tls_ca_file:
        return
    import dask

    if not dask.config.get("distributed.comm.tls.ca-file", None):
        msg = (
            f"Expected TLS certificates for the scheduler {config.scheduler}: pass "
            "--tls-ca-file, --tls-cert and --tls-key (or set Dask's distributed.comm.tls "
            "configuration). Got none."
        )
        raise ConfigError(msg)


def _security(config: RunConfig) -> Any:
    """Mutual-TLS settings from ``--tls-*``; None leaves Dask's configuration in charge."""
    if not config.tls_ca_file:
        return None
    from distributed.security import Security

    return Security(
        tls_ca_file=config.tls_ca_file, tls_client_cert=config.tls_cert,
        tls_client_key=config.tls_key, require_encryption=True,
    )


def _probe(path: str, sha256: str, spec: SessionSpec) -> list[str]:
    """On a worker: create (and cache) the session, return its active providers."""
    return list(get_session(path, sha256, spec).get_providers())


def _available() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def device_spec(
    client: Any, config: RunConfig, plan: ClusterPlan, models: Iterable[tuple[str, str]]
) -> tuple[SessionSpec, dict[str, float] | None]:
    """Check the device on every worker before work starts.

    Returns the session spec and the task resources (``{"GPU": 1}`` for GPU work).

    ``gpu``: every worker must have CUDA available and active in a real session of each
    model, and (``--scheduler``) declare a ``GPU`` resource.  ``auto``: GPU only where
    that holds on every worker, CPU otherwise.

    Raises
    ------
    WorkerError, ConfigError
        A requested GPU is not usable, naming the worker and the reason.
    """
    device = config.device
    if device is Device.CPU:
        return SessionSpec(device="cpu", intra_op_threads=plan.ort_threads), None
    info = client.scheduler_info(n_workers=-1)["workers"]
    avail: dict[str, list[str]] = client.run(_available)
    lacking = sorted(w for w, prov in avail.items() if CUDA not in prov)
    no_res = sorted(w for w, d in info.items() if not d.get("resources", {}).get("GPU"))
    cpu = SessionSpec(device="cpu", intra_op_threads=plan.ort_threads)
    auto = device is Device.AUTO
    if auto and (lacking or no_res or not avail):
        return cpu, None
    if lacking:
        msg = (
            f"--device gpu, but onnxruntime on worker {lacking[0]} has no "
            f"{CUDA} (providers: {', '.join(avail[lacking[0]])}). Install onnxruntime-gpu "
            "there, or use --device cpu."
        )
        raise ConfigError(msg)
    if no_res:
        msg = (
            f"--device gpu, but worker {no_res[0]} declares no GPU resource. Start GPU "
            "workers with `dask worker ADDRESS --resources GPU=1`."
        )
        raise ConfigError(msg)
    no_trt = sorted(w for w, prov in avail.items() if TENSORRT not in prov)
    if config.tensorrt and no_trt:
        msg = (
            f"--tensorrt, but onnxruntime on worker {no_trt[0]} has no {TENSORRT} "
            f"(providers: {', '.join(avail[no_trt[0]])}). Install TensorRT there, or leave "
            "out --tensorrt."
        )
        raise ConfigError(msg)
    spec = SessionSpec(device="gpu", tensorrt=config.tensorrt, intra_op_threads=plan.ort_threads)
    for path, sha in models:
        try:
            client.run(_probe, path, sha, spec)
        except Exception as exc:
            if auto:  # CUDA listed but not loadable: auto means CPU then, said out loud
                log.warning("--device auto: CUDA is not usable (%s); running on CPU.", exc)
                return cpu, None
            if isinstance(exc, CnnpipeError):
                raise
            msg = f"--device gpu: creating the onnxruntime session of {path} failed ({exc})."
            raise WorkerError(msg) from None
    return spec, {"GPU": 1}


def _unit_label(task: UnitTask) -> str:
    u = task.unit
    return (
        f"image {task.source.key} unit ({u.uy}, {u.ux}) [y {u.y0}:{u.y1}, x {u.x0}:{u.x1}]"
    )


def run_units(
    client: Any,
    tasks: Iterable[UnitTask],
    *,
    run_id: str,
    retries: int,
    resources: dict[str, float] | None = None,
    window: int | None = None,
    reporter: Reporter | None = None,
    stop_after: int | None = None,
) -> list[UnitResult]:
    """Run ``tasks`` with at most ``window`` in flight; return their results.

    Parameters
    ----------
    client : distributed.Client
        Connected client.
    tasks : iterable of UnitTask
        Consumed lazily.
    run_id : str
        Makes task keys unique to this run.
    retries : int
        Extra attempts per unit (Dask ``retries``).
    resources : dict, optional
        Task resources (``{"GPU": 1}``).
    window : int, optional
        Tasks in flight; default 2 x the cluster's threads.
    reporter : Reporter, optional
        Told about every finished unit.
    stop_after : int, optional
        Stop submitting once this many results are in (time-boxed runs, tests); units in
        flight still finish (no task is left running behind the run), the rest stay
        pending in the ledger.

    Raises
    ------
    WorkerError
        A unit failed ``retries + 1`` times (outstanding units are cancelled).
    InputError
        The same, when the unit failed on its input (unreadable pixels).
    """
    from distributed import as_completed

    reporter = reporter or NullReporter()
    if window is None:
        window = 2 * max(1, sum(client.nthreads().values()))
    todo = iter(tasks)
    ac = as_completed(loop=client.loop)  # not the default client's (another run's) loop
    flight: dict[str, UnitTask] = {}
    results: list[UnitResult] = []

    def submit() -> bool:
        task = next(todo, None)
        if task is None:
            return False
        u = task.unit
        fut = client.submit(
            process_unit, task, key=f"cnnpipe-unit-{task.source.key}-{u.uy}-{u.ux}-{run_id}",
            retries=retries, resources=resources, pure=False,
        )
        flight[fut.key] = task
        ac.add(fut)
        return True

    def cancel() -> None:
        pending = list(ac.futures)
        if pending:
            client.cancel(pending)

    try:
        for _ in range(window):
            if not submit():
                break
        for fut in ac:
            task = flight.pop(fut.key)
            try:
                result: UnitResult = fut.result()
            except Exception as exc:
                cancel()
                what = str(exc) if isinstance(exc, CnnpipeError) else f"{type(exc).__name__}: {exc}"
                what = " ".join(what.split())
                msg = f"{_unit_label(task)} failed after {retries + 1} attempt(s): {what}"
                if isinstance(exc, InputError):
                    raise InputError(msg) from None  # the input's fault: a nightly quarantines it
                raise WorkerError(msg) from None
            fut.release()
            results.append(result)
            reporter.advance(result)
            if stop_after is None or len(results) < stop_after:
                submit()
    except BaseException:
        cancel()
        raise
    return results
