"""The night's Dask cluster: started once, used by every input, closed at the end."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cnnpipe.errors import ConfigError
from cnnpipe.pipeline.config import RunConfig
from cnnpipe.pipeline.execute import cluster_plan, local_cluster
from cnnpipe.pipeline.nightly.config import ClusterKind, ClusterSpec

__all__ = ["NightCluster", "make_cluster", "open_cluster"]

log = logging.getLogger("cnnpipe.nightly")


@dataclass(frozen=True, kw_only=True)
class NightCluster:
    """How each input's run reaches the cluster."""

    address: str
    description: str
    #: onnxruntime intra-op threads per session (None: cnnpipe run's default)
    ort_threads: int | None = None
    #: Dask threads of the whole cluster where known when it starts (embedded; a
    #: running scheduler's workers at the start of the night)
    threads: int | None = None


def _security(spec: ClusterSpec) -> Any:
    if not spec.tls_ca_file:
        return None
    from distributed.security import Security

    return Security(tls_ca_file=spec.tls_ca_file, tls_client_cert=spec.tls_cert,
                    tls_client_key=spec.tls_key, require_encryption=True)


def _import(kind: str, module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        msg = (f"[cluster] kind = {kind!r} needs {module.split('.')[0]}; install it with "
               f"pip install 'cnnpipe[{extra}]'.")
        raise ConfigError(msg) from None


def _scheduler_threads(spec: ClusterSpec) -> int | None:
    """Dask threads of the workers a running scheduler has now (None: none or unreachable).

    Unreachable is not an error here: each input's run reports it, naming the address.
    """
    from distributed import Client

    try:
        with Client(spec.address, security=_security(spec), timeout="10s",
                    set_as_default=False) as client:
            return sum(client.nthreads().values()) or None
    except (OSError, TimeoutError) as exc:
        log.warning("scheduler %s: could not count its workers' threads (%s)", spec.address, exc)
        return None


def make_cluster(spec: ClusterSpec) -> tuple[Any, str]:
    """A dask-jobqueue SLURM or Dask-operator Kubernetes cluster (not scaled yet).

    Raises
    ------
    ConfigError
        The package is missing or refuses the ``[cluster.slurm|kubernetes]`` settings.
    """
    if spec.kind is ClusterKind.SLURM:
        mod = _import("slurm", "dask_jobqueue", "slurm")
        kwargs = dict(spec.slurm)
        if spec.tls_ca_file:
            kwargs.setdefault("security", _security(spec))
        try:
            cluster = mod.SLURMCluster(**kwargs)
        except (TypeError, ValueError) as exc:
            msg = f"[cluster.slurm]: dask_jobqueue.SLURMCluster refused the settings ({exc})."
            raise ConfigError(msg) from None
        return cluster, f"slurm: {spec.workers or 1} job(s)"
    if spec.kind is ClusterKind.KUBERNETES:
        mod = _import("kubernetes", "dask_kubernetes.operator", "kubernetes")
        try:
            cluster = mod.KubeCluster(**spec.kubernetes)
        except (TypeError, ValueError) as exc:
            msg = f"[cluster.kubernetes]: KubeCluster refused the settings ({exc})."
            raise ConfigError(msg) from None
        return cluster, f"kubernetes: {spec.workers or 1} worker(s)"
    msg = f"Expected kind slurm or kubernetes. Got {spec.kind.value!r}."
    raise ConfigError(msg)


@contextlib.contextmanager
def open_cluster(spec: ClusterSpec, run: RunConfig, *, gpu: bool) -> Iterator[NightCluster]:
    """Start (or reach) the cluster of ``spec`` for the whole night.

    Parameters
    ----------
    spec : ClusterSpec
        The ``[cluster]`` table.
    run : RunConfig
        The night's run settings (threads and device shape an embedded cluster).
    gpu : bool
        An embedded cluster gets this machine's GPU (Dask resource ``GPU=1``).
    """
    if spec.kind is ClusterKind.SCHEDULER:
        yield NightCluster(address=spec.address or "", description=f"scheduler {spec.address}",
                           ort_threads=run.ort_threads, threads=_scheduler_threads(spec))
        return
    if spec.kind is ClusterKind.EMBEDDED:
        from dataclasses import replace

        plan = cluster_plan(replace(run, workers=spec.workers), gpu=gpu)
        with local_cluster(plan) as cluster:
            yield NightCluster(
                address=cluster.scheduler_address, ort_threads=plan.ort_threads,
                threads=plan.workers * plan.threads,
                description=f"embedded: {plan.workers} worker(s) x {plan.threads} thread(s) x "
                            f"{plan.ort_threads} onnxruntime thread(s)" + (", GPU" if gpu else ""),
            )
        return
    cluster, what = make_cluster(spec)
    try:
        n = spec.workers or 1
        if spec.kind is ClusterKind.SLURM:
            # jobs end at their walltime (workers retire at --lifetime): adapt re-submits
            cluster.adapt(minimum_jobs=n, maximum_jobs=n)
        else:
            cluster.scale(n)
        yield NightCluster(address=cluster.scheduler_address, description=what,
                           ort_threads=run.ort_threads)
    finally:
        cluster.close()
